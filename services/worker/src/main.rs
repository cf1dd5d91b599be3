//! `taskwire-worker`: runs the built-in demo kinds until SIGINT/SIGTERM, then drains.

use clap::Parser;
use taskwire_worker::{Config, kinds};

#[tokio::main]
async fn main() {
    taskwire::telemetry::init();
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("taskwire-worker: {e}");
        std::process::exit(2);
    }
    let shutdown = taskwire::shutdown::on_signal();
    if let Err(e) = taskwire_worker::run(config, kinds::builtin(), shutdown).await {
        eprintln!("taskwire-worker: {e}");
        std::process::exit(1);
    }
}
