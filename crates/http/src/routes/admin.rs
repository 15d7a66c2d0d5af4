//! Administration: the authentication audit log.

use actix_web::web;
use serde::Deserialize;
use trainyard_domain::time_fmt::iso8601;

use super::blocking;
use crate::{
    dto::AuditLine,
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
