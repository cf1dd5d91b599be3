//! A new task kind in a dozen lines: `text.word_count` counts the words of
//! `{"text": "..."}`, reporting progress as it goes.
//!
//! With `scripts/dev` running in this directory, it joins that system by itself (the
//! NATS URL `taskwire dev` wrote to .taskwire/nats-url); elsewhere pass --nats-url or
//! TASKWIRE_NATS_URL:
//!   cargo run -p taskwire-worker --example word_count
//!   taskwire submit text.word_count --input '{"text":"a b c"}' --watch

use clap::Parser;
use taskwire_worker::{Config, Registry, TaskContext, TaskFailure};

#[tokio::main]
async fn main() -> Result<(), taskwire_worker::Error> {
    let _telemetry = taskwire::telemetry::init("word-count-worker", Default::default());
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
    let mut config = Config::parse();
    config.nats = config.nats.or_dev();
    taskwire_worker::run(config, kinds, taskwire::shutdown::on_signal()).await
}
