"""Make the registry's `torch` wheel importable on a CPU-only machine without its CUDA wheels.

`torch==2.11.0` for Linux x86_64 is the CUDA build: `import torch` loads `libtorch_cuda.so`, which
links cuBLAS, cuDNN, cuFFT, cuSPARSE, NCCL, … (about 3 GB of `nvidia-*` wheels) even when only the
CPU is used. The benchmark baseline needs none of them, so this script writes a small stand-in
library for each one that is missing: the right SONAME, the symbol-version nodes the torch libraries
ask for, and every function they import from it, each aborting with a clear message if it is ever
called (on a CPU-only run it never is). The real CUDA runtime and CUPTI (`nvidia-cuda-runtime`,
`nvidia-cuda-cupti`, a few MB, installed next to torch by `cargo xtask bench`) are used as they are:
`torch.cuda.is_available()` asks them and gets "no device".

The stand-ins go where torch's RUNPATH looks (`<target>/nvidia/cu13/lib`), so nothing else (no
LD_LIBRARY_PATH) is needed. Needs `readelf` and a C compiler (`cc`), which building the workspace
needs anyway. Usage: `python3 bench/torch_cpu_stubs.py <pip --target directory>`; prints what it made.
"""

import glob
import os
import re
import subprocess
import sys
import tempfile

# Libraries torch only dlopens on demand for CUDA work; never stub the driver (the runtime dlopens it).
NEVER = {"libcuda.so.1"}
# Unversioned imports are assigned to a library by their name's prefix.
PREFIXES = [
    ("libnccl.so", "nccl"),
    ("libcusparseLt.so", "cusparseLt"),
    ("libcufile.so", "cuFile"),
    ("libcurand.so", "curand"),
    ("libnvshmem_host.so", "nvshmem"),
    ("libcudnn.so", "cudnn"),
    ("libcublasLt.so", "cublasLt"),
    ("libcublas.so", "cublas"),
    ("libcufft.so", "cufft"),
    ("libcusolver.so", "cusolver"),
    ("libcusparse.so", "cusparse"),
    ("libnvrtc.so", "nvrtc"),
]
SYSTEM_VERSIONS = re.compile(r"(GLIBC|GLIBCXX|CXXABI|GCC|OMP|GOMP)_")


def readelf(*args):
    return subprocess.run(["readelf", "-W", *args], check=True, capture_output=True, text=True).stdout


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf("-d", path))


def soname(path):
    found = re.findall(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", readelf("-d", path))
    return found[0] if found else os.path.basename(path)


def symbols(path):
    """(name, version or None, defined?) for each dynamic symbol."""
    for line in readelf("--dyn-syms", path).splitlines():
        parts = line.split()
        if len(parts) < 8 or not parts[0].endswith(":"):
            continue
        name, bind, ndx = parts[7], parts[4], parts[6]
        version = None
        if "@" in name:
            name, version = name.split("@", 1)
            version = version.lstrip("@")
        yield name, version, ndx != "UND", bind


def system_libraries():
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}


def main(target):
    torch = os.path.join(target, "torch")
    libdir = os.path.join(target, "nvidia", "cu13", "lib")
    os.makedirs(libdir, exist_ok=True)
    ours = glob.glob(os.path.join(torch, "lib", "*.so*")) + glob.glob(os.path.join(torch, "_C*.so"))
    present = {os.path.basename(p) for p in ours} | {soname(p) for p in ours}
    present |= {os.path.basename(p) for p in glob.glob(os.path.join(target, "nvidia", "*", "lib", "*.so*"))}
    system = system_libraries()
    missing = sorted({lib for p in ours for lib in needed(p)} - present - system - NEVER)
    stubs = {lib: {"versions": set(), "functions": set()} for lib in missing}
    for p in ours:
        for name, version, defined, bind in symbols(p):
            if defined or bind == "WEAK":
                continue
            if version and not SYSTEM_VERSIONS.match(version):
                lib = version if version in stubs else None
                if lib is None and version == "NVSHMEM":
                    lib = next((s for s in stubs if s.startswith("libnvshmem_host.so")), None)
                if lib is not None:
                    stubs[lib]["versions"].add(version)
                    stubs[lib]["functions"].add(name)
            elif version is None:
                for prefix_lib, prefix in PREFIXES:
                    lib = next((s for s in stubs if s.startswith(prefix_lib)), None)
                    if lib is not None and name.startswith(prefix):
                        stubs[lib]["functions"].add(name)
                        break
    with tempfile.TemporaryDirectory() as tmp:
        for lib, spec in stubs.items():
            source = os.path.join(tmp, lib + ".c")
            with open(source, "w") as f:
                f.write("#include <stdio.h>\n#include <stdlib.h>\n")
                f.write("static void stub(const char *name) {\n")
                f.write(
                    f'  fprintf(stderr, "freqsweep: %s of {lib} called, but this torch has only a CPU stand-in '
                    f'for it (bench/torch_cpu_stubs.py)\\n", name);\n  abort();\n}}\n'
                )
                for fn in sorted(spec["functions"]):
                    f.write(f'void {fn}(void) {{ stub("{fn}"); }}\n')
            command = ["cc", "-shared", "-fPIC", "-O0", "-o", os.path.join(libdir, lib), f"-Wl,-soname,{lib}"]
            if spec["versions"]:
                script = os.path.join(tmp, lib + ".map")
                with open(script, "w") as f:
                    for version in sorted(spec["versions"]):
                        f.write(f"{version} {{ global: *; }};\n")
                command.append(f"-Wl,--version-script={script}")
            subprocess.run(command + [source], check=True)
            print(f"{lib}: {len(spec['functions'])} stand-in functions")


if __name__ == "__main__":
    main(sys.argv[1])
