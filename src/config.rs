//! Settings every taskwire process shares, as clap argument groups that each service
//! flattens into its own config. Each setting is a flag and a `TASKWIRE_*` variable;
//! values are typed and validated before anything binds or connects.

use std::{fmt, time::Duration};

use clap::Args;

/// A setting, or a combination of settings, that cannot work: found before anything
/// binds or connects, and reported with the flag it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {setting}: {reason}")]
pub struct ConfigError {
    /// The flag at fault, e.g. `--outbox-lease`.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// `setting` is wrong because `reason`.
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

/// Where NATS is, and how to prove who we are to it (docs/security.md, "NATS").
#[derive(Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL (JetStream enabled), or a comma-separated list of a cluster's
    /// servers: the process starts while any one of them is up.
    #[arg(
        long = "nats-url",
        env = "TASKWIRE_NATS_URL",
        default_value = DEFAULT_NATS_URL,
        value_parser = parse_nats_urls
    )]
    pub nats_url: String,

    /// Deadline for every NATS request and publish acknowledgement, e.g. 5s, 500ms.
    #[arg(long = "nats-timeout", env = "TASKWIRE_NATS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub nats_timeout: Duration,

    /// NATS credentials file (a user JWT and its nkey seed, as `nsc` writes them).
    #[arg(long = "nats-creds", env = "TASKWIRE_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,

    /// NATS user name (with --nats-password).
    #[arg(
        long = "nats-user",
        env = "TASKWIRE_NATS_USER",
        requires = "nats_password"
    )]
    pub nats_user: Option<String>,

    /// NATS password of --nats-user.
    #[arg(
        long = "nats-password",
        env = "TASKWIRE_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,

    /// File holding a NATS nkey seed (`SU…`) to sign the server's challenge with.
    #[arg(long = "nats-nkey", env = "TASKWIRE_NATS_NKEY")]
    pub nats_nkey: Option<std::path::PathBuf>,

    /// PEM CA that signed the NATS servers' certificates: connect with TLS.
    #[arg(long = "nats-tls-ca", env = "TASKWIRE_NATS_TLS_CA")]
    pub nats_tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate for NATS servers that verify clients (with
    /// --nats-tls-key).
    #[arg(
        long = "nats-tls-cert",
        env = "TASKWIRE_NATS_TLS_CERT",
        requires = "nats_tls_key"
    )]
    pub nats_tls_cert: Option<std::path::PathBuf>,

    /// PEM key of --nats-tls-cert.
    #[arg(
        long = "nats-tls-key",
        env = "TASKWIRE_NATS_TLS_KEY",
        requires = "nats_tls_cert"
    )]
    pub nats_tls_key: Option<std::path::PathBuf>,

    /// Create or update the streams at start-up. Under NATS permissions that confine
    /// each role (deploy/nats-permissions.conf), only the api may: run the others with
    /// `false`, and they wait for the streams to exist.
    #[arg(long = "nats-manage-streams", env = "TASKWIRE_NATS_MANAGE_STREAMS", default_value_t = true, action = clap::ArgAction::Set)]
    pub nats_manage_streams: bool,
}

// The password is a secret: Debug shows whether there is one, not what it is.
impl fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsArgs")
            .field("nats_url", &self.nats_url)
            .field("nats_timeout", &self.nats_timeout)
            .field("nats_creds", &self.nats_creds)
            .field("nats_user", &self.nats_user)
            .field(
                "nats_password",
                &self.nats_password.as_ref().map(|_| "<redacted>"),
            )
            .field("nats_nkey", &self.nats_nkey)
            .field("nats_tls_ca", &self.nats_tls_ca)
            .field("nats_tls_cert", &self.nats_tls_cert)
            .field("nats_manage_streams", &self.nats_manage_streams)
            .finish_non_exhaustive()
    }
}

/// NATS's default address, where `--nats-url` points unless told otherwise.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

impl NatsArgs {
    /// Joins the `taskwire dev` of this directory (its data dir: `TASKWIRE_DATA_DIR`,
    /// else `.taskwire`; it writes its NATS URL to `nats-url` there) when no other NATS
    /// URL was given: for examples and workers started beside `scripts/dev`.
    /// Production processes do not call this.
    pub fn or_dev(mut self) -> Self {
        let data_dir = std::env::var_os("TASKWIRE_DATA_DIR").unwrap_or_else(|| ".taskwire".into());
        let file = std::path::Path::new(&data_dir).join("nats-url");
        if self.nats_url == DEFAULT_NATS_URL
            && let Ok(url) = std::fs::read_to_string(file)
        {
            self.nats_url = url.trim().to_string();
        }
        self
    }
}

