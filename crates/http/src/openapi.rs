//! The OpenAPI document, generated from the handlers' annotations, and Swagger UI served from
//! the binary (the UI's files are vendored at build time; nothing is downloaded).

use actix_web::http::Method;
use utoipa::{
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};
use utoipa_swagger_ui::SwaggerUi;

use crate::routes::*;

/// The OpenAPI extension naming the scope an operation needs.
pub const SCOPE_EXTENSION: &str = "x-required-scope";

/// Writes each operation's scope, from the route table, as `x-required-scope` and as a
/// sentence of its description.
struct Scopes;

impl Modify for Scopes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for spec in ROUTES {
            let Access::Key(scope) = spec.access else { continue };
            let Some(item) = openapi.paths.paths.get_mut(spec.path) else { continue };
            let operation = match spec.method {
                Method::GET => item.get.as_mut(),
                Method::POST => item.post.as_mut(),
                Method::DELETE => item.delete.as_mut(),
                Method::PUT => item.put.as_mut(),
                Method::PATCH => item.patch.as_mut(),
                _ => None,
            };
            let Some(op) = operation else { continue };
            op.extensions.get_or_insert_with(Default::default).insert(SCOPE_EXTENSION.to_owned(), scope.as_str().into());
            let sentence = format!("Needs an API key of scope `{scope}` or higher (scopes: read < train < admin).");
            op.description = Some(match op.description.take() {
                Some(d) if !d.trim().is_empty() => format!("{d}\n\n{sentence}"),
                _ => sentence,
            });
        }
    }
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Trainyard",
        description = "A self-hosted training-server manager. Every endpoint except `GET /health` and `GET /` (and `GET /metrics` on a server started with \
                       `--metrics-public`) needs an API key, \
                       sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`, of the scope the operation's `x-required-scope` \
                       names or higher (read < train < admin): a lower one gets a 403 `INSUFFICIENT_SCOPE`. Failed \
                       authentications past the limit, and a key past its request rate, get a 429 `TOO_MANY_REQUESTS` with \
                       `Retry-After`. Every error is \
                       `{\"error\": {\"code\", \"message\", \"details\"}, \"detail\": message}`."
    ),
    paths(
        health, root, system_info, metrics,
        start_training, stop_training, session_status, session_metrics, session_history, session_logs,
        list_sessions, list_queue, cancel_queued, reorder_queued, change_running, snapshot_running, list_architectures,
        all_events, session_events, start_sweep, list_sweeps, get_sweep, stop_sweep,
        session_chart_png, session_chart_svg, compare_png, compare_svg,
        list_models, upload_model, download_model, delete_model, generate, predict,
        list_datasets, get_dataset, upload_dataset, delete_dataset,
        audit_log, create_key, list_keys, revoke_key,
        create_webhook, list_webhooks, delete_webhook, webhook_deliveries, telegram_status,
    ),
    modifiers(&Security, &Scopes),
    security(("bearer" = []), ("api_key" = [])),
    tags(
        (name = "system", description = "health and resource usage"),
        (name = "training", description = "training sessions and the queue"),
        (name = "sweeps", description = "hyperparameter sweeps: trials as ordinary sessions, weak ones pruned, the best registered"),
        (name = "events", description = "live session events (server-sent events)"),
        (name = "charts", description = "training history drawn as PNG or SVG charts"),
        (name = "models", description = "the model registry"),
        (name = "datasets", description = "the dataset registry"),
        (name = "admin", description = "the authentication audit log and API keys"),
        (name = "webhooks", description = "signed POSTs of session events to URLs, and Telegram messages, retried until delivered"),
    )
)]
struct ApiDoc;

/// The OpenAPI document as pretty JSON.
#[must_use]
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Where the OpenAPI document is served.
pub(crate) const OPENAPI_PATH: &str = "/openapi.json";
/// The route pattern of Swagger UI's files, under `/docs/`.
pub(crate) const SWAGGER_PATTERN: &str = "/docs/{_:.*}";

/// Swagger UI at `/docs/`, reading `/openapi.json`.
pub(crate) fn swagger_ui() -> SwaggerUi {
    SwaggerUi::new(SWAGGER_PATTERN).url(OPENAPI_PATH, ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the document, as (method, path, x-required-scope).
    fn operations() -> Vec<(Method, String, Option<String>)> {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                out.push((method, path.clone(), op.get(SCOPE_EXTENSION).and_then(|s| s.as_str()).map(str::to_owned)));
            }
        }
        out
    }

    #[test]
    fn every_documented_operation_is_a_route_with_its_scope_and_every_keyed_route_is_documented() {
        let ops = operations();
        for (method, path, scope) in &ops {
            let spec = ROUTES.iter().find(|r| r.method == method && r.path == path);
            let spec = spec.unwrap_or_else(|| panic!("{method} {path} is documented but not in the route table"));
            let expected = match spec.access {
                Access::Key(s) => Some(s.as_str().to_owned()),
                Access::Public => None,
            };
            assert_eq!(scope, &expected, "{method} {path}");
        }
        for spec in ROUTES.iter().filter(|r| r.access != Access::Public) {
            assert!(ops.iter().any(|(m, p, _)| *m == spec.method && p == spec.path), "{} {} is not documented", spec.method, spec.path);
        }
        let doc = openapi_json();
        assert!(doc.contains("Needs an API key of scope `admin` or higher"));
    }
}
