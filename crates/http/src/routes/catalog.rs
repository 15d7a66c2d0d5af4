//! The model and dataset registries: list, upload, download, inspect and delete.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use trainyard_domain::{catalog::CatalogError, ports::GenerateRequest, registry::size_mb, DatasetName, ModelName};

use super::blocking;
use crate::{
    download,
    dto::{Dataset, GenerateBody, GeneratedDto, Message, Model, Uploaded},
    error::{bad_name, ApiError},
    metrics::UploadKind,
    upload, AppState,
};

fn model_name(raw: &str) -> Result<ModelName, ApiError> {
    ModelName::new(raw).map_err(|e| bad_name("model name", raw, &e))
}

fn dataset_name(raw: &str) -> Result<DatasetName, ApiError> {
    DatasetName::new(raw).map_err(|e| bad_name("dataset name", raw, &e))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct ModelUploadQuery {
    /// The registry name (letters, digits, `.`, `_`, `-`; at most 128).
    model_name: String,
    /// `true` replaces an existing model of this name atomically (the new file and row in one
    /// step, the old file removed after); refused with 409 while a queued or running session
    /// starts from it. Default `false`: an existing name is a 409.
    #[serde(default)]
    overwrite: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct DatasetUploadQuery {
    /// The registry name (letters, digits, `.`, `_`, `-`; at most 128).
    dataset_name: String,
    /// `true` replaces an existing dataset of this name atomically, keeping its place in the
    /// listing; refused with 409 while a queued or running session uses it. Default `false`:
    /// an existing name is a 409.
    #[serde(default)]
    overwrite: bool,
}

/// Every model, newest first.
#[utoipa::path(get, path = "/api/v1/models", tag = "models", responses((status = 200, body = [Model])))]
pub(crate) async fn list_models(state: web::Data<AppState>) -> Result<web::Json<Vec<Model>>, ApiError> {
    let catalog = state.catalog.clone();
    let models = blocking(move || catalog.models().list()).await?;
    Ok(web::Json(models.iter().map(Model::from).collect()))
}

/// Uploads a model file (multipart field `file`): safetensors, a PyTorch zip checkpoint
/// (`.pth`/`.pt`) or ONNX, detected by content and checked before it is kept (nothing in it is
/// executed); anything else is a 400 saying why. A name that exists is a 409 unless
/// `overwrite=true`.
#[utoipa::path(
    post, path = "/api/v1/models", tag = "models", params(ModelUploadQuery),
    request_body(content_type = "multipart/form-data", description = "the model file in the field `file`"),
    responses(
        (status = 200, body = Uploaded),
        (status = 400, description = "unsupported or malformed model file; the message says why"),
        (status = 409, description = "the name exists (without overwrite), or a queued or running session uses the model"),
        (status = 413)
    )
)]
pub(crate) async fn upload_model(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<ModelUploadQuery>,
    payload: web::Payload,
) -> Result<web::Json<Uploaded>, ApiError> {
    let name = model_name(&q.model_name)?;
    let overwrite = q.overwrite;
    let limit = state.limits.model_max_bytes;
    upload::check_declared_length(&req, limit)?;
    let catalog = state.catalog.clone();
    let check = name.clone();
    blocking(move || catalog.check_model_upload(&check, overwrite)).await?;
    let counted = state.metrics.upload_bytes(UploadKind::Model);
    let received =
        upload::receive(&req, payload, state.catalog.models().staging_dir(), limit, state.limits.body_idle_timeout, &counted).await?;
    let catalog = state.catalog.clone();
    let record = blocking(move || {
        let rec = catalog.add_model(name, &received.upload(), overwrite)?;
        // Imported: the registry moved the file, so the temporary path must not be deleted.
        let _ = received.file.into_temp_path().keep();
        Ok::<_, CatalogError>(rec)
    })
    .await?;
    Ok(web::Json(Uploaded {
        message: format!("Model '{}' uploaded", record.name),
        name: record.name.to_string(),
        size_mb: size_mb(record.size_bytes),
        size_bytes: record.size_bytes,
        format: record.format.to_string(),
        sample_count: None,
        dimensions: None,
        content_hash: record.content_hash.as_ref().map(ToString::to_string),
    }))
}

/// Downloads a model file. The `ETag` is `"sha256-<hex>"` of the content: `If-None-Match` with
/// it gives a 304, `If-Match` without it a 412; one `Range` is served as a 206 (resume a
/// download with `Range: bytes=N-`), and only while `If-Range`, when sent, names the current
/// ETag; otherwise the whole file comes back.
#[utoipa::path(
    get, path = "/api/v1/models/{name}", tag = "models",
    params(
        ("If-None-Match" = Option<String>, Header, description = "an ETag from an earlier download: 304 while unchanged"),
        ("Range" = Option<String>, Header, description = "one byte range, such as `bytes=100-`"),
        ("If-Range" = Option<String>, Header, description = "the ETag the range belongs to; another ETag gives the whole file"),
    ),
    responses(
        (status = 200, description = "the file's bytes", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range"),
        (status = 304, description = "not modified"),
        (status = 404),
        (status = 412, description = "If-Match does not name the current ETag"),
        (status = 416, description = "the range is outside the file")
    )
)]
pub(crate) async fn download_model(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = model_name(&path)?;
    let catalog = state.catalog.clone();
    let record = blocking(move || catalog.model(&name)).await?;
    let download_name = format!("{}.{}", record.name, record.format.extension());
    download::file_response(&req, record.file_path, record.content_hash.as_ref(), download_name, state.metrics.download_bytes()).await
}

