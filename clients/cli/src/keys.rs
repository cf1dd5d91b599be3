//! `taskwire keys`: API keys, made, listed and revoked in the database the services
//! read them from (docs/security.md). A key's token is printed once, by `create`; the
//! database keeps only its hash.

use clap::{Args, Subcommand};
use taskwire::{
    auth::{ApiKey, KeyId, Role, Tenant},
    config::DatabaseArgs,
    json,
    store::Store,
};

use crate::{CliError, output};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Makes a key and prints its token (only this once) on stdout.
    Create(CreateArgs),
    /// Lists every key: id, name, tenant, role, when made and revoked.
    List(ListArgs),
    /// Revokes a key: services refuse it within seconds.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// What the key is for, for people (e.g. "billing-service").
    #[arg(long)]
    name: String,
    /// The tenant its callers act in: they see only its tasks.
    #[arg(long)]
    tenant: String,
    /// reader (read and watch), submitter (also submit and cancel) or admin (also
    /// the queues' statistics, which span tenants).
    #[arg(long, default_value = "submitter")]
    role: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The key's id (the 16 hex digits after `twk_`).
    id: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

pub async fn run(cmd: KeysCommand) -> Result<(), CliError> {
    let usage = |e: taskwire::domain::InvalidInput| CliError::Usage(e.to_string());
    match cmd {
        KeysCommand::Create(a) => {
            let tenant = Tenant::parse(&a.tenant).map_err(usage)?;
            let role = Role::parse(&a.role).map_err(usage)?;
            let store = open(&a.database).await?;
            let (key, token) = ApiKey::create(&a.name, tenant, role);
            store.insert_key(&key).await?;
            eprintln!(
                "key {} ({}) for tenant {} as {}: shown once, keep it secret",
                key.id, key.name, key.tenant, key.role
            );
            println!("{}", token.reveal());
        }
        KeysCommand::List(a) => {
            let store = open(&a.database).await?;
            for k in store.list_keys().await? {
                let when = |us: i64| output::rfc3339(&json::micros_to_timestamp(us));
                let revoked = k.revoked_at_us.map(when);
                if a.json {
                    let line = serde_json::json!({
                        "id": k.id.to_string(), "name": k.name, "tenant": k.tenant.as_str(),
                        "role": k.role.as_str(), "created_at": when(k.created_at_us),
                        "revoked_at": revoked,
                    });
                    println!("{line}");
                } else {
                    println!(
                        "{}  {:<10} {:<16} {:<24} created {}{}",
                        k.id,
                        k.role,
                        k.tenant,
                        k.name,
                        when(k.created_at_us),
                        revoked
                            .map(|r| format!("  REVOKED {r}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        KeysCommand::Revoke(a) => {
            let id = KeyId::parse(&a.id).map_err(usage)?;
            let store = open(&a.database).await?;
            if !store.revoke_key(&id, json::now_micros()).await? {
                return Err(CliError::Usage(format!(
                    "no unrevoked key {id} in this database"
                )));
            }
            eprintln!("key {id} revoked");
        }
    }
    Ok(())
}

async fn open(db: &DatabaseArgs) -> Result<Store, CliError> {
    Ok(Store::connect(&db.database_url, &db.store_options()).await?)
}
