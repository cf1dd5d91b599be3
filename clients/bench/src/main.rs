//! `taskwire-bench`: starts a taskwire deployment on this machine (its own nats-server,
//! a fresh SQLite file or PostgreSQL database, the service binaries as separate
//! processes) and runs named workloads with bounded counts and times, printing a table
//! and writing JSON. docs/benchmarks.md has the method and the latest figures. Every
//! figure is a measurement, never an assert.
//!
//! # Layout
//! - `raw`: R, raw JetStream, the reference of the same run.
//! - `skeleton`: S1 .. S3, the durable operations W1 .. W3 (and W2B) need, with no
//!   taskwire code: their bound on this machine.
//! - `w1` .. `w5`: submit; end to end (W2B: with SubmitTasks batches); round trip;
//!   fan-out; footprint.
//! - `w1r`, `w4r`: W1 and W4 over REST/JSON and Server-Sent Events, through `rest`,
//!   their HTTP/1.1 client.
//! - `deployment`: the processes measured, on free loopback ports (through the test
//!   harness's process and server helpers).
//! - `procfs`: CPU time and resident memory of those processes.
//! - `results`: the table and the JSON file.

mod deployment;
mod procfs;
mod raw;
mod rest;
mod results;
mod skeleton;
mod w1;
mod w1r;
mod w2;
mod w3;
mod w4;
mod w4r;
mod w5;
mod wg;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use taskwire::{json, pb::v1::SubmitTaskRequest};
use taskwire_tests::Db;

use crate::{deployment::Deployment, procfs::CpuSince, results::Results};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Sqlite,
    Postgres,
    Both,
}

/// taskwire-bench: measure taskwire on this machine (loopback only, bounded).
#[derive(Debug, Parser)]
pub struct Args {
    /// Workloads to run, comma-separated: r,s,w1,w1r,w2,w2b,w3,w4,w4r,w5,wg (s: the
    /// skeleton, W1 .. W3's durable operations without taskwire; w1r and w4r: W1 and W4
    /// over REST and SSE; w2b: W2 with SubmitTasks batches; wg: a parent fanning out to
    /// --fanout children and in).
    #[arg(
        long,
        default_value = "r,s,w1,w1r,w2,w2b,w3,w4,w4r,w5,wg",
        value_delimiter = ','
    )]
    workloads: Vec<String>,
    /// Database(s) to run against.
    #[arg(long, value_enum, default_value = "both")]
    db: Which,
    /// Tasks for W1, W1R and W2, messages for R.
    #[arg(long, default_value_t = 20_000)]
    n: usize,
    /// Concurrent clients for W1, W1R and W2.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// W1 open loop: offered submits per second, for --open-loop-secs.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    open_loop_secs: u64,
    /// W2: worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// W2B: tasks per SubmitTasks call, and concurrent callers.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch_size: u16,
    #[arg(long, default_value_t = 8)]
    batch_clients: usize,
    /// W3: sequential round trips.
    #[arg(long, default_value_t = 500)]
    round_trips: usize,
    /// WG: the children of its one parent.
    #[arg(long, default_value_t = 1_000)]
    fanout: usize,
    /// W4 and W4R: concurrent WatchTask streams over --w4-tasks tasks, which emit
    /// progress so that --w4-rate events per second are delivered to the streams in
    /// all, for --w4-secs. W4R opens a connection per stream.
    #[arg(long, default_value_t = 10_000)]
    w4_streams: usize,
    #[arg(long, default_value_t = 100)]
    w4_tasks: usize,
    #[arg(long, default_value_t = 10_000)]
    w4_rate: u64,
    #[arg(long, default_value_t = 10)]
    w4_secs: u64,
    /// Run the deployment without metrics (no admin listeners, so nothing is
    /// recorded): to measure what metrics cost.
    #[arg(long)]
    no_metrics: bool,
    /// NATS servers: 1, or a cluster of 3 (every stream R3) for the scale-out figures.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_nodes: u8,
    /// API keys and TLS on the api and watch (a CA and a key made for the run): what
    /// authentication and encryption cost.
    #[arg(long)]
    secure: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
}

/// A plain submit of `kind` with JSON `input`.
fn submit_req(kind: &str, input: serde_json::Value) -> SubmitTaskRequest {
    SubmitTaskRequest {
        kind: kind.into(),
        input: Some(json::json_to_value(&input)),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut results = Results::default();
    let dbs: Vec<(Db, &'static str)> = match args.db {
        Which::Sqlite => vec![(Db::Sqlite, "sqlite")],
        Which::Postgres => vec![(Db::Postgres, "postgres")],
        Which::Both => vec![(Db::Sqlite, "sqlite"), (Db::Postgres, "postgres")],
    };
    let wants = |w: &str| args.workloads.iter().any(|x| x == w);
    // The REST client here speaks plain HTTP only (reqwest without a TLS feature).
    let rest = !args.secure;
    if args.secure && (wants("w1r") || wants("w4r")) {
        eprintln!("W1R and W4R skipped: --secure serves TLS, the REST client is plain HTTP");
    }
    // W4R holds a socket per stream in this process and in the watch process, which
    // inherits this limit: refuse now rather than fail minutes into the run.
    if rest && wants("w4r") {
        let needed = args.w4_streams as u64 + 1024;
        if let Some(limit) = procfs::open_files_limit().filter(|l| *l < needed) {
            eprintln!(
                "W4R with {} streams needs about {needed} open files, the limit is {limit}: \
                 raise it (ulimit -n {needed}) or lower --w4-streams",
                args.w4_streams
            );
            std::process::exit(2);
        }
    }
    Results::header();
    if wants("r") {
        raw::run(&args, &mut results).await;
    }
    for (db, name) in dbs {
        // Before the deployment starts: nothing else runs beside the skeleton.
        if wants("s") {
            skeleton::run(&args, db, name, &mut results).await;
        }
        let d = Deployment::start(
            db,
            args.workers,
            !args.no_metrics,
            args.nats_nodes.into(),
            args.secure,
        )
        .await;
        if wants("w5") {
            w5::idle_rss(&d, name, &mut results);
        }
        if wants("w1") {
            let cpu = CpuSince::now(d.pids());
            w1::run(&args, &d, name, &mut results).await;
            cpu.report(&mut results, "W1", name);
        }
        if rest && wants("w1r") {
            let cpu = CpuSince::now(d.pids());
            w1r::run(&args, &d, name, &mut results).await;
            cpu.report(&mut results, "W1R", name);
        }
        if wants("w2") {
            let cpu = CpuSince::now(d.pids());
            w2::run(&args, &d, name, &mut results, w2::Submits::Single).await;
            cpu.report(&mut results, "W2", name);
        }
        if wants("w2b") {
            let cpu = CpuSince::now(d.pids());
            w2::run(&args, &d, name, &mut results, w2::Submits::Batched).await;
            cpu.report(&mut results, "W2B", name);
        }
        if wants("w3") {
            w3::run(&args, &d, name, &mut results).await;
        }
        if wants("wg") {
            let cpu = CpuSince::now(d.pids());
            wg::run(&args, &d, name, &mut results).await;
            cpu.report(&mut results, "WG", name);
        }
        if wants("w4") {
            w4::run(&args, &d, name, &mut results).await;
        }
        if rest && wants("w4r") {
            w4r::run(&args, &d, name, &mut results).await;
        }
    }
    if wants("w5") {
        w5::run(&mut results).await;
    }
    results.write_json(&args.out).expect("write results");
    println!("wrote {}", args.out.display());
}
