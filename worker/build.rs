//! Give every binary and test of this crate an rpath to the libtorch it was linked against, so
//! `freqsweep-worker` runs without `LD_LIBRARY_PATH`. torch-sys (`links = "tch"`) exports its lib
//! directory as `DEP_TCH_LIBTORCH_LIB`, which works for the xtask cache, a user's `LIBTORCH` and
//! `LIBTORCH_USE_PYTORCH` alike.
//!
//! With a CUDA libtorch, nothing in our code references a `libtorch_cuda.so` symbol directly, so the
//! linker's `--as-needed` would drop it and CUDA would silently be unavailable at run time; keep it.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-env=FREQSWEEP_LIBTORCH_LIB={lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        // The CUDA libraries libtorch_cuda.so needs (cuBLAS, cuDNN, NCCL, …) are resolved at run
        // time on the GPU node (its PyTorch's); a build machine without them links all the same.
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}