/// Generates text with a text model (the char-LSTM, Trainyard-trained or the owner's `.pth`).
#[utoipa::path(
    post, path = "/api/v1/models/{name}/generate", tag = "models", request_body = GenerateBody,
    responses((status = 200, body = GeneratedDto), (status = 400, description = "out-of-range values, or not a text model"), (status = 404))
)]
pub(crate) async fn generate(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<GenerateBody>,
) -> Result<web::Json<GeneratedDto>, ApiError> {
    let name = model_name(&path)?;
    let body = body.into_inner();
    let req = GenerateRequest {
        prompt: body.prompt,
        max_length: body.max_length.unwrap_or(200),
        temperature: body.temperature.unwrap_or(0.8),
        seed: body.seed,
    };
    let inference = state.inference.clone();
    let model = name.clone();
    let prompt = req.prompt.clone();
    let out = blocking(move || inference.generate(&model, &req)).await?;
    Ok(web::Json(GeneratedDto {
        model: name.to_string(),
        text: format!("{prompt}{}", out.text),
        prompt,
        generated_text: out.text,
        unknown_characters: out.unknown_characters.iter().map(ToString::to_string).collect(),
        seed: out.seed,
    }))
}

/// Deletes a model's row and file.
#[utoipa::path(delete, path = "/api/v1/models/{name}", tag = "models", responses((status = 200, body = Message), (status = 404)))]
pub(crate) async fn delete_model(state: web::Data<AppState>, path: web::Path<String>) -> Result<web::Json<Message>, ApiError> {
    let name = model_name(&path)?;
    let catalog = state.catalog.clone();
    let shown = name.clone();
    blocking(move || catalog.delete_model(&name)).await?;
    Ok(web::Json(Message { message: format!("Model '{shown}' deleted") }))
}

/// Every dataset, oldest first.
#[utoipa::path(get, path = "/api/v1/datasets", tag = "datasets", responses((status = 200, body = [Dataset])))]
pub(crate) async fn list_datasets(state: web::Data<AppState>) -> Result<web::Json<Vec<Dataset>>, ApiError> {
    let catalog = state.catalog.clone();
    let datasets = blocking(move || catalog.datasets().list()).await?;
    Ok(web::Json(datasets.iter().map(|d| Dataset::of(d, false)).collect()))
}

/// One dataset with its statistics.
#[utoipa::path(get, path = "/api/v1/datasets/{name}", tag = "datasets", responses((status = 200, body = Dataset), (status = 404)))]
pub(crate) async fn get_dataset(state: web::Data<AppState>, path: web::Path<String>) -> Result<web::Json<Dataset>, ApiError> {
    let name = dataset_name(&path)?;
    let catalog = state.catalog.clone();
    let record = blocking(move || catalog.dataset(&name)).await?;
    Ok(web::Json(Dataset::of(&record, true)))
}

/// Uploads a dataset (multipart field `file`); its format is detected from the content and its
/// metadata computed once. Malformed content is a 400 and nothing is kept. A name that exists
/// is a 409 unless `overwrite=true`.
#[utoipa::path(
    post, path = "/api/v1/datasets", tag = "datasets", params(DatasetUploadQuery),
    request_body(content_type = "multipart/form-data", description = "the dataset file in the field `file`"),
    responses(
        (status = 200, body = Uploaded),
        (status = 400),
        (status = 409, description = "the name exists (without overwrite), or a queued or running session uses the dataset"),
        (status = 413)
    )
)]
pub(crate) async fn upload_dataset(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<DatasetUploadQuery>,
    payload: web::Payload,
) -> Result<web::Json<Uploaded>, ApiError> {
    let name = dataset_name(&q.dataset_name)?;
    let overwrite = q.overwrite;
    let limit = state.limits.dataset_max_bytes;
    upload::check_declared_length(&req, limit)?;
    let catalog = state.catalog.clone();
    let check = name.clone();
    blocking(move || catalog.check_dataset_upload(&check, overwrite)).await?;
    let counted = state.metrics.upload_bytes(UploadKind::Dataset);
    let received =
        upload::receive(&req, payload, state.catalog.datasets().staging_dir(), limit, state.limits.body_idle_timeout, &counted).await?;
    let catalog = state.catalog.clone();
    let record = blocking(move || {
        let rec = catalog.add_dataset(name, &received.upload(), overwrite)?;
        let _ = received.file.into_temp_path().keep();
        Ok::<_, CatalogError>(rec)
    })
    .await?;
    Ok(web::Json(Uploaded {
        message: format!("Dataset '{}' uploaded", record.name),
        name: record.name.to_string(),
        size_mb: size_mb(record.size_bytes),
        size_bytes: record.size_bytes,
        format: record.info.format.to_string(),
        sample_count: record.info.sample_count,
        dimensions: record.info.dimensions,
        content_hash: record.content_hash.as_ref().map(ToString::to_string),
    }))
}

/// Deletes a dataset, unless a queued or running session uses it (409 naming the session).
#[utoipa::path(delete, path = "/api/v1/datasets/{name}", tag = "datasets", responses((status = 200, body = Message), (status = 404), (status = 409)))]
pub(crate) async fn delete_dataset(state: web::Data<AppState>, path: web::Path<String>) -> Result<web::Json<Message>, ApiError> {
    let name = dataset_name(&path)?;
    let catalog = state.catalog.clone();
    let shown = name.clone();
    blocking(move || catalog.delete_dataset(&shown)).await?;
    Ok(web::Json(Message { message: format!("Dataset '{name}' deleted") }))
}
