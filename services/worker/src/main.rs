//! `taskwire-worker`: runs the built-in demo kinds until SIGINT/SIGTERM, then drains.

use std::process::ExitCode;

use clap::Parser;
use taskwire_worker::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let log = config.log.clone();
    taskwire::service::main(
        "taskwire-worker",
        &log,
        config.validate(),
        |shutdown| async move {
            taskwire_worker::run(config, taskwire_worker::kinds::builtin(), shutdown).await
        },
    )
    .await
}
