//! The database: tasks, their labels and the transactional outbox.
//!
//! One interface, two backends: SQLite (the embedded default, a file) and PostgreSQL
//! (production), both through sqlx's `Any` driver. The schema is written so that one
//! set of queries serves both (BIGINT integers, microsecond times, JSON as text, `$n`
//! parameters); the migrations under `migrations/{sqlite,postgres}` are parallel and
//! applied at start-up. Every query is tested against both in tests/e2e/store.rs. The
//! one backend-specific statement is PostgreSQL's single-statement insert of a batch
//! of submits (`insert.rs`), where SQLite uses a transaction.
//!
//! # Layout
//! - `insert`: writing a batch of submits ([`Store::insert_tasks`], [`Writer`]).
//! - `read`: a task's record, pages of tasks ([`TaskRecord`], [`ListQuery`]).
//! - `outbox`: the transactional outbox's rows and leases.
//! - `projection`: applying task events to records ([`EventUpdate`]).
//! - `keys`: API keys' rows (`crate::auth` makes and checks them).
//! - `retention`: deleting terminal tasks past their age ([`Retention`]).
//! - `dead_letters`: FAILED tasks by filter, for bulk retry and discard.
//!
//! Every call runs under a deadline, so a database that hangs is reported as
//! [`Error::Unavailable`] instead of hanging the caller.

mod dead_letters;
mod graph;
mod insert;
mod keys;
mod outbox;
mod projection;
mod read;
mod retention;

use std::{future::Future, sync::Once, time::Duration};

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::Migrator,
};

pub use dead_letters::DeadLetterFilter;
pub use graph::{Child, Tree};
pub use insert::{Inserted, NewTask, Writer};
pub use outbox::{OutboxEntry, OutboxRow};
pub use projection::EventUpdate;
pub use read::{FinishedCount, ListQuery, PageToken, TaskRecord};
pub use retention::Retention;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (`sqlite:`).
    Sqlite,
    /// A PostgreSQL server (`postgres:` or `postgresql:`).
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn of_url(url: &str) -> Result<Self, Error> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            Err(Error::Config(format!(
                "database URL must start with sqlite: or postgres:, got {:?}",
                redact(url)
            )))
        }
    }
}

/// What can go wrong in the store. Callers map these to gRPC codes; each keeps its
/// cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or refused for now; safe to retry.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database did not answer within the store's deadline; safe to retry.
    #[error("the database did not answer within {0:?}")]
    TimedOut(Duration),
    /// A query failed for a reason that is not the caller's: a bug or a broken schema.
    #[error("database error")]
    Query(#[source] sqlx::Error),
    /// A row holds something the code cannot read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A write shared with other callers (a group commit) failed; its cause is shared.
    #[error("the batch this write was part of failed")]
    Batch(#[source] std::sync::Arc<Error>),
    /// Applying the migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The lock that serialises SQLite migrations across processes.
    #[error("cannot lock {}", .path.display())]
    Lock {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A database URL or setting that cannot work.
    #[error("{0}")]
    Config(String),
}

/// A task id read back from a row; one that does not parse is a corrupt row.
fn stored_id(s: &str) -> Result<crate::domain::TaskId, Error> {
    crate::domain::TaskId::parse(s).map_err(|_| Error::Corrupt("task id".into()))
}

impl Error {
    /// Whether trying again later may succeed: the database is down, slow or busy. The
    /// one place that decides it, so every caller maps the same error the same way.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable(_) | Error::TimedOut(_) | Error::Lock { .. } => true,
            Error::Batch(shared) => shared.is_retryable(),
            Error::Query(_) | Error::Corrupt(_) | Error::Migrate(_) | Error::Config(_) => false,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                Error::Unavailable(e)
            }
            // SQLite's "database is locked" after busy_timeout, PostgreSQL shutting down
            // or refusing connections, and deadlocks or serialisation failures (40P01,
            // 40001): retryable, not the caller's fault.
            E::Database(ref db)
                if matches!(
                    db.code().as_deref(),
                    Some("5" | "6" | "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01")
                ) =>
            {
                Error::Unavailable(e)
            }
            other => Error::Query(other),
        }
    }
}

