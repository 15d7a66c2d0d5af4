//! Training sessions: start, stop, status, metrics, history, logs, listings and the queue.

use actix_web::web;
use serde::Deserialize;
use trainyard_domain::{
    charts::Metric,
    config::{Architecture, LossFunction, Optimizer, TrainingConfig},
    registry::DatasetFormat,
    selection::Keep,
    SessionId, TrainingRequest,
};

use super::blocking;
use crate::{
    dto::{
        ArchitectureDto, LiveChange, LogLine, Message, Metrics, Model, Reorder, SessionStatus, SessionSummary, StartTraining, Started,
        TakeSnapshot,
    },
    error::{ApiError, ErrorCode},
    AppState,
};

/// Most log lines one request may ask for.
const MAX_LOG_LIMIT: u32 = 10_000;

pub(crate) fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw).map_err(|_| {
        let shown = trainyard_domain::failure::shown(raw);
        ApiError::new(ErrorCode::SessionNotFound, format!("training session '{shown}' not found"))
    })
}

/// Starts a session, or queues it when the server is at capacity.
#[utoipa::path(
    post, path = "/api/v1/training/start", tag = "training", request_body = StartTraining,
    responses(
        (status = 200, body = Started),
        (status = 400, description = "invalid configuration; every failing field is listed in `error.details.fields`"),
        (status = 422, description = "wrong JSON types or unknown fields"),
    )
)]
pub(crate) async fn start_training(state: web::Data<AppState>, body: web::Json<StartTraining>) -> Result<web::Json<Started>, ApiError> {
    let req: TrainingRequest = body.into_inner().into();
    let manager = state.manager.clone();
    let started = blocking(move || manager.start(&req)).await?;
    Ok(web::Json(Started::of(&started.view, started.message)))
}

/// Stops a running session (its current weights are saved) or cancels a queued one.
#[utoipa::path(
    post, path = "/api/v1/training/{session_id}/stop", tag = "training",
    responses((status = 200, body = Message), (status = 404), (status = 409, description = "the session has already ended"))
)]
pub(crate) async fn stop_training(state: web::Data<AppState>, path: web::Path<String>) -> Result<web::Json<Message>, ApiError> {
    let id = session_id(&path)?;
    let manager = state.manager.clone();
    let message = blocking(move || manager.stop(&id)).await?;
    Ok(web::Json(Message { message }))
}

/// Longest long-poll a status request may ask for.
pub(crate) const MAX_WAIT_SECONDS: u64 = 300;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct StatusQuery {
    /// Long-poll: when the session has not ended yet, wait up to this many seconds (at most
    /// 300) for it to end (or to reach `min_epoch`) before answering.
    wait_seconds: Option<u64>,
    /// With `wait_seconds`: also answer as soon as this epoch has finished.
    min_epoch: Option<u32>,
}

/// A session's state and progress.
#[utoipa::path(
    get, path = "/api/v1/training/{session_id}/status", tag = "training", params(StatusQuery),
    responses((status = 200, body = SessionStatus), (status = 404))
)]
pub(crate) async fn session_status(
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<StatusQuery>,
) -> Result<web::Json<SessionStatus>, ApiError> {
    let id = session_id(&path)?;
    let manager = state.manager.clone();
    let view = match q.wait_seconds {
        None | Some(0) => blocking(move || manager.view(&id)).await?,
        Some(secs) if secs <= MAX_WAIT_SECONDS => {
            let min_epoch = q.min_epoch;
            blocking(move || manager.wait_for(&id, std::time::Duration::from_secs(secs), min_epoch)).await?
        }
        Some(secs) => return Err(wait_too_long(secs)),
    };
    Ok(web::Json((&view).into()))
}

/// The refusal of a long-poll longer than [`MAX_WAIT_SECONDS`].
pub(crate) fn wait_too_long(secs: u64) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, format!("wait_seconds must be at most {MAX_WAIT_SECONDS}, got {secs}"))
}

