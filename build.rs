//! Compiles proto/ with protox (no protoc binary needed) and writes the file
//! descriptor set used for gRPC server reflection; rebuilds when a migration
//! changes (`sqlx::migrate!` embeds migrations/ at compile time).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/wopr/v1alpha1/policy.proto",
        "proto/wopr/v1alpha1/tools.proto",
        "proto/wopr/v1alpha1/audit.proto",
        "proto/wopr/v1alpha1/broker.proto",
        "proto/wopr/v1alpha1/models.proto",
        "proto/wopr/v1alpha1/fetch.proto",
        "proto/wopr/v1alpha1/peers.proto",
    ];
    let descriptors = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("wopr_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
