//! A new task kind in a dozen lines: `text.word_count` counts the words of
//! `{"text": "..."}`, reporting progress as it goes.
//!
//! Run it beside a taskwire deployment (scripts/dev), then submit one:
//!   cargo run -p taskwire-worker --example word_count -- --nats-url nats://127.0.0.1:4333
//!   .venv/bin/grpcurl -plaintext -d '{"kind":"text.word_count","input":{"text":"a b c"}}' \
//!     127.0.0.1:50051 taskwire.v1.TaskService/SubmitTask

use clap::Parser;
use taskwire_worker::{Config, Registry, TaskContext, TaskFailure};

#[tokio::main]
async fn main() -> Result<(), taskwire_worker::Error> {
    taskwire::telemetry::init();
    let mut kinds = Registry::new();
    kinds.register("text.word_count", |ctx: TaskContext| async move {
        let text = ctx.input()["text"]
            .as_str()
            .ok_or_else(|| TaskFailure::fatal("input.text must be a string"))?;
        let lines: Vec<&str> = text.lines().collect();
        let mut words = 0;
        for (i, line) in lines.iter().enumerate() {
            words += line.split_whitespace().count();
            ctx.progress(
                (i + 1) as f64 / lines.len() as f64,
                format!("line {}", i + 1),
            )
            .await?;
        }
        Ok(serde_json::json!({ "words": words }))
    });
    taskwire_worker::run(Config::parse(), kinds, taskwire::shutdown::on_signal()).await
}
