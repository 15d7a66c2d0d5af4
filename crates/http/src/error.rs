//! The error envelope: one table from error code to HTTP status, and one `ResponseError`
//! that writes `{"error": {"code", "message", "details"}, "detail": message}` for every error.

use actix_web::{
    body::BoxBody,
    http::{header, StatusCode},
    HttpResponse, ResponseError,
};
use serde::Serialize;
use trainyard_domain::{
    auth::{retry_secs, AuthError, KeyError},
    catalog::CatalogError,
    charts::{ChartError, ChartQueryErrors},
    failure,
    inference::InferenceError,
    manager::ManagerError,
    ports::StoreError,
    sweeps::SweepError,
    webhooks::{AddressError, WebhookError},
    ConfigErrors, NameError,
};

/// Every error code the API returns. [`ErrorCode::status`] is the one table of statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BadRequest,
    MalformedJson,
    InvalidConfig,
    InvalidName,
    InvalidUpload,
    InvalidDataset,
    InvalidModel,
    UnsupportedModel,
    InsufficientMemory,
    ValidationError,
    ApiKeyMissing,
    ApiKeyInvalid,
    ApiKeyExpired,
    ApiKeyRevoked,
    InsufficientScope,
    TooManyRequests,
    NotFound,
    SessionNotFound,
    ModelNotFound,
    DatasetNotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    PreconditionFailed,
    RangeNotSatisfiable,
    StorageBusy,
    ShuttingDown,
    Internal,
    RequestTimeout,
    HostNotAllowed,
    InvalidWebhook,
    WebhookAddressRefused,
    WebhookNotFound,
}

impl ErrorCode {
    /// The HTTP status for this code.
    #[must_use]
    pub fn status(self) -> StatusCode {
        use ErrorCode as C;
        match self {
            C::BadRequest
            | C::MalformedJson
            | C::InvalidConfig
            | C::InvalidName
            | C::InvalidUpload
            | C::InvalidDataset
            | C::InvalidModel
            | C::UnsupportedModel
            | C::InsufficientMemory
            | C::InvalidWebhook
            | C::WebhookAddressRefused => StatusCode::BAD_REQUEST,
            C::ValidationError => StatusCode::UNPROCESSABLE_ENTITY,
            C::ApiKeyMissing | C::ApiKeyInvalid | C::ApiKeyExpired | C::ApiKeyRevoked => StatusCode::UNAUTHORIZED,
            C::InsufficientScope => StatusCode::FORBIDDEN,
            C::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            C::NotFound | C::SessionNotFound | C::ModelNotFound | C::DatasetNotFound | C::WebhookNotFound => StatusCode::NOT_FOUND,
            C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            C::Conflict => StatusCode::CONFLICT,
            C::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            C::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            C::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            C::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            C::StorageBusy | C::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            C::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            C::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            C::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    /// The code for a status that no handler produced (unknown route, wrong method, ...).
    #[must_use]
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::PRECONDITION_FAILED => Self::PreconditionFailed,
            StatusCode::RANGE_NOT_SATISFIABLE => Self::RangeNotSatisfiable,
            StatusCode::UNAUTHORIZED => Self::ApiKeyInvalid,
            StatusCode::FORBIDDEN => Self::InsufficientScope,
            StatusCode::TOO_MANY_REQUESTS => Self::TooManyRequests,
            StatusCode::UNPROCESSABLE_ENTITY => Self::ValidationError,
            StatusCode::CONFLICT => Self::Conflict,
            StatusCode::SERVICE_UNAVAILABLE => Self::StorageBusy,
            StatusCode::REQUEST_TIMEOUT => Self::RequestTimeout,
            StatusCode::MISDIRECTED_REQUEST => Self::HostNotAllowed,
            s if s.is_server_error() => Self::Internal,
            _ => Self::BadRequest,
        }
    }
}

/// An error on its way to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: serde_json::Value,
    /// Seconds for a `Retry-After` header (429; 503 always sends one).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: ErrorCode,
    message: &'a str,
    details: &'a serde_json::Value,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: ErrorBody<'a>,
    detail: &'a str,
}

