//! `taskwire-recorder`: projects task events into the database until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use taskwire::telemetry::{self, exit_with};
use taskwire_recorder::Config;

const NAME: &str = "taskwire-recorder";

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let config = Config::parse();
    if let Err(e) = config.validate() {
        return exit_with(NAME, &e, 2);
    }
    match taskwire_recorder::run(config, taskwire::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit_with(NAME, &e, 1),
    }
}
