//! `trainyard keys ...` and the first-start key: keys are printed once and stored as hashes.

use std::sync::Arc;

use anyhow::Context;
use trainyard_domain::{
    auth::{generate_key, issue_key, parse_duration, ApiKeyRecord},
    ports::{AuthStore, Clock, SystemClock},
    time_fmt::iso8601,
};

use crate::cli::KeysAction;

/// Runs one `keys` subcommand against `store`.
///
/// # Errors
/// When the store fails or the arguments are invalid.
pub fn run(store: &dyn AuthStore, action: KeysAction) -> anyhow::Result<()> {
    let now = SystemClock.now();
    match action {
        KeysAction::Create { label, expires_in, scope } => {
            let lifetime = expires_in.as_deref().map(parse_duration).transpose().map_err(anyhow::Error::msg)?;
            let issued = issue_key(store, &label, scope, now, lifetime)?;
            let record = issued.record;
            println!("{}", issued.key);
            eprintln!(
                "Created key {} ({}) labelled '{}' with scope {}{}. It is shown only this once; only its hash is stored.",
                record.id,
                record.fingerprint,
                record.label,
                record.scope,
                record.expires_at.map(|e| format!(", expiring {}", iso8601(e))).unwrap_or_default()
            );
        }
        KeysAction::List => {
            println!("{:<14} {:<17} {:<20} {:<6} {:<22} {:<22} STATUS", "ID", "FINGERPRINT", "LABEL", "SCOPE", "CREATED", "EXPIRES");
            for k in store.list_keys()? {
                println!(
                    "{:<14} {:<17} {:<20} {:<6} {:<22} {:<22} {}",
                    k.id,
                    k.fingerprint,
                    k.label,
                    k.scope,
                    iso8601(k.created_at),
                    k.expires_at.map_or_else(|| "never".to_owned(), iso8601),
                    k.status(now).as_str()
                );
            }
        }
        KeysAction::Revoke { id_or_fingerprint } => {
            let k = store.revoke_key(&id_or_fingerprint, now).with_context(|| format!("revoking {id_or_fingerprint}"))?;
            println!("revoked {} ({}) labelled '{}'", k.id, k.fingerprint, k.label);
        }
    }
    Ok(())
}

/// On a first start with no usable key, creates one, prints it once on standard output and
/// stores only its hash.
///
/// # Errors
/// When the store fails.
pub fn ensure_initial_key(store: &Arc<dyn AuthStore>, has_usable_key: bool, base_url: &str) -> anyhow::Result<()> {
    if has_usable_key {
        return Ok(());
    }
    let key = generate_key();
    let record = ApiKeyRecord::new(&key, "initial", SystemClock.now(), None);
    store.insert_key(&record)?;
    println!(
        "\n================================================================================\n\
         No API key was configured, so Trainyard created one. It is shown only this once;\n\
         only its hash ({}) is stored.\n\n    {key}\n\n\
         Try it:  curl -H \"Authorization: Bearer {key}\" {base_url}/api/v1/system/info\n\
         Lost it? `trainyard keys create --label NAME` makes another; `trainyard keys list`\n\
         and `trainyard keys revoke ID` manage them. API_KEYS=... also configures keys.\n\
         ================================================================================\n",
        record.fingerprint
    );
    Ok(())
}
