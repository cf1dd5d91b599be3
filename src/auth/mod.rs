//! Who is calling, and what they may see and do (docs/security.md).
//!
//! A caller presents an API key as `authorization: Bearer twk_<id>_<secret>` on any
//! surface (gRPC, grpc-web). The [`layer`] checks it against the `api_keys` table
//! (through a short cache, so a revoked key stops working within
//! [`keys::CACHE_TTL`]) and attaches the [`Principal`] to the request; handlers read
//! it with [`principal`] and see only its tenant ([`Scope`]). A server run with
//! `--auth off` (loopback only, unless told `--insecure`) attaches
//! [`Principal::open`], which sees every task: first runs and tests.
//!
//! # Layout
//! - `keys`: tokens (making, parsing, hashing) and the verifying cache.
//! - `jwt`: JWTs from an external issuer, checked against a JWKS file.
//! - `bearer`: the client side: sends a token with every call.
//! - `layer`: the tower layer every gRPC server runs: authenticate, authorize by
//!   method, attach the principal.

mod bearer;
pub mod jwt;
pub mod keys;
pub mod layer;

use std::fmt;

use crate::domain::InvalidInput;

pub use bearer::Bearer;
pub use keys::{ApiKey, KeyId, Token, Verifier};
pub use layer::{AuthLayer, Mode};

/// A tenant: `[a-z0-9][a-z0-9._-]{0,62}`. Every task belongs to its submitter's; the
/// empty tenant holds what was submitted without authentication.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(String);

impl Tenant {
    /// The tenant of tasks submitted to a server without authentication.
    pub fn none() -> Self {
        Self(String::new())
    }

    /// Parses a tenant name: `[a-z0-9][a-z0-9._-]{0,62}`.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && b".-_".contains(&b))
            });
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidInput::malformed(
                "tenant",
                "must match [a-z0-9][a-z0-9._-]{0,62}",
            ))
        }
    }

    /// Reads a stored tenant back as it was written.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    /// The name ('' for no tenant).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a key may do. Each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read and watch its tenant's tasks.
    Reader,
    /// Also submit and cancel them.
    Submitter,
    /// Also read the queues' statistics, which span tenants.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Reader, Role::Submitter, Role::Admin];

    /// Its name in the CLI and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
        }
    }

    /// Parses a role's name.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| InvalidInput::malformed("role", "must be reader, submitter or admin"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of a request, attached by the [`layer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id (`-` for an unauthenticated server's callers); logged, never secret.
    pub key_id: String,
    /// What the caller may see.
    pub scope: Scope,
    /// What the caller may do.
    pub role: Role,
}

impl Principal {
    /// Every caller of a server run without authentication: sees and may do everything.
    pub fn open() -> Self {
        Self {
            key_id: "-".into(),
            scope: Scope::All,
            role: Role::Admin,
        }
    }

    /// The tenant the caller's submits belong to.
    pub fn tenant(&self) -> Tenant {
        match &self.scope {
            Scope::All => Tenant::none(),
            Scope::Tenant(t) => t.clone(),
        }
    }
}

/// Which tasks a caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every task (a server without authentication).
    All,
    /// Only this tenant's: another tenant's task is NOT_FOUND, as a missing one is.
    Tenant(Tenant),
}

impl Scope {
    /// Whether a task of `tenant` is visible.
    pub fn sees(&self, tenant: &Tenant) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => t == tenant,
        }
    }

    /// The tenant a query must be limited to, if any.
    pub fn tenant(&self) -> Option<&Tenant> {
        match self {
            Scope::All => None,
            Scope::Tenant(t) => Some(t),
        }
    }
}

/// The request's principal, as the [`layer`] attached it. Every server runs the layer,
/// so a request without one is a wiring bug: refused (UNAUTHENTICATED), never served
/// as if open.
pub fn principal<T>(req: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no credentials were checked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        for ok in ["a", "acme", "team-1.prod_x", &"a".repeat(63)] {
            Tenant::parse(ok).unwrap();
        }
        for bad in ["", "-a", "A", "a b", "a/b", &"a".repeat(64), "é"] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Reader < Role::Submitter && Role::Submitter < Role::Admin);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()).unwrap(), r);
        }
        assert!(Role::parse("root").is_err());
    }

    #[test]
    fn scopes() {
        let a = Tenant::parse("a").unwrap();
        let b = Tenant::parse("b").unwrap();
        assert!(Scope::All.sees(&a));
        assert!(Scope::Tenant(a.clone()).sees(&a));
        assert!(!Scope::Tenant(a).sees(&b));
    }
}
