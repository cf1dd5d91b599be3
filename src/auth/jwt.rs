//! JWTs from an external issuer (an identity provider), mapped to the same tenant and
//! role model as API keys: the token's signature is checked against a JWKS file, its
//! `exp` (required), issuer and audience against the flags, and two claims name the
//! tenant and the role. Only asymmetric algorithms are accepted: the JWKS holds public
//! keys, so a token signed with HMAC over a public key (the classic confusion) is
//! refused.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};

use super::{Principal, Role, Scope, Tenant, keys::Refused};

/// The `--jwt-*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// The issuer's public keys, a JWKS (JSON) file.
    pub jwks: PathBuf,
    /// The `iss` tokens must carry, if any.
    pub issuer: Option<String>,
    /// The `aud` tokens must carry, if any.
    pub audience: Option<String>,
    /// The claim that names the tenant.
    pub tenant_claim: String,
    /// The claim that names the role (reader, submitter, admin).
    pub role_claim: String,
}

/// Why a JWKS file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// It could not be read.
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    /// It is not a JWKS.
    #[error("{} is not a JWKS", .0.display())]
    Parse(PathBuf, #[source] serde_json::Error),
    /// It holds no key.
    #[error("{} holds no key", .0.display())]
    Empty(PathBuf),
}

/// Checks JWTs against a JWKS.
#[derive(Debug)]
pub struct JwtVerifier {
    keys: JwkSet,
    settings: JwtSettings,
}

impl JwtVerifier {
    /// Loads the JWKS `settings` names.
    pub fn load(settings: JwtSettings) -> Result<Self, JwksError> {
        let keys = read_jwks(&settings.jwks)?;
        Ok(Self { keys, settings })
    }

    /// The principal a JWT stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, Refused> {
        let invalid = |why: &str| {
            tracing::debug!(why, "JWT refused");
            Refused::Invalid
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("header"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(invalid("algorithm"));
        }
        let jwk = match &header.kid {
            Some(kid) => self.keys.find(kid),
            // Without a kid, only a JWKS of one key is unambiguous.
            None if self.keys.keys.len() == 1 => self.keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| invalid("no such key"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| invalid("key"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &self.settings.issuer {
            validation.set_issuer(&[iss]);
        }
        match &self.settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|_| invalid("signature or claims"))?
            .claims;
        let claim = |name: &str| claims.get(name).and_then(|v| v.as_str());
        let tenant = claim(&self.settings.tenant_claim)
            .and_then(|t| Tenant::parse(t).ok())
            .ok_or_else(|| invalid("tenant claim"))?;
        let role = claim(&self.settings.role_claim)
            .and_then(|r| Role::parse(r).ok())
            .ok_or_else(|| invalid("role claim"))?;
        Ok(Principal {
            key_id: format!("jwt:{}", claim("sub").unwrap_or("-")),
            scope: Scope::Tenant(tenant),
            role,
        })
    }
}

fn read_jwks(path: &Path) -> Result<JwkSet, JwksError> {
    let text = std::fs::read_to_string(path).map_err(|e| JwksError::Read(path.into(), e))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| JwksError::Parse(path.into(), e))?;
    if set.keys.is_empty() {
        return Err(JwksError::Empty(path.into()));
    }
    Ok(set)
}
