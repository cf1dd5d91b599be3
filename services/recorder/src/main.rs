//! `taskwire-recorder`: projects task events into the database until SIGINT/SIGTERM.

use clap::Parser;
use taskwire_recorder::Config;

#[tokio::main]
async fn main() {
    taskwire::telemetry::init();
    let shutdown = taskwire::shutdown::on_signal();
    if let Err(e) = taskwire_recorder::run(Config::parse(), shutdown).await {
        eprintln!("taskwire-recorder: {e}");
        std::process::exit(1);
    }
}
