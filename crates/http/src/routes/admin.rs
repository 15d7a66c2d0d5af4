//! Administration: the authentication audit log, and managed API keys (create, list,
//! revoke) so that a client can rotate keys without a shell on the server.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use trainyard_domain::{auth::parse_duration, time_fmt::iso8601};

use super::blocking;
use crate::{
    dto::{AuditLine, CreateKey, CreatedKey, KeyInfo},
    error::{ApiError, ErrorCode},
    AppState,
};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct AuditQuery {
    /// How many entries, newest first (1 to 10000, default 100).
    limit: Option<u32>,
}

/// The newest authentication attempts, newest first. Holds key fingerprints, never keys.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", params(AuditQuery), responses((status = 200, body = [AuditLine])))]
pub(crate) async fn audit_log(state: web::Data<AppState>, q: web::Query<AuditQuery>) -> Result<web::Json<Vec<AuditLine>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::new(ErrorCode::BadRequest, format!("limit must be between 1 and 10000, got {limit}")));
    }
    let store = state.auth_store.clone();
    let entries = blocking(move || store.list_audit(limit)).await?;
    Ok(web::Json(
        entries
            .into_iter()
            .map(|e| AuditLine {
                timestamp: iso8601(e.timestamp),
                outcome: e.outcome.as_str().to_owned(),
                key_fingerprint: e.fingerprint,
                key_id: e.key_id,
                method: e.method,
                endpoint: e.endpoint,
                client_addr: e.client_addr,
            })
            .collect(),
    ))
}

/// Creates a managed API key. The key is in this answer only; the server stores its hash.
#[utoipa::path(
    post, path = "/api/v1/admin/keys", tag = "admin", request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, description = "invalid label or lifetime"), (status = 422, description = "wrong JSON shape or unknown scope"))
)]
pub(crate) async fn create_key(state: web::Data<AppState>, body: web::Json<CreateKey>) -> Result<HttpResponse, ApiError> {
    let CreateKey { label, scope, expires_in } = body.into_inner();
    let lifetime = expires_in
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|m| ApiError::new(ErrorCode::BadRequest, m).with_details(serde_json::json!({ "field": "expires_in" })))?;
    let auth = state.authenticator.clone();
    let issued = blocking(move || auth.issue_key(&label, scope.into(), lifetime)).await?;
    tracing::info!(
        key_id = %issued.record.id,
        fingerprint = %issued.record.fingerprint,
        scope = %issued.record.scope,
        "API key created through the API"
    );
    let info = KeyInfo::of(&issued.record, state.authenticator.now());
    Ok(HttpResponse::Created().json(CreatedKey { key: issued.key, info }))
}

/// Lists managed API keys, oldest first: ids, fingerprints, labels, scopes, expiry and
/// revocation, never keys. Keys configured with `API_KEYS` are not listed.
#[utoipa::path(get, path = "/api/v1/admin/keys", tag = "admin", responses((status = 200, body = [KeyInfo])))]
pub(crate) async fn list_keys(state: web::Data<AppState>) -> Result<web::Json<Vec<KeyInfo>>, ApiError> {
    let auth = state.authenticator.clone();
    let keys = blocking(move || auth.list_keys()).await?;
    let now = state.authenticator.now();
    Ok(web::Json(keys.iter().map(|k| KeyInfo::of(k, now)).collect()))
}

/// Whether `raw` has the shape of a key id (`key_` and 8 hex digits) or a fingerprint (`fp_`
/// and 12 hex digits).
fn is_key_handle(raw: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    raw.strip_prefix("key_").is_some_and(|h| hex(h, 8)) || raw.strip_prefix("fp_").is_some_and(|h| hex(h, 12))
}

/// Revokes a managed API key by id (or fingerprint), at once: its next request gets a 401
/// `API_KEY_REVOKED`. Revoking a revoked key again changes nothing.
#[utoipa::path(
    delete, path = "/api/v1/admin/keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "the key's id (`key_...`) or fingerprint (`fp_...`)")),
    responses((status = 200, body = KeyInfo), (status = 404))
)]
pub(crate) async fn revoke_key(state: web::Data<AppState>, path: web::Path<String>) -> Result<web::Json<KeyInfo>, ApiError> {
    let id = path.into_inner();
    if !is_key_handle(&id) {
        return Err(ApiError::new(ErrorCode::NotFound, "no API key has this id: ids are key_ and 8 hex digits"));
    }
    let auth = state.authenticator.clone();
    let record = blocking(move || auth.revoke_key(&id)).await?;
    tracing::info!(key_id = %record.id, fingerprint = %record.fingerprint, "API key revoked through the API");
    Ok(web::Json(KeyInfo::of(&record, state.authenticator.now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_handles_are_ids_or_fingerprints() {
        assert!(is_key_handle("key_0a1b2c3d") && is_key_handle("fp_0123456789ab"));
        assert!(!is_key_handle("key_0A1B2C3D") && !is_key_handle("key_0a1b2c3") && !is_key_handle("../etc") && !is_key_handle(""));
    }
}
