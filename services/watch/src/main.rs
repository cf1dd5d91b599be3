//! `taskwire-watch`: parse the config, bind, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use taskwire_watch::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let log = config.log.clone();
    taskwire::service::main(
        "taskwire-watch",
        &log,
        config.validate(),
        |shutdown| async move {
            let listener = taskwire::serve::bind(config.listen).await?;
            taskwire_watch::run(config, listener, shutdown).await
        },
    )
    .await
}
