//! Route registration, the fallback that wraps framework errors in the envelope, and
//! extractor error handlers.

mod admin;
mod catalog;
mod charts;
mod predict;
mod sweeps;
mod system;
mod training;
mod webhooks;

use actix_web::{
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    error::{JsonPayloadError, PathError, QueryPayloadError},
    http::{header, Method},
    middleware::Next,
    web, Error, HttpRequest, HttpResponse, Route,
};
use trainyard_domain::auth::Scope;

use crate::error::{ApiError, ErrorCode};

pub(crate) use self::{admin::*, catalog::*, charts::*, predict::*, sweeps::*, system::*, training::*, webhooks::*};
pub(crate) use crate::events::{__path_all_events, __path_session_events, all_events, session_events};

/// Runs blocking work (SQLite, files) on the blocking pool and converts its error.
pub(crate) async fn blocking<T, E, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    web::block(f).await?.map_err(Into::into)
}

/// Who may call a route: anyone, or a key of at least a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Public,
    Key(Scope),
}

/// One route: its method, its path pattern, who may call it, and its handler.
pub(crate) struct RouteSpec {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) access: Access,
    handler: fn(Route) -> Route,
}

const fn route(method: Method, path: &'static str, access: Access, handler: fn(Route) -> Route) -> RouteSpec {
    RouteSpec { method, path, access, handler }
}

/// The API explorer without its trailing slash: a redirect to `/docs/`.
pub(crate) const DOCS_PATH: &str = "/docs";
/// The Prometheus metrics; public with `--metrics-public`.
pub(crate) const METRICS_PATH: &str = "/metrics";

const READ: Access = Access::Key(Scope::Read);
const TRAIN: Access = Access::Key(Scope::Train);
const ADMIN: Access = Access::Key(Scope::Admin);

/// Every route, the one list the router ([`register`]), the auth middleware ([`access_for`])
/// and the OpenAPI document's `x-required-scope` read: a route exists only with its access.
/// `read`: every `GET` outside `/api/v1/admin` and `/api/v1/webhooks` (`/metrics` too, unless
/// the server runs with `--metrics-public`: see [`crate::auth`]); `train`: sessions, dataset
/// uploads, prediction and generation; `admin`: model uploads, deletions, keys, the audit log
/// and webhooks (whose URLs may hold credentials).
pub(crate) static ROUTES: &[RouteSpec] = &[
    route(Method::GET, "/health", Access::Public, |r| r.to(health)),
    route(Method::GET, "/", Access::Public, |r| r.to(root)),
    route(Method::GET, "/redoc", Access::Public, |r| r.to(redoc)),
    route(Method::GET, DOCS_PATH, Access::Public, |r| r.to(docs)),
    route(Method::GET, METRICS_PATH, READ, |r| r.to(metrics)),
    route(Method::POST, "/api/v1/training/start", TRAIN, |r| r.to(start_training)),
    route(Method::GET, "/api/v1/training/sessions", READ, |r| r.to(list_sessions)),
    route(Method::POST, "/api/v1/sweeps", TRAIN, |r| r.to(start_sweep)),
    route(Method::GET, "/api/v1/sweeps", READ, |r| r.to(list_sweeps)),
    route(Method::GET, "/api/v1/sweeps/{sweep_id}", READ, |r| r.to(get_sweep)),
    route(Method::POST, "/api/v1/sweeps/{sweep_id}/stop", TRAIN, |r| r.to(stop_sweep)),
    route(Method::GET, "/api/v1/training/queue", READ, |r| r.to(list_queue)),
    route(Method::DELETE, "/api/v1/training/queue/{session_id}", TRAIN, |r| r.to(cancel_queued)),
    route(Method::PATCH, "/api/v1/training/queue/{session_id}", TRAIN, |r| r.to(reorder_queued)),
    route(Method::POST, "/api/v1/training/{session_id}/stop", TRAIN, |r| r.to(stop_training)),
    route(Method::PATCH, "/api/v1/training/{session_id}", TRAIN, |r| r.to(change_running)),
    route(Method::POST, "/api/v1/training/{session_id}/checkpoint", TRAIN, |r| r.to(snapshot_running)),
    route(Method::GET, "/api/v1/training/{session_id}/status", READ, |r| r.to(session_status)),
    route(Method::GET, "/api/v1/training/{session_id}/metrics", READ, |r| r.to(session_metrics)),
    route(Method::GET, "/api/v1/training/{session_id}/history", READ, |r| r.to(session_history)),
    route(Method::GET, "/api/v1/training/{session_id}/logs", READ, |r| r.to(session_logs)),
    route(Method::GET, "/api/v1/training/{session_id}/events", READ, |r| r.to(session_events)),
    route(Method::GET, "/api/v1/training/{session_id}/chart.png", READ, |r| r.to(session_chart_png)),
    route(Method::GET, "/api/v1/training/{session_id}/chart.svg", READ, |r| r.to(session_chart_svg)),
    route(Method::GET, "/api/v1/charts/compare.png", READ, |r| r.to(compare_png)),
    route(Method::GET, "/api/v1/charts/compare.svg", READ, |r| r.to(compare_svg)),
    route(Method::GET, "/api/v1/events", READ, |r| r.to(all_events)),
    route(Method::GET, "/api/v1/architectures", READ, |r| r.to(list_architectures)),
    route(Method::GET, "/api/v1/system/info", READ, |r| r.to(system_info)),
    route(Method::GET, "/api/v1/models", READ, |r| r.to(list_models)),
    route(Method::POST, "/api/v1/models", ADMIN, |r| r.to(upload_model)),
    route(Method::GET, "/api/v1/models/{name}", READ, |r| r.to(download_model)),
    route(Method::DELETE, "/api/v1/models/{name}", ADMIN, |r| r.to(delete_model)),
    route(Method::POST, "/api/v1/models/{name}/generate", TRAIN, |r| r.to(generate)),
    route(Method::POST, "/api/v1/models/{name}/predict", TRAIN, |r| r.to(predict)),
    route(Method::GET, "/api/v1/datasets", READ, |r| r.to(list_datasets)),
    route(Method::POST, "/api/v1/datasets", TRAIN, |r| r.to(upload_dataset)),
    route(Method::GET, "/api/v1/datasets/{name}", READ, |r| r.to(get_dataset)),
    route(Method::DELETE, "/api/v1/datasets/{name}", ADMIN, |r| r.to(delete_dataset)),
    route(Method::GET, "/api/v1/admin/audit", ADMIN, |r| r.to(audit_log)),
    route(Method::GET, "/api/v1/admin/keys", ADMIN, |r| r.to(list_keys)),
    route(Method::POST, "/api/v1/admin/keys", ADMIN, |r| r.to(create_key)),
    route(Method::DELETE, "/api/v1/admin/keys/{id}", ADMIN, |r| r.to(revoke_key)),
    route(Method::GET, "/api/v1/webhooks", ADMIN, |r| r.to(list_webhooks)),
    route(Method::POST, "/api/v1/webhooks", ADMIN, |r| r.to(create_webhook)),
    route(Method::DELETE, "/api/v1/webhooks/{id}", ADMIN, |r| r.to(delete_webhook)),
    route(Method::GET, "/api/v1/webhooks/{id}/deliveries", ADMIN, |r| r.to(webhook_deliveries)),
    route(Method::GET, "/api/v1/telegram", ADMIN, |r| r.to(telegram_status)),
];

