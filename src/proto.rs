//! Generated protobuf types and gRPC stubs of `wopr.v1alpha1` (see `proto/`).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The `wopr.v1alpha1` package.
pub mod v1alpha1 {
    tonic::include_proto!("wopr.v1alpha1");
}

/// The file descriptor set of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wopr_descriptor.bin"));
