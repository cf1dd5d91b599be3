//! Generates `taskwire::pb` from proto/ with protox (pure Rust: no system protoc) and
//! writes the descriptor set that gRPC server reflection serves and the REST routes are
//! read from.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "taskwire/v1/task.proto",
    "taskwire/v1/service.proto",
    "taskwire/internal/v1/messages.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;

    // Encoded by protox itself, which keeps custom options: prost_types drops the
    // `google.api.http` routes that src/rest reads (and reflection serves).
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("taskwire_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-call buffers: see src/codec.rs.
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
