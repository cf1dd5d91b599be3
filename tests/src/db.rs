//! A fresh database per test.

/// A database for one test: a temp SQLite file or a fresh PostgreSQL database.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    /// Keeps the SQLite file's directory alive.
    _dir: Option<tempfile::TempDir>,
    /// (server URL, database name) to drop a PostgreSQL database afterwards.
    pg: Option<(String, String)>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("taskwire.db").display());
        Self {
            url,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A fresh database on `$DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/postgres).
    pub async fn postgres() -> Self {
        use sqlx::{Connection, Executor};
        let server = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let name = format!("taskwire_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {server} is required for these tests: {e}"));
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(&server);
        Self {
            url: format!("{base}/{name}"),
            _dir: None,
            pg: Some((server, name)),
        }
    }
}

impl TestDb {
    /// PostgreSQL only: ends every session on this test database (but the caller's),
    /// as a server restart does to its clients; returns how many. The server itself is
    /// not this test's to restart.
    pub async fn drop_connections(&self) -> u64 {
        use sqlx::Connection;
        let (server, name) = self.pg.as_ref().expect("a PostgreSQL test database");
        let mut conn = sqlx::PgConnection::connect(server)
            .await
            .expect("connect to PostgreSQL");
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .fetch_all(&mut conn)
        .await
        .expect("terminate sessions");
        ended.into_iter().filter(|e| *e).count() as u64
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.pg.take() else {
            return;
        };
        // Drop runs outside async; a small runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    use sqlx::{Connection, Executor};
                    if let Ok(mut c) = sqlx::PgConnection::connect(&server).await {
                        let _ = c
                            .execute(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Both databases, for tests that run against each.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    pub async fn create(self) -> TestDb {
        match self {
            Db::Sqlite => TestDb::sqlite(),
            Db::Postgres => TestDb::postgres().await,
        }
    }
}

/// Declares `mod NAME { sqlite, postgres }` tests that call `NAME(Db)`.
#[macro_export]
macro_rules! both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::Db::Postgres).await
            }
        }
    )*};
}
