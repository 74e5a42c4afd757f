//! Compile the `.proto` files with `protox` (a pure-Rust protobuf compiler), so a machine without a
//! system `protoc` builds the workspace.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/freqsweep/v1/freqsweep.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
