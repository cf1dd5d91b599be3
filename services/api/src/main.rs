//! `taskwire-api`: parse the config, bind, run until SIGINT/SIGTERM.

use clap::Parser;
use taskwire_api::Config;

#[tokio::main]
async fn main() {
    taskwire::telemetry::init();
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("taskwire-api: {e}");
        std::process::exit(2);
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("taskwire-api: cannot listen on {}: {e}", config.listen);
            std::process::exit(1);
        }
    };
    let shutdown = taskwire::shutdown::on_signal();
    if let Err(e) = taskwire_api::run(config, listener, shutdown).await {
        eprintln!("taskwire-api: {e}");
        std::process::exit(1);
    }
}
