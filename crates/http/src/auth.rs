//! API-key middleware: every route but `GET /health`, `GET /`, `GET /redoc`, the API docs and,
//! on a server started with `--metrics-public`, `GET /metrics` needs a key, sent as
//! `Authorization: Bearer KEY` or `X-API-Key: KEY`, whose scope is at least the one
//! [`ROUTES`](crate::routes::ROUTES) gives the route. Failed attempts are throttled per client
//! address and per key, every attempt is audited with the client's effective address (see
//! [`TrustedProxies`](crate::TrustedProxies)), and every refusal is counted in the metrics by
//! the outcome the audit log records.

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{header, Method},
    middleware::Next,
    web, Error,
};
use trainyard_domain::auth::{AttemptContext, AuthError};

use crate::{
    error::ApiError,
    routes::{access_for, Access, METRICS_PATH},
    AppState,
};

/// Whether a path is one of the API docs' (served by Swagger UI, outside the route table).
fn is_docs(method: &Method, path: &str) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    read && (matches!(path, "/openapi.json" | "/docs") || path.starts_with("/docs/"))
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

/// The access `req` needs: the route table's, except that `GET /metrics` is public when
/// `metrics_public`. Its route is found on the same decoded path the router matches, so a
/// differently encoded path cannot reach a route under another route's access.
fn required_access(req: &ServiceRequest, metrics_public: bool) -> Access {
    if is_docs(req.method(), req.path()) {
        return Access::Public;
    }
    let pattern = req.resource_map().match_pattern(req.match_info().as_str());
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    if metrics_public && read && pattern.as_deref() == Some(METRICS_PATH) {
        return Access::Public;
    }
    access_for(req.method(), pattern.as_deref())
}

pub(crate) async fn require_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let metrics_public = state.as_ref().is_some_and(|s| s.metrics.is_public());
    let Access::Key(required) = required_access(&req, metrics_public) else {
        return next.call(req).await;
    };
    let Some(state) = state else {
        return Err(ApiError::internal(&"application state missing").into());
    };
    let key = presented_key(&req);
    let forwarded = req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok());
    let ctx = AttemptContext {
        method: req.method().to_string(),
        endpoint: req.path().chars().take(512).collect(),
        client_addr: req.peer_addr().map(|a| state.proxies.client_addr(a.ip(), forwarded)),
        required,
    };
    let auth = state.authenticator.clone();
    let attempt = web::block(move || auth.authenticate(key.as_deref(), &ctx)).await.map_err(ApiError::from)?;
    if let Some(outcome) = attempt.as_ref().err().and_then(AuthError::outcome) {
        state.metrics.auth_failure(outcome);
    }
    attempt.map_err(ApiError::from)?;
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use actix_web::{test as actix_test, App};
    use trainyard_domain::auth::Scope;

    use super::*;
    use crate::routes::{register, ROUTES};

    #[test]
    fn only_docs_are_public_outside_the_route_table() {
        assert!(is_docs(&Method::GET, "/docs/index.html") && is_docs(&Method::HEAD, "/openapi.json"));
        assert!(!is_docs(&Method::POST, "/openapi.json"));
        assert!(!is_docs(&Method::GET, "/docsx"));
        assert_eq!(access_for(&Method::GET, Some("/health")), Access::Public);
        assert_eq!(access_for(&Method::HEAD, Some("/")), Access::Public);
        assert_eq!(access_for(&Method::POST, Some("/health")), Access::Key(Scope::Read), "a wrong method needs a key");
        assert_eq!(access_for(&Method::GET, None), Access::Key(Scope::Read), "an unknown route needs a key");
        assert_eq!(access_for(&Method::DELETE, Some("/api/v1/models/{name}")), Access::Key(Scope::Admin));
    }

    /// What access the middleware computes for requests, through a real router built from
    /// the route table (handlers are not called: the probe answers first); `/metrics` is public
    /// when the header `x-metrics-public` is sent, standing in for the server's setting.
    #[actix_web::test]
    async fn encoded_paths_get_the_access_of_the_route_they_reach() {
        let app = actix_test::init_service(App::new().configure(register).wrap(actix_web::middleware::from_fn(
            |req: ServiceRequest, _next: Next<actix_web::body::BoxBody>| async move {
                let metrics_public = req.headers().contains_key("x-metrics-public");
                let access = format!("{:?}", required_access(&req, metrics_public));
                Ok::<_, Error>(req.into_response(actix_web::HttpResponse::Ok().body(access)))
            },
        )))
        .await;
        let probe_with = |method: Method, path: &'static str, metrics_public: bool| {
            let app = &app;
            async move {
                let mut req = actix_test::TestRequest::default().method(method).uri(path);
                if metrics_public {
                    req = req.insert_header(("x-metrics-public", "1"));
                }
                let res = actix_test::call_service(app, req.to_request()).await;
                String::from_utf8(actix_test::read_body(res).await.to_vec()).unwrap()
            }
        };
        let probe = |method: Method, path: &'static str| probe_with(method, path, false);
        assert_eq!(probe(Method::GET, "/metrics").await, "Key(Read)");
        assert_eq!(probe_with(Method::GET, "/metrics", true).await, "Public");
        assert_eq!(probe_with(Method::HEAD, "/%6Detrics", true).await, "Public");
        assert_eq!(probe_with(Method::POST, "/metrics", true).await, "Key(Read)", "only reading the metrics is public");
        assert_eq!(probe_with(Method::GET, "/health/metrics", true).await, "Key(Read)");
        assert_eq!(probe_with(Method::GET, "/api/v1/models", true).await, "Key(Read)");
        assert_eq!(probe(Method::GET, "/docs").await, "Public");
        assert_eq!(probe(Method::GET, "/api/v1/%61dmin/audit").await, "Key(Admin)");
        assert_eq!(probe(Method::GET, "/api/v1/admin/%6Beys").await, "Key(Admin)");
        assert_eq!(probe(Method::DELETE, "/api/v1/models/%78").await, "Key(Admin)");
        assert_eq!(probe(Method::POST, "/api/v1/training/start?x=1").await, "Key(Train)");
        assert_eq!(probe(Method::GET, "/api/v1/models/a%2Fb").await, "Key(Read)");
        assert_eq!(probe(Method::GET, "/health").await, "Public");
        assert_eq!(probe(Method::GET, "/docs/").await, "Public");
        for spec in ROUTES {
            let path = spec.path.replace("{session_id}", "sess_1").replace("{name}", "m").replace("{id}", "key_00000000");
            let path: &'static str = Box::leak(path.into_boxed_str());
            assert_eq!(probe(spec.method.clone(), path).await, format!("{:?}", spec.access), "{} {}", spec.method, spec.path);
        }
    }
}
