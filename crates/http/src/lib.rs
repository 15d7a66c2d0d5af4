//! Trainyard's REST API on actix-web: routes, wire DTOs, API-key authentication with
//! auditing, and the one error envelope. Blocking work (SQLite, file I/O, training control)
//! runs on actix's blocking pool, never on a worker thread.

mod auth;
mod download;
pub mod dto;
pub mod error;
mod openapi;
mod proxy;
mod routes;
mod throttle;
mod upload;

use std::{fmt, net::SocketAddr, sync::Arc};

use actix_web::{
    dev::Server,
    middleware::{from_fn, Compress},
    web, App, HttpServer,
};
use trainyard_domain::{
    auth::Authenticator,
    catalog::Catalog,
    inference::Inference,
    manager::SessionManager,
    ports::{AuthStore, SystemMonitor},
};

pub use error::{ApiError, ErrorCode};
pub use openapi::openapi_json;
pub use proxy::TrustedProxies;
pub use throttle::{GovernorLimiter, Limits};

/// Largest accepted JSON body.
pub const JSON_LIMIT_BYTES: usize = 1024 * 1024;

/// Upload size limits, per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    pub model_max_bytes: u64,
    pub dataset_max_bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self { model_max_bytes: 20 * 1024 * 1024 * 1024, dataset_max_bytes: 5 * 1024 * 1024 * 1024 }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub manager: SessionManager,
    pub catalog: Catalog,
    pub inference: Inference,
    pub authenticator: Arc<Authenticator>,
    pub auth_store: Arc<dyn AuthStore>,
    pub monitor: Arc<dyn SystemMonitor>,
    pub limits: UploadLimits,
    /// Whose `X-Forwarded-For` names the client.
    pub proxies: TrustedProxies,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// The service name reported by `/health`.
pub const SERVICE: &str = "trainyard";
/// The version reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Registers every route, extractor config and middleware on an actix `App`.
pub fn configure(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .app_data(web::JsonConfig::default().limit(JSON_LIMIT_BYTES).error_handler(routes::json_error))
            .app_data(web::QueryConfig::default().error_handler(routes::query_error))
            .app_data(web::PathConfig::default().error_handler(routes::path_error));
        routes::register(cfg);
    }
}

/// Builds the HTTP server bound to `addr`. The server handles SIGINT and SIGTERM itself by
/// refusing new connections and finishing requests in flight; the caller then shuts the
/// session manager down.
///
/// Returns the server and the addresses it listens on (port 0 picks a free port).
///
/// # Errors
/// The bind error when the address is unavailable.
pub fn server(state: AppState, addr: (&str, u16), workers: usize) -> std::io::Result<(Server, Vec<SocketAddr>)> {
    let bound = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(auth::require_key))
            .wrap(from_fn(routes::envelope_fallback))
            .wrap(Compress::default())
            .wrap(actix_web::middleware::Logger::new("%a \"%r\" %s %b %Dms").log_target("trainyard::access"))
            .configure(configure(state.clone()))
            .default_service(web::to(routes::not_found))
    })
    .workers(workers.max(1))
    .shutdown_timeout(10)
    .bind(addr)?;
    let addrs = bound.addrs();
    Ok((bound.run(), addrs))
}