impl ApiError {
    /// An error with no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: serde_json::Value::Null, retry_after: None }
    }

    /// Adds a `Retry-After` of `seconds`.
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Adds structured details.
    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// A 500 whose cause is logged but not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(ErrorCode::Internal, "internal server error")
    }

    /// The envelope as JSON bytes.
    #[must_use]
    pub fn body(&self) -> String {
        let env = Envelope { error: ErrorBody { code: self.code, message: &self.message, details: &self.details }, detail: &self.message };
        serde_json::to_string(&env).unwrap_or_else(|_| {
            r#"{"error":{"code":"INTERNAL","message":"internal server error","details":null},"detail":"internal server error"}"#.to_owned()
        })
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CONTENT_TYPE, "application/json"));
        if let Some(seconds) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, seconds.to_string()));
        } else if self.code == ErrorCode::StorageBusy {
            res.insert_header((header::RETRY_AFTER, "1"));
        }
        if self.code.status() == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.body(self.body())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy => Self::new(ErrorCode::StorageBusy, "storage is busy, retry shortly"),
            StoreError::Conflict(m) => Self::new(ErrorCode::Conflict, failure::scrub(&m)),
            StoreError::NotFound(m) => Self::new(ErrorCode::NotFound, format!("{m} not found")),
            other @ (StoreError::Corrupt(_) | StoreError::Io(_)) => Self::internal(&other),
        }
    }
}

impl From<ConfigErrors> for ApiError {
    fn from(e: ConfigErrors) -> Self {
        let details = serde_json::json!({ "fields": e.0 });
        Self::new(ErrorCode::InvalidConfig, e.to_string()).with_details(details)
    }
}

impl From<ChartQueryErrors> for ApiError {
    fn from(e: ChartQueryErrors) -> Self {
        let details = serde_json::json!({ "fields": e.0 });
        Self::new(ErrorCode::BadRequest, e.to_string()).with_details(details)
    }
}

impl From<ChartError> for ApiError {
    fn from(e: ChartError) -> Self {
        match e {
            ChartError::Manager(m) => m.into(),
            ChartError::Render(r) => Self::internal(&r),
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        match e {
            ManagerError::Invalid(c) => c.into(),
            ManagerError::NotFound(id) => Self::new(ErrorCode::SessionNotFound, format!("training session '{id}' not found")),
            ManagerError::Conflict(m) => Self::new(ErrorCode::Conflict, m),
            ManagerError::ShuttingDown => Self::new(ErrorCode::ShuttingDown, e.to_string()),
            ManagerError::InsufficientMemory(m) => Self::new(ErrorCode::InsufficientMemory, m),
            ManagerError::Store(s) => s.into(),
        }
    }
}

impl From<SweepError> for ApiError {
    fn from(e: SweepError) -> Self {
        match e {
            SweepError::Invalid(c) => c.into(),
            SweepError::NotFound(id) => Self::new(ErrorCode::NotFound, format!("sweep '{id}' not found")),
            SweepError::Conflict(m) => Self::new(ErrorCode::Conflict, m),
            SweepError::Manager(m) => m.into(),
            SweepError::Store(s) => s.into(),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound { kind: "model", .. } => Self::new(ErrorCode::ModelNotFound, e.to_string()),
            CatalogError::NotFound { kind: "dataset", .. } => Self::new(ErrorCode::DatasetNotFound, e.to_string()),
            CatalogError::NotFound { .. } => Self::new(ErrorCode::NotFound, e.to_string()),
            CatalogError::Conflict(m) => Self::new(ErrorCode::Conflict, failure::scrub(&m)),
            CatalogError::Invalid(m) => Self::new(ErrorCode::InvalidDataset, adapter_text(&m)),
            CatalogError::InvalidModel(m) => Self::new(ErrorCode::InvalidModel, adapter_text(&m)),
            CatalogError::Store(s) => s.into(),
        }
    }
}

impl From<InferenceError> for ApiError {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::NotFound(_) => Self::new(ErrorCode::ModelNotFound, e.to_string()),
            InferenceError::Invalid(m) => Self::new(ErrorCode::BadRequest, adapter_text(&m)),
            InferenceError::Unsupported(m) => Self::new(ErrorCode::UnsupportedModel, adapter_text(&m)),
            InferenceError::Failed(m) => Self::internal(&m),
            InferenceError::Store(s) => s.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::Missing => ErrorCode::ApiKeyMissing,
            AuthError::Invalid => ErrorCode::ApiKeyInvalid,
            AuthError::Expired => ErrorCode::ApiKeyExpired,
            AuthError::Revoked => ErrorCode::ApiKeyRevoked,
            AuthError::Throttled { retry_after } | AuthError::RateLimited { retry_after } => {
                let seconds = retry_secs(*retry_after);
                return Self::new(ErrorCode::TooManyRequests, e.to_string())
                    .with_details(serde_json::json!({ "retry_after_seconds": seconds }))
                    .with_retry_after(seconds);
            }
            AuthError::InsufficientScope { required, held } => {
                return Self::new(ErrorCode::InsufficientScope, e.to_string())
                    .with_details(serde_json::json!({ "required_scope": required.as_str(), "key_scope": held.as_str() }));
            }
            AuthError::Store(s) => return s.clone().into(),
        };
        Self::new(code, e.to_string())
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::InvalidLabel(_) => {
                Self::new(ErrorCode::BadRequest, e.to_string()).with_details(serde_json::json!({ "field": "label" }))
            }
            KeyError::Store(s) => s.into(),
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        let field = |name: &str| serde_json::json!({ "field": name });
        match e {
            WebhookError::InvalidUrl(_) => Self::new(ErrorCode::InvalidWebhook, e.to_string()).with_details(field("url")),
            WebhookError::Address(AddressError::Unresolvable { .. }) => {
                Self::new(ErrorCode::InvalidWebhook, failure::scrub(&e.to_string())).with_details(field("url"))
            }
            WebhookError::Address(AddressError::Refused { address, class, .. }) => {
                Self::new(ErrorCode::WebhookAddressRefused, e.to_string()).with_details(serde_json::json!({
                    "field": "url",
                    "address": address.to_string(),
                    "address_class": class.as_str(),
                }))
            }
            WebhookError::InvalidEvents(_) => Self::new(ErrorCode::InvalidWebhook, e.to_string()).with_details(field("events")),
            WebhookError::InvalidSecret(_) => Self::new(ErrorCode::InvalidWebhook, e.to_string()).with_details(field("secret")),
            WebhookError::NotFound(_) => Self::new(ErrorCode::WebhookNotFound, e.to_string()),
            WebhookError::TooMany => Self::new(ErrorCode::Conflict, e.to_string()),
            WebhookError::Store(s) => s.into(),
        }
    }
}