/// Stream settings; every process takes the same flags so they agree.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// JetStream's duplicate window on the streams. Must exceed the api's
    /// --outbox-lease, so a task the relay publishes a second time is dropped.
    #[arg(long, env = "TASKWIRE_DUPLICATE_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub duplicate_window: Duration,

    /// How long task events are kept in TASKWIRE_EVENTS (for late watchers, replay).
    #[arg(long, env = "TASKWIRE_EVENTS_MAX_AGE", default_value = "168h", value_parser = parse_duration)]
    pub events_max_age: Duration,

    /// Replicas of each stream: 1 on a single server, 3 on a production cluster.
    #[arg(long, env = "TASKWIRE_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
}

impl StreamArgs {
    /// The stream settings these flags give.
    pub fn settings(&self) -> crate::nats::StreamSettings {
        crate::nats::StreamSettings {
            duplicate_window: self.duplicate_window,
            events_max_age: self.events_max_age,
            replicas: usize::from(self.stream_replicas),
        }
    }
}

/// How a gRPC server faces browsers.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Browser origins allowed to call over grpc-web (CORS): comma-separated, `*` for
    /// any, empty for none.
    #[arg(long = "cors-origins", env = "TASKWIRE_CORS_ORIGINS", default_value = "", value_parser = crate::serve::Cors::parse)]
    pub cors: crate::serve::Cors,

    /// How callers are authenticated: `off`, or `keys` (API keys made with `taskwire
    /// keys create`, sent as `authorization: Bearer <key>`).
    #[arg(
        long = "auth",
        env = "TASKWIRE_AUTH",
        value_enum,
        default_value = "off"
    )]
    pub auth: crate::auth::Mode,

    /// With --auth keys, also accept JWTs signed by a key in this JWKS file (an
    /// identity provider's public keys); `exp` is required.
    #[arg(long = "jwt-jwks", env = "TASKWIRE_JWT_JWKS")]
    pub jwt_jwks: Option<std::path::PathBuf>,

    /// The issuer (`iss`) JWTs must name.
    #[arg(
        long = "jwt-issuer",
        env = "TASKWIRE_JWT_ISSUER",
        requires = "jwt_jwks"
    )]
    pub jwt_issuer: Option<String>,

    /// The audience (`aud`) JWTs must name.
    #[arg(
        long = "jwt-audience",
        env = "TASKWIRE_JWT_AUDIENCE",
        requires = "jwt_jwks"
    )]
    pub jwt_audience: Option<String>,

    /// The JWT claim that names the caller's tenant.
    #[arg(
        long = "jwt-tenant-claim",
        env = "TASKWIRE_JWT_TENANT_CLAIM",
        default_value = "tenant"
    )]
    pub jwt_tenant_claim: String,

    /// The JWT claim that names the caller's role (reader, submitter or admin).
    #[arg(
        long = "jwt-role-claim",
        env = "TASKWIRE_JWT_ROLE_CLAIM",
        default_value = "role"
    )]
    pub jwt_role_claim: String,

    /// PEM certificate chain to serve TLS with (reloaded when the file changes).
    #[arg(long = "tls-cert", env = "TASKWIRE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key", env = "TASKWIRE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// PEM CA certificates: callers must present a client certificate one of them
    /// signed (mTLS).
    #[arg(
        long = "tls-client-ca",
        env = "TASKWIRE_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// The longest a call may take to be answered (a stream: to start), and the
    /// longest `grpc-timeout` a caller may ask for.
    #[arg(long = "request-timeout", env = "TASKWIRE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Serve off loopback without --auth keys and TLS (e.g. behind a proxy that
    /// terminates TLS and checks callers). Logged as a warning.
    #[arg(long = "insecure", env = "TASKWIRE_INSECURE")]
    pub insecure: bool,
}

impl ServeArgs {
    /// Refuses a non-loopback `listen` without authentication and TLS, unless
    /// `--insecure` ([`crate::serve::check_exposure`]); checked before anything
    /// connects, and again by [`ServeArgs::serving`] on the address bound.
    pub fn check_exposure(&self, listen: std::net::SocketAddr) -> Result<(), ConfigError> {
        crate::serve::check_exposure(
            "--listen",
            listen,
            self.auth == crate::auth::Mode::Keys,
            self.tls_cert.is_some(),
            self.insecure,
        )
    }

