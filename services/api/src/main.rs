//! `taskwire-api`: parse the config, bind, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use taskwire_api::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let log = config.log.clone();
    taskwire::service::main(
        "taskwire-api",
        &log,
        config.validate(),
        |shutdown| async move {
            let listener = taskwire::serve::bind(config.listen).await?;
            taskwire_api::run(config, listener, shutdown).await
        },
    )
    .await
}
