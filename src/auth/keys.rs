//! API keys: `twk_<id>_<secret>` tokens, 16 hex digits of id (which finds the row) and
//! 64 of secret (256 random bits). Only the secret's SHA-256 is stored: a key has
//! full entropy, so a fast hash is as strong as a slow one and costs a verify
//! microseconds, not milliseconds.

use std::{
    collections::HashMap,
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{Principal, Role, Scope, Tenant};
use crate::{domain::InvalidInput, json, store};

/// How long a verified (or refused) token is remembered: a revoked key stops working
/// within this.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Tokens remembered at most; past it the cache starts afresh.
const CACHE_MAX: usize = 10_000;

const PREFIX: &str = "twk_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// A key's public id: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Parses a key id.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        if is_hex(s, ID_HEX) {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidInput::malformed(
                "key id",
                "must be 16 lowercase hex digits",
            ))
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A token as a caller presents it. Its Debug hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: KeyId,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({PREFIX}{}_…)", self.id)
    }
}

impl Token {
    /// A new random token.
    pub fn generate() -> Self {
        let mut id = [0u8; ID_HEX / 2];
        let mut secret = [0u8; SECRET_HEX / 2];
        // ThreadRng is a CSPRNG seeded from the operating system.
        let mut rng = rand::rng();
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        Self {
            id: KeyId(hex::encode(id)),
            secret: hex::encode(secret),
        }
    }

    /// Parses `twk_<id>_<secret>`; `None` if it is not shaped like a token.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        (is_hex(id, ID_HEX) && is_hex(secret, SECRET_HEX)).then(|| Self {
            id: KeyId(id.to_string()),
            secret: secret.to_string(),
        })
    }

    /// The key's id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The whole token, to give to the caller once.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, self.secret)
    }

    /// The secret's SHA-256, as stored.
    pub fn secret_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
}

/// A key's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its id (the token's public part).
    pub id: KeyId,
    /// What it is for, for people.
    pub name: String,
    /// The tenant its callers act in.
    pub tenant: Tenant,
    /// What its callers may do.
    pub role: Role,
    /// The secret's SHA-256, hex.
    pub secret_sha256: String,
    /// When it was made (µs since the epoch).
    pub created_at_us: i64,
    /// When it was revoked, if it was.
    pub revoked_at_us: Option<i64>,
}

impl ApiKey {
    /// A new key for `tenant` with `role`, and its token (shown once, never stored).
    pub fn create(name: &str, tenant: Tenant, role: Role) -> (Self, Token) {
        let token = Token::generate();
        let key = Self {
            id: token.id.clone(),
            name: name.to_string(),
            tenant,
            role,
            secret_sha256: token.secret_sha256(),
            created_at_us: json::now_micros(),
            revoked_at_us: None,
        };
        (key, token)
    }

    /// Whether `token` is this key's, unrevoked.
    fn admits(&self, token: &Token) -> bool {
        self.revoked_at_us.is_none()
            && self.id == token.id
            && constant_time_eq(
                self.secret_sha256.as_bytes(),
                token.secret_sha256().as_bytes(),
            )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not a token, unknown, wrong or revoked: the caller is told no more than that.
    #[error("invalid or revoked API key")]
    Invalid,
    /// The keys could not be read: try again.
    #[error("cannot check the API key now")]
    Unavailable(#[source] store::Error),
}

/// Checks bearer tokens against the `api_keys` table, remembering each answer for
/// [`CACHE_TTL`].
#[derive(Debug)]
pub struct Verifier {
    store: store::Store,
    cache: Mutex<HashMap<[u8; 32], Remembered>>,
    /// JWTs are accepted too, when a JWKS is configured.
    jwt: Option<super::jwt::JwtVerifier>,
}

/// When a token was checked, and what it stood for (`None`: refused).
type Remembered = (Instant, Option<Principal>);

impl Verifier {
    /// A verifier reading `store`'s keys.
    pub fn new(store: store::Store) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
            jwt: None,
        }
    }

    /// Also accepts JWTs `jwt` verifies.
    pub fn with_jwt(mut self, jwt: super::jwt::JwtVerifier) -> Self {
        self.jwt = Some(jwt);
        self
    }

    /// The principal a bearer token stands for: an API key (`twk_…`), or a JWT when
    /// a JWKS is configured. JWTs are not cached: checking one is a signature check,
    /// no I/O, and its `exp` is checked on every call.
    pub async fn verify(&self, bearer: &str) -> Result<Principal, Refused> {
        let Some(token) = Token::parse(bearer) else {
            return match &self.jwt {
                Some(jwt) => jwt.verify(bearer),
                None => Err(Refused::Invalid),
            };
        };
        let cache_key: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        if let Some((at, answer)) = self.cache.lock().expect("not poisoned").get(&cache_key)
            && at.elapsed() < CACHE_TTL
        {
            return answer.clone().ok_or(Refused::Invalid);
        }
        let key = self
            .store
            .get_key(token.id())
            .await
            .map_err(Refused::Unavailable)?;
        let answer = key.filter(|k| k.admits(&token)).map(|k| Principal {
            key_id: k.id.to_string(),
            scope: Scope::Tenant(k.tenant),
            role: k.role,
        });
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(cache_key, (Instant::now(), answer.clone()));
        answer.ok_or(Refused::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_hide_their_secret() {
        let t = Token::generate();
        let s = t.reveal();
        assert_eq!(s.len(), PREFIX.len() + ID_HEX + 1 + SECRET_HEX);
        assert_eq!(Token::parse(&s), Some(t.clone()));
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_ne!(Token::generate(), t);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = Token::generate().reveal();
        for bad in [
            "",
            "twk_",
            &good[..good.len() - 1],
            &good.to_uppercase(),
            &good.replace("twk_", "tw_"),
            &format!("{good}0"),
            &format!(" {good}"),
        ] {
            assert_eq!(Token::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_key_admits_only_its_own_unrevoked_token() {
        let (mut key, token) = ApiKey::create("k", Tenant::parse("a").unwrap(), Role::Reader);
        assert!(key.admits(&token));
        assert!(!key.admits(&Token::generate()));
        let forged = Token {
            id: token.id.clone(),
            secret: Token::generate().secret,
        };
        assert!(!key.admits(&forged));
        key.revoked_at_us = Some(1);
        assert!(!key.admits(&token));
    }
}
