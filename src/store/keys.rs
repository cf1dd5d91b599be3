//! API keys: their rows in `api_keys`. Tokens and hashing are `auth::keys`'; this
//! module only stores and finds what it is given.

use sqlx::{Row, any::AnyRow};

use super::{Error, Store};
use crate::auth::{ApiKey, KeyId, Role, Tenant};

impl ApiKey {
    fn from_row(row: &AnyRow) -> Result<Self, Error> {
        let corrupt = |what: &str| Error::Corrupt(format!("api key {what}"));
        let id: String = row.try_get("id")?;
        let role: String = row.try_get("role")?;
        Ok(Self {
            id: KeyId::parse(&id).map_err(|_| corrupt("id"))?,
            name: row.try_get("name")?,
            tenant: Tenant::from_stored(row.try_get("tenant")?),
            role: Role::parse(&role).map_err(|_| corrupt("role"))?,
            secret_sha256: row.try_get("secret_sha256")?,
            created_at_us: row.try_get("created_at_us")?,
            revoked_at_us: row.try_get("revoked_at_us")?,
        })
    }
}

const KEY_COLUMNS: &str = "id, name, tenant, role, secret_sha256, created_at_us, revoked_at_us";

impl Store {
    /// Stores a new key.
    pub async fn insert_key(&self, key: &ApiKey) -> Result<(), Error> {
        self.deadline(async {
            sqlx::query(
                "INSERT INTO api_keys (id, name, tenant, role, secret_sha256, created_at_us, \
                 revoked_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(key.id.to_string())
            .bind(key.name.clone())
            .bind(key.tenant.as_str().to_string())
            .bind(key.role.as_str())
            .bind(key.secret_sha256.clone())
            .bind(key.created_at_us)
            .bind(key.revoked_at_us)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// The key with this id, revoked or not.
    pub async fn get_key(&self, id: &KeyId) -> Result<Option<ApiKey>, Error> {
        self.deadline(async {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"
            )))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(ApiKey::from_row).transpose()
        })
        .await
    }

    /// Every key, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, Error> {
        self.deadline(async {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at_us, id"
            )))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(ApiKey::from_row).collect()
        })
        .await
    }

    /// Marks a key revoked at `now_us`; whether it was there and not revoked before.
    pub async fn revoke_key(&self, id: &KeyId, now_us: i64) -> Result<bool, Error> {
        self.deadline(async {
            let done = sqlx::query(
                "UPDATE api_keys SET revoked_at_us = $1 WHERE id = $2 AND revoked_at_us IS NULL",
            )
            .bind(now_us)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }
}
