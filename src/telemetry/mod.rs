//! What a process tells its operators: logs (one set-up for every process: tracing to
//! stderr, filtered by `RUST_LOG`, default `info`, as text or JSON), errors written
//! with every cause ([`chain`]), metrics and traces.
//!
//! # Layout
//! - [`metrics`]: the Prometheus recorder and every metric name taskwire exports.
//! - [`grpc`]: RED metrics and the trace context of gRPC servers, as a tower layer.
//! - [`trace`]: one trace per task, exported over OTLP when the environment asks.

pub mod grpc;
pub mod metrics;
pub mod trace;

use std::{error::Error, fmt};

use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt,
};

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one line per event, the fields of the spans it is in before it.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the spans it is in (a task's
    /// task_id, kind, attempt and, when tracing, trace_id), for log pipelines.
    Json,
}

/// The logging setting every binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format: text (for people) or json (one object per line).
    #[arg(
        long = "log-format",
        env = "TASKWIRE_LOG_FORMAT",
        default_value = "text",
        value_enum
    )]
    pub log_format: LogFormat,
}

/// What [`init`] set up. Keep it for the life of the process: dropping it flushes the
/// spans not exported yet.
#[derive(Debug)]
pub struct Telemetry {
    _exporter: Option<trace::Exporter>,
}

/// Installs logging (stderr, filtered by `RUST_LOG`, default `info`, in `format`) and,
/// when the OTLP environment asks for it, span export as `service` (see [`trace`]).
/// Calling it again (tests) changes nothing.
pub fn init(service: &str, format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            // Every enclosing span's fields: an api line's trace_id is on its
            // outermost (grpc) span.
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let exporter = match trace::exporter(service) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{service}: tracing is off: {}", chain(&e));
            None
        }
    };
    // Spans go to the exporter whatever RUST_LOG says of logs.
    let spans = exporter
        .as_ref()
        .map(|e| e.layer().with_filter(LevelFilter::INFO));
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Telemetry {
        _exporter: exporter,
    }
}

/// An error followed by each of its causes: `a: b: c`. Errors in taskwire keep their
/// causes as `source()` rather than in their message, so logs and the mains write
/// them through this.
pub fn chain<'a>(e: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(e)
}

/// See [`chain`].
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            // Some libraries' errors already write their cause in their own message.
            let text = c.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            cause = c.source();
        }
        Ok(())
    }
}

/// How a binary ends on an error: its name and the whole chain on stderr, and `code`
/// (2 for a configuration that cannot work, 1 for anything else).
pub fn exit_with(name: &str, e: &(dyn Error + 'static), code: u8) -> std::process::ExitCode {
    eprintln!("{name}: {}", chain(e));
    std::process::ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_writes_every_cause() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(super::chain(&e).to_string(), "outer: inner");
    }
}