/// Settings for [`Store::connect`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Deadline for every call, connection wait included.
    pub timeout: Duration,
    /// Pool size; SQLite serialises writers anyway, so a few connections suffice.
    pub max_connections: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_connections: 16,
        }
    }
}

/// A handle on the database; cheap to clone (a pool inside).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    timeout: Duration,
}

impl Store {
    /// Connects and applies the migrations of the URL's backend. A SQLite file is
    /// created if missing, in WAL mode with full fsync on commit: an accepted task
    /// survives a crash of the process and of the machine.
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Self, Error> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);

        let backend = Backend::of_url(url)?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let connect_opts: AnyConnectOptions = url
            .parse()
            .map_err(|e| Error::Config(format!("bad database URL {:?}: {e}", redact(&url))))?;
        let max = match backend {
            Backend::Sqlite => opts.max_connections.min(4),
            Backend::Postgres => opts.max_connections,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(opts.timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect_opts);
        let pool = tokio::time::timeout(opts.timeout, pool)
            .await
            .map_err(|_| Error::TimedOut(opts.timeout))??;
        let store = Self {
            pool,
            backend,
            timeout: opts.timeout,
        };
        store.migrate(&url).await?;
        Ok(store)
    }

    /// Applies pending migrations. Several processes may start at once on one
    /// database: PostgreSQL's migrator serialises them with an advisory lock, and for
    /// SQLite (whose migrator does not lock) a lock file beside the database does.
    async fn migrate(&self, url: &str) -> Result<(), Error> {
        match self.backend {
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
            Backend::Sqlite => {
                let _guard = match sqlite_path(url) {
                    Some(path) => Some(lock_file(path.with_extension("migrate.lock")).await?),
                    None => None,
                };
                SQLITE_MIGRATIONS.run(&self.pool).await?;
            }
        }
        Ok(())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks the database answers; for health checks.
    pub async fn ping(&self) -> Result<(), Error> {
        self.deadline(async {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs one store operation under the store's deadline.
    async fn deadline<T>(&self, op: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, op)
            .await
            .map_err(|_| Error::TimedOut(self.timeout))?
    }
}

/// The placeholders of a multi-row VALUES list: `($1, $2), ($3, $4)` for 2 rows of 2.
fn placeholders(rows: usize, columns: usize) -> String {
    placeholders_from(0, rows, columns)
}

/// [`placeholders`] numbered after the first `before` parameters.
fn placeholders_from(before: usize, rows: usize, columns: usize) -> String {
    let mut s = String::with_capacity(rows * columns * 6);
    for r in 0..rows {
        s.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&(before + r * columns + c + 1).to_string());
        }
        s.push(')');
    }
    s
}

/// The file a `sqlite://PATH?...` URL names, if it names one.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// Takes an exclusive lock on `path` (created if missing); released when dropped.
async fn lock_file(path: std::path::PathBuf) -> Result<std::fs::File, Error> {
    let lock_path = path.clone();
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|locked| locked);
    locked.map_err(|source| Error::Lock {
        path: lock_path,
        source,
    })
}

/// A URL with its password replaced, for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite:///tmp/a.db?mode=rwc"),
            Some("/tmp/a.db".into())
        );
        assert_eq!(sqlite_path("sqlite://rel.db"), Some("rel.db".into()));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://h/db"), None);
    }

    #[test]
    fn backend_from_url() {
        assert_eq!(Backend::of_url("sqlite://x.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::of_url("postgres://h/db").unwrap(),
            Backend::Postgres
        );
        assert!(Backend::of_url("mysql://h/db").is_err());
    }
}