impl From<crate::metrics::MetricsError> for ApiError {
    fn from(e: crate::metrics::MetricsError) -> Self {
        match e {
            crate::metrics::MetricsError::Sessions(e) => e.into(),
            crate::metrics::MetricsError::Encode(e) => Self::internal(&e),
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        Self::internal(&e)
    }
}

/// A message an adapter (an inspector, the predictor) wrote, as a client reads it: without
/// server paths or internal error text; the log keeps it whole.
fn adapter_text(message: &str) -> String {
    let public = failure::scrub(message);
    if public != message {
        tracing::warn!(detail = %message, "refusal shown without its server detail");
    }
    public
}

/// A name that failed validation, as a 400 naming the parameter.
pub fn bad_name(what: &str, raw: &str, e: &NameError) -> ApiError {
    let shown = trainyard_domain::failure::shown(raw);
    ApiError::new(ErrorCode::InvalidName, format!("invalid {what} '{shown}': {e}")).with_details(serde_json::json!({ "parameter": what }))
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;
    use quickcheck::quickcheck;

    use super::*;

    const ALL: [ErrorCode; 34] = [
        ErrorCode::InsufficientScope,
        ErrorCode::TooManyRequests,
        ErrorCode::InvalidModel,
        ErrorCode::InsufficientMemory,
        ErrorCode::PreconditionFailed,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::UnsupportedModel,
        ErrorCode::BadRequest,
        ErrorCode::MalformedJson,
        ErrorCode::InvalidConfig,
        ErrorCode::InvalidName,
        ErrorCode::InvalidUpload,
        ErrorCode::InvalidDataset,
        ErrorCode::ValidationError,
        ErrorCode::ApiKeyMissing,
        ErrorCode::ApiKeyInvalid,
        ErrorCode::ApiKeyExpired,
        ErrorCode::ApiKeyRevoked,
        ErrorCode::NotFound,
        ErrorCode::SessionNotFound,
        ErrorCode::ModelNotFound,
        ErrorCode::DatasetNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::StorageBusy,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::RequestTimeout,
        ErrorCode::HostNotAllowed,
        ErrorCode::InvalidWebhook,
        ErrorCode::WebhookAddressRefused,
        ErrorCode::WebhookNotFound,
    ];

    quickcheck! {
        // Property 30: every error, whatever its message, is one JSON envelope whose top-level
        // `detail` equals `error.message`, with a 4xx/5xx status from the one table.
        fn prop30_every_error_is_one_envelope(pick: u8, message: String) -> bool {
            let code = ALL[usize::from(pick) % ALL.len()];
            let res = ApiError::new(code, message.clone()).error_response();
            let status = res.status();
            let bytes = res.into_body().try_into_bytes().unwrap_or_default();
            let v: serde_json::Value = match serde_json::from_slice(&bytes) { Ok(v) => v, Err(_) => return false };
            (status.is_client_error() || status.is_server_error())
                && v["detail"] == serde_json::Value::String(message.clone())
                && v["error"]["message"] == v["detail"]
                && v["error"]["code"].is_string()
                && v["error"].get("details").is_some()
        }
    }
}
