//! Generates `taskwire::pb` from proto/ with protox (pure Rust: no system protoc) and
//! writes the descriptor set that gRPC server reflection serves.

use std::{env, path::PathBuf};

use protox::prost::Message;

const PROTOS: &[&str] = &[
    "taskwire/v1/task.proto",
    "taskwire/v1/service.proto",
    "taskwire/internal/v1/messages.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("taskwire_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-call buffers: see src/codec.rs.
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
