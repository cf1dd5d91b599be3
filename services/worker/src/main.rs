//! `taskwire-worker`: runs the built-in demo kinds until SIGINT/SIGTERM, then drains.

use std::process::ExitCode;

use clap::Parser;
use taskwire::telemetry::{self, exit_with};
use taskwire_worker::{Config, kinds};

const NAME: &str = "taskwire-worker";

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let config = Config::parse();
    if let Err(e) = config.validate() {
        return exit_with(NAME, &e, 2);
    }
    match taskwire_worker::run(config, kinds::builtin(), taskwire::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit_with(NAME, &e, 1),
    }
}
