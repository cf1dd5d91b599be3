//! `taskwire-watch`: parse the config, bind, serve until SIGINT/SIGTERM.

use clap::Parser;
use taskwire_watch::Config;

#[tokio::main]
async fn main() {
    taskwire::telemetry::init();
    let config = Config::parse();
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("taskwire-watch: cannot listen on {}: {e}", config.listen);
            std::process::exit(1);
        }
    };
    if let Err(e) = taskwire_watch::run(config, listener, taskwire::shutdown::on_signal()).await {
        eprintln!("taskwire-watch: {e}");
        std::process::exit(1);
    }
}