/// The latest epoch's metrics (epoch 0 with null values before the first epoch ends).
#[utoipa::path(get, path = "/api/v1/training/{session_id}/metrics", tag = "training", responses((status = 200, body = Metrics), (status = 404)))]
pub(crate) async fn session_metrics(state: web::Data<AppState>, path: web::Path<String>) -> Result<web::Json<Metrics>, ApiError> {
    let id = session_id(&path)?;
    let manager = state.manager.clone();
    let lookup = id.clone();
    let latest = blocking(move || manager.latest_metrics(&lookup)).await?;
    Ok(web::Json(latest.map_or_else(|| Metrics::none_yet(&id), |m| Metrics::of(&id, &m))))
}

/// Every epoch's metrics, oldest first.
#[utoipa::path(get, path = "/api/v1/training/{session_id}/history", tag = "training", responses((status = 200, body = [Metrics]), (status = 404)))]
pub(crate) async fn session_history(state: web::Data<AppState>, path: web::Path<String>) -> Result<web::Json<Vec<Metrics>>, ApiError> {
    let id = session_id(&path)?;
    let manager = state.manager.clone();
    let lookup = id.clone();
    let history = blocking(move || manager.history(&lookup)).await?;
    Ok(web::Json(history.iter().map(|m| Metrics::of(&id, m)).collect()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct LogsQuery {
    /// How many of the newest lines (1 to 10000, default 100), oldest first.
    limit: Option<u32>,
}

/// The newest log lines of a session, oldest first.
#[utoipa::path(get, path = "/api/v1/training/{session_id}/logs", tag = "training", params(LogsQuery), responses((status = 200, body = [LogLine]), (status = 404)))]
pub(crate) async fn session_logs(
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<LogsQuery>,
) -> Result<web::Json<Vec<LogLine>>, ApiError> {
    let id = session_id(&path)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LOG_LIMIT).contains(&limit) {
        return Err(ApiError::new(ErrorCode::BadRequest, format!("limit must be between 1 and {MAX_LOG_LIMIT}, got {limit}")));
    }
    let manager = state.manager.clone();
    let lines = blocking(move || manager.logs(&id, limit)).await?;
    Ok(web::Json(lines.iter().map(LogLine::from).collect()))
}

/// Every session, oldest first.
#[utoipa::path(get, path = "/api/v1/training/sessions", tag = "training", responses((status = 200, body = [SessionSummary])))]
pub(crate) async fn list_sessions(state: web::Data<AppState>) -> Result<web::Json<Vec<SessionSummary>>, ApiError> {
    let manager = state.manager.clone();
    let views = blocking(move || manager.list()).await?;
    Ok(web::Json(views.iter().map(SessionSummary::from).collect()))
}

/// Queued sessions in the order they will start.
#[utoipa::path(get, path = "/api/v1/training/queue", tag = "training", responses((status = 200, body = [SessionSummary])))]
pub(crate) async fn list_queue(state: web::Data<AppState>) -> Result<web::Json<Vec<SessionSummary>>, ApiError> {
    let manager = state.manager.clone();
    let views = blocking(move || manager.queue()).await?;
    Ok(web::Json(views.iter().map(SessionSummary::from).collect()))
}

/// Removes a queued session from the queue (it ends `stopped`).
#[utoipa::path(
    delete, path = "/api/v1/training/queue/{session_id}", tag = "training",
    responses((status = 200, body = Message), (status = 404), (status = 409, description = "the session is not queued"))
)]
pub(crate) async fn cancel_queued(state: web::Data<AppState>, path: web::Path<String>) -> Result<web::Json<Message>, ApiError> {
    let id = session_id(&path)?;
    let manager = state.manager.clone();
    let message = blocking(move || manager.cancel(&id)).await?;
    Ok(web::Json(Message { message }))
}

