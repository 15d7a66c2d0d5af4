//! API-key middleware: every route but `GET /health`, `GET /` and the API docs needs a key,
//! sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`. Every attempt is audited.

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{header, Method},
    middleware::Next,
    web, Error,
};
use trainyard_domain::auth::AttemptContext;

use crate::{error::ApiError, AppState};

/// Whether a route is open without a key.
fn is_public(method: &Method, path: &str) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    read && (matches!(path, "/" | "/health" | "/openapi.json" | "/redoc" | "/docs") || path.starts_with("/docs/"))
}

/// The presented key: Bearer first, then `X-API-Key`.
fn presented_key(req: &ServiceRequest) -> Option<String> {
    let headers = req.headers();
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_owned())
    });
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned()))
}

pub(crate) async fn require_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if is_public(req.method(), req.path()) {
        return next.call(req).await;
    }
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Err(ApiError::internal(&"application state missing").into());
    };
    let key = presented_key(&req);
    let ctx = AttemptContext {
        method: req.method().to_string(),
        endpoint: req.path().chars().take(512).collect(),
        client_addr: req.peer_addr().map(|a| a.ip().to_string()),
    };
    let auth = state.authenticator.clone();
    web::block(move || auth.authenticate(key.as_deref(), &ctx)).await.map_err(ApiError::from)?.map_err(ApiError::from)?;
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_root_and_docs_are_public() {
        assert!(is_public(&Method::GET, "/health"));
        assert!(is_public(&Method::GET, "/"));
        assert!(is_public(&Method::GET, "/docs/index.html"));
        assert!(!is_public(&Method::POST, "/health"));
        assert!(!is_public(&Method::GET, "/api/v1/models"));
        assert!(!is_public(&Method::GET, "/docsx"));
    }
}
