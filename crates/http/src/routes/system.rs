//! Health, root, docs redirects and system information.

use actix_web::{http::header, web, HttpResponse};
use trainyard_domain::time_fmt::iso8601;

use crate::{
    dto::{Health, Root, SystemInfo},
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

/// CPU, memory, disk and GPU usage from the monitor's cache (refreshed every 2 s).
#[utoipa::path(get, path = "/api/v1/system/info", tag = "system", responses((status = 200, body = SystemInfo)))]
pub(crate) async fn system_info(state: web::Data<AppState>) -> web::Json<SystemInfo> {
    let snapshot = state.monitor.snapshot();
    let running = state.manager.running_usage();
    let training_memory_mb = running.iter().filter_map(|(_, u)| u.map(|u| u.memory_mb)).sum();
    web::Json(SystemInfo::of(&snapshot, running.len(), training_memory_mb, state.manager.policy().max_concurrent))
}