/// Moves a queued session in the queue: `{"priority": N}` (-1000 to 1000; higher starts first,
/// first in first out within a priority). Answers the session with its new queue position.
#[utoipa::path(
    patch, path = "/api/v1/training/queue/{session_id}", tag = "training", request_body = Reorder,
    responses(
        (status = 200, body = SessionStatus),
        (status = 400, description = "a priority out of range"),
        (status = 404),
        (status = 409, description = "the session is not queued"),
        (status = 422, description = "wrong JSON shape")
    )
)]
pub(crate) async fn reorder_queued(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Reorder>,
) -> Result<web::Json<SessionStatus>, ApiError> {
    let id = session_id(&path)?;
    let manager = state.manager.clone();
    let priority = body.into_inner().priority;
    let view = blocking(move || manager.set_priority(&id, priority)).await?;
    Ok(web::Json(SessionStatus::from(&view)))
}

/// Changes a running session: `{"learning_rate": X}` applies from its next batch on, in place
/// of its schedule; it is logged, kept across retries and restarts, and shows in each epoch's
/// `learning_rate`. Answers the session's status.
#[utoipa::path(
    patch, path = "/api/v1/training/{session_id}", tag = "training", request_body = LiveChange,
    responses(
        (status = 200, body = SessionStatus),
        (status = 400, description = "a learning rate the start config would refuse"),
        (status = 404),
        (status = 409, description = "the session is not running"),
        (status = 422, description = "wrong JSON shape")
    )
)]
pub(crate) async fn change_running(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<LiveChange>,
) -> Result<web::Json<SessionStatus>, ApiError> {
    let id = session_id(&path)?;
    let manager = state.manager.clone();
    let rate = body.into_inner().learning_rate;
    let view = blocking(move || manager.set_learning_rate(&id, rate)).await?;
    Ok(web::Json(SessionStatus::from(&view)))
}

/// How long a snapshot request waits for the run to reach its next batch.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Saves a running session's current weights as a registry model now (at its next batch);
/// the run goes on. Answers the model, as the model listing shows it (`snapshot: true` in its
/// metadata).
#[utoipa::path(
    post, path = "/api/v1/training/{session_id}/checkpoint", tag = "training", request_body = TakeSnapshot,
    responses(
        (status = 200, body = Model),
        (status = 400, description = "not a model name"),
        (status = 404),
        (status = 409, description = "the name is taken, the session is not running, or it did not reach its next batch within 120 s"),
        (status = 422, description = "wrong JSON shape")
    )
)]
pub(crate) async fn snapshot_running(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<TakeSnapshot>,
) -> Result<web::Json<Model>, ApiError> {
    let id = session_id(&path)?;
    let manager = state.manager.clone();
    let name = body.into_inner().model_name;
    let record = blocking(move || manager.snapshot(&id, &name, SNAPSHOT_WAIT)).await?;
    Ok(web::Json(Model::from(&record)))
}

/// The architectures this server can train, with the datasets each accepts.
#[utoipa::path(get, path = "/api/v1/architectures", tag = "training", responses((status = 200, body = [ArchitectureDto])))]
pub(crate) async fn list_architectures() -> web::Json<Vec<ArchitectureDto>> {
    let names = |all: &[&str]| all.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    web::Json(
        Architecture::ALL
            .iter()
            .map(|a| ArchitectureDto {
                name: a.as_str().to_owned(),
                aliases: names(a.aliases()),
                tunable_fields: names(a.tunable_fields()),
                description: a.description().to_owned(),
                data_kinds: vec![a.data_kind().to_string()],
                dataset_formats: DatasetFormat::ALL
                    .iter()
                    .filter(|f| f.data_kinds().contains(&a.data_kind()))
                    .map(|f| f.as_str().to_owned())
                    .collect(),
                optimizers: names(Optimizer::NAMES),
                loss_functions: names(LossFunction::NAMES),
                training_fields: names(TrainingConfig::COMMON_FIELDS),
                early_stopping_metrics: names(Metric::NAMES),
                keep: names(Keep::NAMES),
            })
            .collect(),
    )
}
