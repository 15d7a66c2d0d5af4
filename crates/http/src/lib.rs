//! Trainyard's REST API on actix-web: routes, wire DTOs, API-key authentication with
//! auditing, the one error envelope, and Prometheus metrics; HTTPS, connection timeouts, the
//! Host check and CORS.
//! Blocking work (SQLite, file I/O, training control) runs on actix's blocking pool, never on
//! a worker thread.

mod auth;
pub mod cors;
mod download;
pub mod dto;
pub mod error;
pub mod events;
pub mod host_check;
mod metrics;
mod openapi;
mod proxy;
mod routes;
mod throttle;
pub mod tls;
mod upload;

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use actix_web::{
    dev::Server,
    http::KeepAlive,
    middleware::{from_fn, Compress, Condition},
    web, App, HttpServer,
};
use trainyard_domain::{
    auth::Authenticator,
    catalog::Catalog,
    charts::Charts,
    inference::Inference,
    manager::SessionManager,
    ports::{AuthStore, SystemMonitor},
    sweeps::Sweeps,
    telegram::TelegramStatus,
    webhooks::Webhooks,
};

pub use error::{ApiError, ErrorCode};
pub use metrics::Metrics;
pub use openapi::openapi_json;
pub use proxy::TrustedProxies;
pub use throttle::{GovernorLimiter, Limits};

/// Largest accepted JSON body.
pub const JSON_LIMIT_BYTES: usize = 1024 * 1024;

/// Upload size limits, per kind, and how long an upload may send nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    pub model_max_bytes: u64,
    pub dataset_max_bytes: u64,
    /// An upload that sends no byte for this long gets a 408 and its staged file is removed.
    pub body_idle_timeout: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            model_max_bytes: 20 * 1024 * 1024 * 1024,
            dataset_max_bytes: 5 * 1024 * 1024 * 1024,
            body_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Connection timeouts; a zero duration turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time a client has to send a request's headers (and, with TLS, to finish the handshake).
    pub request_header: Duration,
    /// How long an idle keep-alive connection stays open; zero closes after each response.
    pub keep_alive: Duration,
    /// Time a client has to close a connection the server is shutting (after a response that
    /// ends it); then it is dropped.
    pub client_disconnect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { request_header: Duration::from_secs(10), keep_alive: Duration::from_secs(5), client_disconnect: Duration::from_secs(1) }
    }
}

/// How the server meets the network: HTTPS, timeouts, which `Host`s it answers, and the
/// origins browsers may call it from.
#[derive(Debug, Clone)]
pub struct Transport {
    /// HTTPS with this certificate, reloaded on SIGHUP; plain HTTP when `None`.
    pub tls: Option<Arc<tls::ReloadingCert>>,
    /// How often the certificate files are compared with what is served (zero: only on SIGHUP).
    pub tls_reload_every: Duration,
    pub timeouts: Timeouts,
    pub hosts: host_check::HostPolicy,
    /// Exact origins (checked by [`cors::parse_origins`]); no CORS headers at all when empty.
    pub cors_origins: Vec<String>,
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
    /// The live side of the event streams.
    pub events: events::EventHub,
    /// Draws session and comparison charts.
    pub charts: Charts,
    /// The use case behind the webhook endpoints.
    pub webhooks: Webhooks,
    /// Telegram notifications' configuration and message log.
    pub telegram: TelegramStatus,
    /// The use case behind the sweep endpoints.
    pub sweeps: Sweeps,
    /// The Prometheus metrics, and whether `GET /metrics` needs a key.
    pub metrics: Metrics,
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

/// Builds the HTTP server bound to `addr`, with HTTPS when `transport.tls` is set (the
/// certificate files are then watched: call this within the actix system). The server handles
/// SIGINT and SIGTERM itself by refusing new connections and finishing requests in flight; the
/// caller then shuts the session manager down.
///
/// Returns the server and the addresses it listens on (port 0 picks a free port).
///
/// # Errors
/// The bind error when the address is unavailable, or the certificate watcher's start error.
pub fn server(state: AppState, addr: (&str, u16), workers: usize, transport: Transport) -> std::io::Result<(Server, Vec<SocketAddr>)> {
    let Transport { tls, tls_reload_every, timeouts, hosts, cors_origins } = transport;
    let hosts = Arc::new(hosts);
    let builder = HttpServer::new(move || {
        let hosts = hosts.clone();
        let counts = state.metrics.clone();
        App::new()
            .wrap(from_fn(auth::require_key))
            .wrap(Condition::new(!cors_origins.is_empty(), cors::middleware(&cors_origins)))
            .wrap(from_fn(routes::envelope_fallback))
            .wrap(from_fn(move |req, next| host_check::check(hosts.clone(), req, next)))
            .wrap(Compress::default())
            .wrap(from_fn(move |req, next| metrics::track(counts.clone(), req, next)))
            .wrap(actix_web::middleware::Logger::new("%a \"%r\" %s %b %Dms").log_target("trainyard::access"))
            .configure(configure(state.clone()))
            .default_service(web::to(routes::not_found))
    })
    .workers(workers.max(1))
    .shutdown_timeout(10)
    .client_request_timeout(timeouts.request_header)
    .client_disconnect_timeout(timeouts.client_disconnect)
    .keep_alive(if timeouts.keep_alive.is_zero() { KeepAlive::Disabled } else { KeepAlive::Timeout(timeouts.keep_alive) });
    // A zero header timeout turns it off; the handshake then keeps actix's 3 s default.
    let builder = if timeouts.request_header.is_zero() { builder } else { builder.tls_handshake_timeout(timeouts.request_header) };
    let bound = match &tls {
        Some(cert) => {
            let config = cert.server_config().map_err(std::io::Error::other)?;
            let bound = builder.bind_rustls_0_23(addr, config)?;
            cert.watch(tls_reload_every)?;
            bound
        }
        None => builder.bind(addr)?,
    };
    let addrs = bound.addrs();
    Ok((bound.run(), addrs))
}

/// The files of the fuzzing corpus `tests/corpus/{name}`: each file's name without its
/// extension (`ok-*` to accept, `bad-*` to refuse) and its bytes. At least ten, or the corpus
/// went missing.
#[cfg(test)]
pub(crate) fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus").join(name);
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap())
        })
        .collect();
    assert!(files.len() >= 10, "the corpus {name} holds {} files", files.len());
    files
}