/// Registers every route of [`ROUTES`] and the API docs. Each path is one resource, so a
/// wrong method gets a 405.
pub(crate) fn register(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::openapi::swagger_ui());
    let mut paths: Vec<&str> = Vec::new();
    for spec in ROUTES {
        if paths.contains(&spec.path) {
            continue;
        }
        paths.push(spec.path);
        let resource = ROUTES
            .iter()
            .filter(|r| r.path == spec.path)
            .fold(web::resource(spec.path), |resource, r| resource.route((r.handler)(web::method(r.method.clone()))));
        cfg.service(resource);
    }
}

/// The access a request needs, from its method and the route pattern its path matches.
/// `HEAD` is a `GET`. A path no route matches (a 404), or a method its route lacks (a 405),
/// needs a key of any scope, so that nothing is learnt about routes without one.
pub(crate) fn access_for(method: &Method, pattern: Option<&str>) -> Access {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    pattern.and_then(|p| ROUTES.iter().find(|r| r.path == p && r.method == method)).map_or(READ, |r| r.access)
}

/// The default service: an unknown route.
pub(crate) async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ErrorCode::NotFound, format!("no route for {} {}", req.method(), req.path())))
}

/// Wraps any error response that is not already JSON (405 from a resource, 413 and 400 from
/// framework extractors, ...) in the envelope, keeping its status.
pub(crate) async fn envelope_fallback(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let method = req.method().clone();
    let path = req.path().to_owned();
    let res = next.call(req).await?;
    let status = res.status();
    let is_json = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return Ok(res.map_into_left_body());
    }
    let code = ErrorCode::for_status(status);
    let message = match status.as_u16() {
        404 => format!("no route for {method} {path}"),
        405 => format!("method {method} is not allowed on {path}"),
        413 => "request body too large".to_owned(),
        _ => status.canonical_reason().unwrap_or("request failed").to_owned(),
    };
    let err = ApiError::new(code, message);
    let (req, old) = res.into_parts();
    let mut new = HttpResponse::build(status);
    new.insert_header((header::CONTENT_TYPE, "application/json"));
    if let Some(allow) = old.headers().get(header::ALLOW) {
        new.insert_header((header::ALLOW, allow.clone()));
    }
    Ok(ServiceResponse::new(req, new.body(err.body())).map_into_right_body())
}

pub(crate) fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> Error {
    let api = match &err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::new(ErrorCode::PayloadTooLarge, format!("JSON body larger than {} bytes", crate::JSON_LIMIT_BYTES))
        }
        JsonPayloadError::ContentType => {
            ApiError::new(ErrorCode::UnsupportedMediaType, "expected a JSON body with Content-Type: application/json")
        }
        JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::new(ErrorCode::ValidationError, format!("invalid request body: {e}")),
        JsonPayloadError::Deserialize(e) => ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}")),
        other => ApiError::new(ErrorCode::BadRequest, format!("could not read the request body: {other}")),
    };
    api.into()
}

pub(crate) fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> Error {
    ApiError::new(ErrorCode::BadRequest, format!("invalid query string: {err}")).into()
}

pub(crate) fn path_error(err: PathError, _req: &HttpRequest) -> Error {
    ApiError::new(ErrorCode::BadRequest, format!("invalid path: {err}")).into()
}
