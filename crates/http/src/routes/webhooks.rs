//! Webhooks: create (the secret is in that answer only), list, delete, and each webhook's
//! delivery log; and the Telegram notifications' state and message log. Every route needs an
//! `admin` key: webhook URLs often carry credentials of their own (chat and automation
//! services put a token in the path), and chat ids are private.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::blocking;
use crate::{
    dto::webhooks::{CreateWebhook, CreatedWebhook, DeliveryInfo, TelegramInfo, WebhookInfo},
    error::{ApiError, ErrorCode},
    AppState,
};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct DeliveriesQuery {
    /// How many deliveries, newest first (1 to 1000, default 50).
    limit: Option<u32>,
}

impl DeliveriesQuery {
    fn limit(&self) -> Result<u32, ApiError> {
        let limit = self.limit.unwrap_or(50);
        if (1..=1000).contains(&limit) {
            Ok(limit)
        } else {
            Err(ApiError::new(ErrorCode::BadRequest, format!("limit must be between 1 and 1000, got {limit}"))
                .with_details(serde_json::json!({ "parameter": "limit" })))
        }
    }
}

/// Creates a webhook. Each event of the kinds it names is POSTed to its URL as
/// `{"id", "event", "created_at", "data"}` with the headers `X-Trainyard-Event`,
/// `X-Trainyard-Delivery` and `X-Trainyard-Signature: sha256=<hex HMAC-SHA256 of the body with
/// the secret>`, and retried for about 10 minutes until the receiver answers 2xx. The secret is
/// in this answer only.
#[utoipa::path(
    post, path = "/api/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses(
        (status = 201, body = CreatedWebhook),
        (status = 400, description = "an invalid URL, event kind or secret (`INVALID_WEBHOOK`), or a host that resolves to a loopback, private, link-local or metadata address (`WEBHOOK_ADDRESS_REFUSED`)"),
        (status = 409, description = "the server keeps at most 100 webhooks"),
        (status = 422, description = "wrong JSON shape")
    )
)]
pub(crate) async fn create_webhook(state: web::Data<AppState>, body: web::Json<CreateWebhook>) -> Result<HttpResponse, ApiError> {
    let webhooks = state.webhooks.clone();
    let created = blocking(move || webhooks.create(body.into_inner().into())).await?;
    tracing::info!(webhook = %created.id, url = %created.url, events = ?created.events.names(), "webhook created");
    Ok(HttpResponse::Created().json(CreatedWebhook::from(&created)))
}

/// Every webhook, oldest first, without secrets.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", responses((status = 200, body = [WebhookInfo])))]
pub(crate) async fn list_webhooks(state: web::Data<AppState>) -> Result<web::Json<Vec<WebhookInfo>>, ApiError> {
    let webhooks = state.webhooks.clone();
    let all = blocking(move || webhooks.list()).await?;
    Ok(web::Json(all.iter().map(WebhookInfo::from).collect()))
}

/// Deletes a webhook; its deliveries, pending ones included, go with it. Answers the deleted
/// webhook.
#[utoipa::path(
    delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "the webhook's id (`wh_...`)")),
    responses((status = 200, body = WebhookInfo), (status = 404, description = "no such webhook (`WEBHOOK_NOT_FOUND`)"))
)]
pub(crate) async fn delete_webhook(state: web::Data<AppState>, path: web::Path<String>) -> Result<web::Json<WebhookInfo>, ApiError> {
    let id = path.into_inner();
    let webhooks = state.webhooks.clone();
    let deleted = blocking(move || webhooks.delete(&id)).await?;
    tracing::info!(webhook = %deleted.id, url = %deleted.url, "webhook deleted");
    Ok(web::Json(WebhookInfo::from(&deleted)))
}

/// A webhook's deliveries, newest first: the event, the attempts made, the last answer's
/// status or why there was none, and when the next attempt is due.
#[utoipa::path(
    get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "the webhook's id (`wh_...`)"), DeliveriesQuery),
    responses((status = 200, body = [DeliveryInfo]), (status = 400, description = "limit out of range"), (status = 404, description = "no such webhook (`WEBHOOK_NOT_FOUND`)"))
)]
pub(crate) async fn webhook_deliveries(
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<DeliveriesQuery>,
) -> Result<web::Json<Vec<DeliveryInfo>>, ApiError> {
    let limit = q.limit()?;
    let id = path.into_inner();
    let webhooks = state.webhooks.clone();
    let deliveries = blocking(move || webhooks.deliveries(&id, limit)).await?;
    Ok(web::Json(deliveries.iter().map(|d| DeliveryInfo::from(&d.record)).collect()))
}

/// Telegram notifications: whether they are on, the Bot API URL, the chats and the progress
/// interval (never the token), and the newest messages with their attempts, newest first.
#[utoipa::path(
    get, path = "/api/v1/telegram", tag = "webhooks", params(DeliveriesQuery),
    responses((status = 200, body = TelegramInfo), (status = 400, description = "limit out of range"))
)]
pub(crate) async fn telegram_status(
    state: web::Data<AppState>,
    q: web::Query<DeliveriesQuery>,
) -> Result<web::Json<TelegramInfo>, ApiError> {
    let limit = q.limit()?;
    let telegram = state.telegram.clone();
    let deliveries = blocking(move || telegram.deliveries(limit)).await?;
    Ok(web::Json(TelegramInfo::new(state.telegram.settings(), &deliveries)))
}
