//! Health, root, docs redirects and system information.

use actix_web::{http::header, web, HttpResponse};
use trainyard_domain::time_fmt::iso8601;

use super::blocking;
use crate::{
    dto::{Health, Root, SystemInfo},
    error::ApiError,
    AppState, SERVICE, VERSION,
};

/// Liveness; needs no key.
#[utoipa::path(get, path = "/health", tag = "system", security(()), responses((status = 200, body = Health)))]
pub(crate) async fn health() -> web::Json<Health> {
    web::Json(Health { status: "healthy", service: SERVICE, version: VERSION, timestamp: iso8601(time::OffsetDateTime::now_utc()) })
}

/// Where to find things; needs no key.
#[utoipa::path(get, path = "/", tag = "system", security(()), responses((status = 200, body = Root)))]
pub(crate) async fn root() -> web::Json<Root> {
    web::Json(Root { service: SERVICE, version: VERSION, docs: "/docs/", openapi: "/openapi.json", health: "/health" })
}

/// The old server's ReDoc address: this server's explorer lives at `/docs/`.
pub(crate) async fn redoc() -> HttpResponse {
    HttpResponse::TemporaryRedirect().insert_header((header::LOCATION, "/docs/")).finish()
}

/// `/docs` without its slash: the explorer's files are relative to `/docs/`, so it moves there
/// for good (308 keeps the method).
pub(crate) async fn docs() -> HttpResponse {
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/docs/")).finish()
}

/// Prometheus metrics in the OpenMetrics text format.
///
/// Counted since the server started: `trainyard_http_requests_total{method,route,status}` and
/// `trainyard_http_request_duration_seconds{method,route}` (route patterns, never raw paths;
/// `unmatched` for unknown routes), `trainyard_auth_failures_total{outcome}`,
/// `trainyard_upload_bytes_total{kind}`, `trainyard_download_bytes_total` and
/// `trainyard_epochs_completed_total`. Read at each scrape: `trainyard_sessions{state}` (every
/// state), `trainyard_queue_length`, `trainyard_running_session_samples_per_second{session_id}`,
/// `trainyard_running_session_memory_bytes{session_id}`, and the machine's CPU, memory, disk and
/// per-GPU gauges (`trainyard_gpu_utilization_percent{index,name}` and
/// `trainyard_gpu_memory_{used,total}_bytes{index,name}`).
///
/// A server started with `--metrics-public` (`TRAINYARD_METRICS_PUBLIC`) serves it without a key.
#[utoipa::path(
    get, path = "/metrics", tag = "system",
    responses((status = 200, description = "the metrics", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String))
)]
pub(crate) async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let body = blocking(move || crate::metrics::scrape(&state)).await?;
    Ok(HttpResponse::Ok().insert_header((header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)).body(body))
}

/// CPU, memory, disk and GPU usage from the monitor's cache (refreshed every 2 s).
#[utoipa::path(get, path = "/api/v1/system/info", tag = "system", responses((status = 200, body = SystemInfo)))]
pub(crate) async fn system_info(state: web::Data<AppState>) -> web::Json<SystemInfo> {
    let snapshot = state.monitor.snapshot();
    let running = state.manager.running_usage();
    let training_memory_mb = running.iter().filter_map(|(_, u)| u.map(|u| u.memory_mb)).sum();
    web::Json(SystemInfo::of(&snapshot, running.len(), training_memory_mb, state.manager.policy().max_concurrent))
}
