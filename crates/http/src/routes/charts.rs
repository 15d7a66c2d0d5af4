//! Charts: one session's training history, or one metric across sessions, as PNG or SVG.

use actix_web::{http::header, web, HttpResponse};
use serde::Deserialize;
use trainyard_domain::charts::{ChartFormat, ChartQuery, CompareQuery, RawChartQuery, RawCompareQuery};

use super::{blocking, training::session_id};
use crate::{error::ApiError, AppState};

/// The query of a session chart. Sizes are read as text so that a bad one is named in the
/// error, like every other failing parameter.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct ChartParams {
    /// Comma-separated metrics among `loss`, `val_loss`, `accuracy` and `val_accuracy`
    /// (default: all four); losses share one panel and accuracies another.
    metrics: Option<String>,
    /// Width in pixels, 200 to 4000 (default 1000).
    #[param(value_type = Option<u32>)]
    width: Option<String>,
    /// Height in pixels, 200 to 4000 (default 700).
    #[param(value_type = Option<u32>)]
    height: Option<String>,
}

/// The query of a comparison chart.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct CompareParams {
    /// Comma-separated session ids, 1 to 20, each once; one line each, in this order.
    sessions: Option<String>,
    /// One of `loss`, `val_loss`, `accuracy` and `val_accuracy` (default `val_accuracy`).
    metric: Option<String>,
    /// Width in pixels, 200 to 4000 (default 1000).
    #[param(value_type = Option<u32>)]
    width: Option<String>,
    /// Height in pixels, 200 to 4000 (default 700).
    #[param(value_type = Option<u32>)]
    height: Option<String>,
}

/// The drawn chart, never cached: a running session's chart changes with every epoch.
fn image(bytes: Vec<u8>, format: ChartFormat) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(bytes)
}

async fn session_chart(
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: ChartParams,
    format: ChartFormat,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&path)?;
    let query = ChartQuery::parse(&RawChartQuery { metrics: q.metrics, width: q.width, height: q.height })?;
    let charts = state.charts.clone();
    let bytes = blocking(move || charts.session(&id, &query, format)).await?;
    Ok(image(bytes, format))
}

async fn compare_chart(state: web::Data<AppState>, q: CompareParams, format: ChartFormat) -> Result<HttpResponse, ApiError> {
    let query = CompareQuery::parse(&RawCompareQuery { sessions: q.sessions, metric: q.metric, width: q.width, height: q.height })?;
    let charts = state.charts.clone();
    let bytes = blocking(move || charts.compare(&query, format)).await?;
    Ok(image(bytes, format))
}

/// A session's history as a PNG: the title (architecture, dataset, session, state, epoch), a
/// loss panel and an accuracy panel with labelled axes and a legend each. A running session's
/// chart shows the epochs finished so far; one with none yet says so.
#[utoipa::path(
    get, path = "/api/v1/training/{session_id}/chart.png", tag = "charts", params(ChartParams),
    responses(
        (status = 200, description = "the chart, `width` x `height` pixels", content_type = "image/png"),
        (status = 400, description = "bad metrics or size; every failing parameter is listed in `error.details.fields`"),
        (status = 404),
    )
)]
pub(crate) async fn session_chart_png(
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<ChartParams>,
) -> Result<HttpResponse, ApiError> {
    session_chart(state, path, q.into_inner(), ChartFormat::Png).await
}

/// A session's history as an SVG, with the same content as `chart.png`.
#[utoipa::path(
    get, path = "/api/v1/training/{session_id}/chart.svg", tag = "charts", params(ChartParams),
    responses(
        (status = 200, description = "the chart, `width` x `height` pixels", content_type = "image/svg+xml"),
        (status = 400, description = "bad metrics or size; every failing parameter is listed in `error.details.fields`"),
        (status = 404),
    )
)]
pub(crate) async fn session_chart_svg(
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<ChartParams>,
) -> Result<HttpResponse, ApiError> {
    session_chart(state, path, q.into_inner(), ChartFormat::Svg).await
}

/// One metric of several sessions by epoch, overlaid in one panel, as a PNG.
#[utoipa::path(
    get, path = "/api/v1/charts/compare.png", tag = "charts", params(CompareParams),
    responses(
        (status = 200, description = "the chart, `width` x `height` pixels", content_type = "image/png"),
        (status = 400, description = "bad sessions, metric or size; every failing parameter is listed in `error.details.fields`"),
        (status = 404, description = "a session does not exist"),
    )
)]
pub(crate) async fn compare_png(state: web::Data<AppState>, q: web::Query<CompareParams>) -> Result<HttpResponse, ApiError> {
    compare_chart(state, q.into_inner(), ChartFormat::Png).await
}

/// One metric of several sessions by epoch, overlaid in one panel, as an SVG.
#[utoipa::path(
    get, path = "/api/v1/charts/compare.svg", tag = "charts", params(CompareParams),
    responses(
        (status = 200, description = "the chart, `width` x `height` pixels", content_type = "image/svg+xml"),
        (status = 400, description = "bad sessions, metric or size; every failing parameter is listed in `error.details.fields`"),
        (status = 404, description = "a session does not exist"),
    )
)]
pub(crate) async fn compare_svg(state: web::Data<AppState>, q: web::Query<CompareParams>) -> Result<HttpResponse, ApiError> {
    compare_chart(state, q.into_inner(), ChartFormat::Svg).await
}
