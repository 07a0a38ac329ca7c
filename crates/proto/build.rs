//! Generates the gRPC code from `proto/`. The protoc binary comes from the
//! `protoc-bin-vendored` crate unless `PROTOC` names another, so building needs no
//! system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => std::path::PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("payments/v1/payments.proto");
    println!("cargo:rerun-if-changed={}", file.display());

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(config, &[file], &[root])?;
    Ok(())
}
