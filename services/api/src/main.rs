//! `taskwire-api`: parse the config, bind, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use taskwire::telemetry::{self, exit_with};
use taskwire_api::Config;

const NAME: &str = "taskwire-api";

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let config = Config::parse();
    if let Err(e) = config.validate() {
        return exit_with(NAME, &e, 2);
    }
    let listener = match taskwire::serve::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => return exit_with(NAME, &e, 1),
    };
    match taskwire_api::run(config, listener, taskwire::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit_with(NAME, &e, 1),
    }
}
