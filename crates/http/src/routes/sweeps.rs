//! Hyperparameter sweeps: create one (its trials are queued as ordinary sessions), list them,
//! look at one, stop one.

use actix_web::web;
use trainyard_domain::{sweep::SweepRequest, SweepId};

use super::{blocking, training::wait_too_long, training::MAX_WAIT_SECONDS};
use crate::{
    dto::{StartSweep, SweepDto},
    error::{ApiError, ErrorCode},
    AppState,
};

fn sweep_id(raw: &str) -> Result<SweepId, ApiError> {
    SweepId::parse(raw).map_err(|_| {
        let shown = trainyard_domain::failure::shown(raw);
        ApiError::new(ErrorCode::NotFound, format!("sweep '{shown}' not found"))
    })
}

/// Starts a sweep: validates it and every trial's config, then queues its trials (ordinary
/// sessions with `sweep_id` in their status). Answers the sweep with its trials.
#[utoipa::path(
    post, path = "/api/v1/sweeps", tag = "sweeps", request_body = StartSweep,
    responses(
        (status = 200, body = SweepDto),
        (status = 400, description = "invalid fields, each named (a trial's config as `trial N: field`)"),
        (status = 409, description = "the name, or `<name>-best` as a model name, is taken"),
        (status = 422, description = "wrong JSON shape")
    )
)]
pub(crate) async fn start_sweep(state: web::Data<AppState>, body: web::Json<StartSweep>) -> Result<web::Json<SweepDto>, ApiError> {
    let req: SweepRequest = body.into_inner().into();
    let sweeps = state.sweeps.clone();
    let view = blocking(move || sweeps.create(&req)).await?;
    Ok(web::Json(SweepDto::from(&view)))
}

/// Every sweep, newest first, with its trials.
#[utoipa::path(get, path = "/api/v1/sweeps", tag = "sweeps", responses((status = 200, body = [SweepDto])))]
pub(crate) async fn list_sweeps(state: web::Data<AppState>) -> Result<web::Json<Vec<SweepDto>>, ApiError> {
    let sweeps = state.sweeps.clone();
    let views = blocking(move || sweeps.list()).await?;
    Ok(web::Json(views.iter().map(SweepDto::from).collect()))
}

/// `GET /api/v1/sweeps/{sweep_id}` query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub(crate) struct SweepQuery {
    /// Long-poll: answer once the sweep has ended, or after this many seconds (at most 300).
    wait_seconds: Option<u64>,
}

/// One sweep: its state, its trials (config, state, best metric) and the best trial so far.
#[utoipa::path(
    get, path = "/api/v1/sweeps/{sweep_id}", tag = "sweeps", params(SweepQuery),
    responses((status = 200, body = SweepDto), (status = 404))
)]
pub(crate) async fn get_sweep(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<SweepQuery>,
) -> Result<web::Json<SweepDto>, ApiError> {
    let id = sweep_id(&path)?;
    let sweeps = state.sweeps.clone();
    let secs = query.wait_seconds.unwrap_or(0);
    if secs > MAX_WAIT_SECONDS {
        return Err(wait_too_long(secs));
    }
    let wait = std::time::Duration::from_secs(secs);
    let view = blocking(move || sweeps.wait_ended(&id, wait)).await?;
    Ok(web::Json(SweepDto::from(&view)))
}

/// Stops a running sweep: its queued trials are cancelled, its running ones stopped (their
/// weights are saved); once they have ended its best trial's model is registered.
#[utoipa::path(
    post, path = "/api/v1/sweeps/{sweep_id}/stop", tag = "sweeps",
    responses((status = 200, body = SweepDto), (status = 404), (status = 409, description = "the sweep has already ended"))
)]
pub(crate) async fn stop_sweep(state: web::Data<AppState>, path: web::Path<String>) -> Result<web::Json<SweepDto>, ApiError> {
    let id = sweep_id(&path)?;
    let sweeps = state.sweeps.clone();
    let view = blocking(move || sweeps.stop(&id)).await?;
    Ok(web::Json(SweepDto::from(&view)))
}