    /// How to serve on `listen`: these flags' CORS, authentication (keys read from
    /// `store`) and TLS, once [`crate::serve::check_exposure`] allows it.
    pub fn serving(
        &self,
        listen: std::net::SocketAddr,
        store: &crate::store::Store,
    ) -> Result<crate::serve::Serving, ConfigError> {
        use crate::auth::{AuthLayer, Mode, Verifier};
        self.check_exposure(listen)?;
        let auth = match self.auth {
            Mode::Off => AuthLayer::open(),
            Mode::Keys => {
                let mut verifier = Verifier::new(store.clone());
                if let Some(jwks) = &self.jwt_jwks {
                    let jwt = crate::auth::jwt::JwtVerifier::load(crate::auth::jwt::JwtSettings {
                        jwks: jwks.clone(),
                        issuer: self.jwt_issuer.clone(),
                        audience: self.jwt_audience.clone(),
                        tenant_claim: self.jwt_tenant_claim.clone(),
                        role_claim: self.jwt_role_claim.clone(),
                    })
                    .map_err(|e| {
                        ConfigError::new("--jwt-jwks", crate::telemetry::chain(&e).to_string())
                    })?;
                    verifier = verifier.with_jwt(jwt);
                }
                AuthLayer::keys(std::sync::Arc::new(verifier))
            }
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let files = crate::tls::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                };
                Some(crate::tls::ServerTls::load(&files).map_err(|e| {
                    ConfigError::new("--tls-cert", crate::telemetry::chain(&e).to_string())
                })?)
            }
            _ => None,
        };
        Ok(crate::serve::Serving {
            cors: self.cors.clone(),
            auth,
            tls,
            request_timeout: self.request_timeout,
        })
    }
}

/// Where the database is.
#[derive(Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: sqlite://PATH (the embedded default; the file is created) or
    /// postgres://USER:PASSWORD@HOST/DB.
    #[arg(long = "database-url", env = "TASKWIRE_DATABASE_URL", default_value = "sqlite://taskwire.db", value_parser = parse_database_url)]
    pub database_url: String,

    /// Deadline for every database call, connection wait included.
    #[arg(long = "database-timeout", env = "TASKWIRE_DATABASE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub database_timeout: Duration,

    /// Most connections in the pool.
    #[arg(long = "database-max-connections", env = "TASKWIRE_DATABASE_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
}

impl DatabaseArgs {
    /// The store options these flags give.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            timeout: self.database_timeout,
            max_connections: self.database_max_connections,
        }
    }
}

// The URL may hold a password: Debug shows it redacted.
impl fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("database_url", &crate::store::redact(&self.database_url))
            .field("database_timeout", &self.database_timeout)
            .field("database_max_connections", &self.database_max_connections)
            .finish()
    }
}

fn parse_nats_urls(s: &str) -> Result<String, String> {
    crate::nats::servers(s).map(|_| s.to_string())
}

fn parse_database_url(s: &str) -> Result<String, String> {
    crate::store::Backend::of_url(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// Parses a duration such as `250ms`, `5s`, `2m`, `1h` or `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{s:?} needs a unit: ms, s, m, h or d"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a number followed by ms, s, m, h or d"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use ms, s, m, h or d"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 366.0 * 24.0 * 3600.0 {
        return Err(format!("{s:?} must be positive and at most a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A retention age: how long to keep something, or (`None`) for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepFor(pub Option<Duration>);

/// Parses a retention age: a duration (`7d`, `720h`), or `off` to keep for good.
pub fn parse_retention(s: &str) -> Result<KeepFor, String> {
    if s.trim() == "off" {
        return Ok(KeepFor(None));
    }
    parse_duration(s).map(|d| KeepFor(Some(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "5", "s", "-1s", "0s", "5x", "99999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nats_url_lists() {
        assert!(parse_nats_urls("nats://a:4222").is_ok());
        assert!(parse_nats_urls("nats://a:4222, nats://b:4222,nats://c:4222").is_ok());
        assert_eq!(
            crate::nats::servers("nats://a:4222,nats://b:5222")
                .unwrap()
                .len(),
            2
        );
        for bad in ["", ",", "nats://a:notaport", "nats://a:4222,bad url"] {
            assert!(parse_nats_urls(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn database_debug_hides_the_password() {
        let a = DatabaseArgs {
            database_url: "postgres://u:hunter2@h/db".into(),
            database_timeout: Duration::from_secs(1),
            database_max_connections: 4,
        };
        assert!(!format!("{a:?}").contains("hunter2"));
    }
}
