//! One logging set-up for every process: tracing to stderr, filtered by `RUST_LOG`
//! (default `info`); and [`chain`], how an error is written, with every cause.

use std::{error::Error, fmt};

use tracing_subscriber::{EnvFilter, fmt as tracing_fmt};

/// Installs the global subscriber. Calling it again (tests) does nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
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
