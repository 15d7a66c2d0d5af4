//! Route registration, the fallback that wraps framework errors in the envelope, and
//! extractor error handlers.

mod admin;
mod catalog;
mod predict;
mod system;
mod training;

use actix_web::{
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    error::{JsonPayloadError, PathError, QueryPayloadError},
    http::header,
    middleware::Next,
    web, Error, HttpRequest, HttpResponse,
};

use crate::error::{ApiError, ErrorCode};

pub(crate) use self::{admin::*, catalog::*, predict::*, system::*, training::*};

/// Runs blocking work (SQLite, files) on the blocking pool and converts its error.
pub(crate) async fn blocking<T, E, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    web::block(f).await?.map_err(Into::into)
}

/// Registers every route. Each path is one resource, so a wrong method gets a 405.
pub(crate) fn register(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/health").route(web::get().to(health)))
        .service(web::resource("/").route(web::get().to(root)))
        .service(web::resource("/redoc").route(web::get().to(redoc)))
        .service(crate::openapi::swagger_ui())
        .service(web::resource("/api/v1/training/start").route(web::post().to(start_training)))
        .service(web::resource("/api/v1/training/sessions").route(web::get().to(list_sessions)))
        .service(web::resource("/api/v1/training/queue").route(web::get().to(list_queue)))
        .service(web::resource("/api/v1/training/queue/{session_id}").route(web::delete().to(cancel_queued)))
        .service(web::resource("/api/v1/training/{session_id}/stop").route(web::post().to(stop_training)))
        .service(web::resource("/api/v1/training/{session_id}/status").route(web::get().to(session_status)))
        .service(web::resource("/api/v1/training/{session_id}/metrics").route(web::get().to(session_metrics)))
        .service(web::resource("/api/v1/training/{session_id}/history").route(web::get().to(session_history)))
        .service(web::resource("/api/v1/training/{session_id}/logs").route(web::get().to(session_logs)))
        .service(web::resource("/api/v1/architectures").route(web::get().to(list_architectures)))
        .service(web::resource("/api/v1/system/info").route(web::get().to(system_info)))
        .service(web::resource("/api/v1/models").route(web::get().to(list_models)).route(web::post().to(upload_model)))
        .service(web::resource("/api/v1/models/{name}").route(web::get().to(download_model)).route(web::delete().to(delete_model)))
        .service(web::resource("/api/v1/models/{name}/generate").route(web::post().to(generate)))
        .service(web::resource("/api/v1/models/{name}/predict").route(web::post().to(predict)))
        .service(web::resource("/api/v1/datasets").route(web::get().to(list_datasets)).route(web::post().to(upload_dataset)))
        .service(web::resource("/api/v1/datasets/{name}").route(web::get().to(get_dataset)).route(web::delete().to(delete_dataset)))
        .service(web::resource("/api/v1/admin/audit").route(web::get().to(audit_log)));
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
