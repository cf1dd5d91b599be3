//! `taskwire-recorder`: projects task events into the database until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use taskwire_recorder::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let log = config.log.clone();
    taskwire::service::main(
        "taskwire-recorder",
        &log,
        config.validate(),
        |shutdown| async move { taskwire_recorder::run(config, shutdown).await },
    )
    .await
}
