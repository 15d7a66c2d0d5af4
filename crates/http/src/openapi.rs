//! The OpenAPI document, generated from the handlers' annotations, and Swagger UI served from
//! the binary (the UI's files are vendored at build time; nothing is downloaded).

use utoipa::{
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};
use utoipa_swagger_ui::SwaggerUi;

use crate::routes::*;

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
        description = "A self-hosted training-server manager. Every endpoint except `GET /health` and `GET /` needs an API key, \
                       sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`. Every error is \
                       `{\"error\": {\"code\", \"message\", \"details\"}, \"detail\": message}`."
    ),
    paths(
        health, root, system_info,
        start_training, stop_training, session_status, session_metrics, session_history, session_logs,
        list_sessions, list_queue, cancel_queued, list_architectures,
        list_models, upload_model, download_model, delete_model, generate, predict,
        list_datasets, get_dataset, upload_dataset, delete_dataset,
        audit_log,
    ),
    modifiers(&Security),
    security(("bearer" = []), ("api_key" = [])),
    tags(
        (name = "system", description = "health and resource usage"),
        (name = "training", description = "training sessions and the queue"),
        (name = "models", description = "the model registry"),
        (name = "datasets", description = "the dataset registry"),
        (name = "admin", description = "authentication audit log"),
    )
)]
struct ApiDoc;

/// The OpenAPI document as pretty JSON.
#[must_use]
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Swagger UI at `/docs/`, reading `/openapi.json`.
pub(crate) fn swagger_ui() -> SwaggerUi {
    SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi())
}
