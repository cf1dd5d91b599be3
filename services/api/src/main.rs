//! `taskwire-api`: parse the config, bind, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use taskwire_api::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    taskwire::service::main("taskwire-api", config.validate(), |shutdown| async move {
        let listener = taskwire::serve::bind(config.listen).await?;
        taskwire_api::run(config, listener, shutdown).await
    })
    .await
}
