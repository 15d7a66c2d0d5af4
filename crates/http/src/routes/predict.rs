//! `POST /api/v1/models/{name}/predict`: classification with a registry model.
//!
//! The body is one of:
//! - JSON `{"inputs": [...]}` (or `{"input": sample}` for one sample). A sample is a row of
//!   numbers in the model's feature order, an object of feature name to number, or an image as
//!   nested arrays (`[H][W]`, `[H][W][C]` or `[C][H][W]`);
//! - `multipart/form-data` with an image file (PNG or JPEG) in the field `file`;
//! - a raw `image/png` or `image/jpeg` body.

use actix_multipart::Multipart;
use actix_web::{http::header, web, HttpRequest};
use futures_util::StreamExt;
use serde_json::Value;
use trainyard_domain::{
    ports::{ClassPrediction, NdArray, PredictInput},
    ModelName,
};

use super::blocking;
use crate::{
    dto::{PredictBody, PredictedDto, PredictionDto},
    error::{bad_name, ApiError, ErrorCode},
    AppState,
};

/// The largest image file accepted for prediction.
pub const MAX_IMAGE_BYTES: usize = 16 * 1024 * 1024;
/// The largest JSON body accepted for prediction (images as arrays are big).
pub const MAX_JSON_BYTES: usize = 32 * 1024 * 1024;
/// Deepest nesting of an image array (`[C][H][W]` is 3).
const MAX_ARRAY_DEPTH: usize = 3;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// Classifies samples with a classifier (mlp on tables; cnn, resnet, vgg, mobilenet on images).
#[utoipa::path(
    post, path = "/api/v1/models/{name}/predict", tag = "models",
    request_body(content = PredictBody, description = "JSON samples; or a PNG/JPEG image as multipart field `file` or as the raw body"),
    responses(
        (status = 200, body = PredictedDto),
        (status = 400, description = "samples that do not fit the model (the message says what it expects), or not a classifier"),
        (status = 404), (status = 413), (status = 415)
    )
)]
pub(crate) async fn predict(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<web::Json<PredictedDto>, ApiError> {
    let name = ModelName::new(path.as_str()).map_err(|e| bad_name("model name", &path, &e))?;
    let input = read_input(&req, payload).await?;
    let inference = state.inference.clone();
    let model = name.clone();
    let predictions = blocking(move || inference.predict(&model, &input)).await?;
    Ok(web::Json(PredictedDto { model: name.to_string(), predictions: predictions.into_iter().map(prediction_dto).collect() }))
}

fn prediction_dto(p: ClassPrediction) -> PredictionDto {
    PredictionDto {
        class: p.class,
        class_index: p.class_index,
        confidence: p.confidence,
        probabilities: p
            .probabilities
            .into_iter()
            .map(|(class, probability)| crate::dto::ClassProbability { class, probability })
            .collect(),
    }
}

/// Reads the body by its content type.
async fn read_input(req: &HttpRequest, payload: web::Payload) -> Result<PredictInput, ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if content_type.starts_with("application/json") {
        check_declared(declared, MAX_JSON_BYTES)?;
        let body = read_body(payload, MAX_JSON_BYTES).await?;
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}")))?;
        return parse_json(value);
    }
    if content_type.starts_with("multipart/form-data") {
        check_declared(declared, MAX_IMAGE_BYTES + 64 * 1024)?;
        return read_multipart_image(req, payload).await.map(PredictInput::Encoded);
    }
    if content_type.starts_with("image/") || content_type.starts_with("application/octet-stream") {
        check_declared(declared, MAX_IMAGE_BYTES)?;
        return read_body(payload, MAX_IMAGE_BYTES).await.map(PredictInput::Encoded);
    }
    Err(ApiError::new(
        ErrorCode::UnsupportedMediaType,
        "send JSON ({\"inputs\": [...]}), a multipart upload with the image in the field 'file', or an image/png or image/jpeg body",
    ))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, format!("prediction body larger than the limit of {limit} bytes"))
}

fn check_declared(declared: Option<usize>, limit: usize) -> Result<(), ApiError> {
    match declared {
        Some(n) if n > limit => Err(too_large(limit)),
        _ => Ok(()),
    }
}

async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| bad(format!("could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn read_multipart_image(req: &HttpRequest, payload: web::Payload) -> Result<Vec<u8>, ApiError> {
    let mut multipart = Multipart::new(req.headers(), payload);
    let mut image: Option<Vec<u8>> = None;
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(|e| bad(format!("invalid multipart body: {e}")))?;
        let is_file = field.name() == Some("file");
        if is_file && image.is_some() {
            return Err(bad("more than one 'file' field; send one image per request"));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|e| bad(format!("invalid multipart body: {e}")))?;
            if bytes.len() + chunk.len() > MAX_IMAGE_BYTES {
                return Err(too_large(MAX_IMAGE_BYTES));
            }
            if is_file {
                bytes.extend_from_slice(&chunk);
            }
        }
        if is_file {
            image = Some(bytes);
        }
    }
    image.ok_or_else(|| bad("no 'file' field: send the image in the multipart field 'file'"))
}

/// `{"inputs": [sample, ...]}` or `{"input": sample}`.
fn parse_json(value: Value) -> Result<PredictInput, ApiError> {
    let Value::Object(mut body) = value else {
        return Err(ApiError::new(
            ErrorCode::ValidationError,
            "expected a JSON object with 'inputs' (a list of samples) or 'input' (one sample)",
        ));
    };
    if let Some(unknown) = body.keys().find(|k| !matches!(k.as_str(), "inputs" | "input")) {
        return Err(ApiError::new(ErrorCode::ValidationError, format!("unknown field '{unknown}'; expected 'inputs' or 'input'")));
    }
    let samples = match (body.remove("inputs"), body.remove("input")) {
        (Some(Value::Array(samples)), None) => samples,
        (Some(_), None) => return Err(ApiError::new(ErrorCode::ValidationError, "'inputs' must be a list of samples")),
        (None, Some(one)) => vec![one],
        (Some(_), Some(_)) => return Err(ApiError::new(ErrorCode::ValidationError, "send either 'inputs' or 'input', not both")),
        (None, None) => {
            return Err(ApiError::new(ErrorCode::ValidationError, "missing 'inputs' (a list of samples) or 'input' (one sample)"))
        }
    };
    let Some(first) = samples.first() else {
        return Err(bad("'inputs' is empty; send at least one sample"));
    };
    match first {
        Value::Object(_) => samples.iter().enumerate().map(|(i, s)| named_row(i, s)).collect::<Result<_, _>>().map(PredictInput::NamedRows),
        Value::Array(inner) if inner.first().is_some_and(Value::is_array) => {
            samples.iter().enumerate().map(|(i, s)| nd_array(i, s)).collect::<Result<_, _>>().map(PredictInput::Arrays)
        }
        Value::Array(_) => samples.iter().enumerate().map(|(i, s)| row(i, s)).collect::<Result<_, _>>().map(PredictInput::Rows),
        _ => Err(bad("a sample is a list of numbers, an object of feature name to number, or an image as nested lists")),
    }
}

fn number(sample: usize, v: &Value) -> Result<f64, ApiError> {
    v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad(format!("sample {}: {v} is not a finite number", sample + 1)))
}

fn row(sample: usize, v: &Value) -> Result<Vec<f64>, ApiError> {
    match v {
        Value::Array(cells) => cells.iter().map(|c| number(sample, c)).collect(),
        _ => Err(bad(format!("sample {} is not a list of numbers like the first sample", sample + 1))),
    }
}

fn named_row(sample: usize, v: &Value) -> Result<Vec<(String, f64)>, ApiError> {
    match v {
        Value::Object(cells) => cells.iter().map(|(k, c)| Ok((k.clone(), number(sample, c)?))).collect(),
        _ => Err(bad(format!("sample {} is not an object of feature name to number like the first sample", sample + 1))),
    }
}

/// A nested list of numbers as a rectangular array.
fn nd_array(sample: usize, v: &Value) -> Result<NdArray, ApiError> {
    let mut shape = Vec::new();
    let mut probe = v;
    while let Value::Array(items) = probe {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => return Err(bad(format!("sample {} has an empty list", sample + 1))),
        }
    }
    if shape.len() > MAX_ARRAY_DEPTH {
        return Err(bad(format!("sample {} is nested {} deep; an image is [H][W], [H][W][C] or [C][H][W]", sample + 1, shape.len())));
    }
    let mut values = Vec::with_capacity(shape.iter().product());
    flatten(sample, v, &shape, &mut values)?;
    Ok(NdArray { shape, values })
}

fn flatten(sample: usize, v: &Value, shape: &[usize], out: &mut Vec<f32>) -> Result<(), ApiError> {
    match (v, shape.split_first()) {
        (Value::Array(items), Some((&len, rest))) if items.len() == len => {
            items.iter().try_for_each(|item| flatten(sample, item, rest, out))
        }
        (_, None) => {
            #[allow(clippy::cast_possible_truncation)]
            let x = number(sample, v)? as f32;
            if !x.is_finite() {
                return Err(bad(format!("sample {}: {v} is too large for an image value (pixels are 0 to 255, or 0 to 1)", sample + 1)));
            }
            out.push(x);
            Ok(())
        }
        _ => Err(bad(format!("sample {} is not rectangular: every list at one depth must have the same length", sample + 1))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_named_rows_and_images_are_told_apart() {
        assert_eq!(parse_json(json!({"inputs": [[1, 2.5], [3, 4]]})).unwrap(), PredictInput::Rows(vec![vec![1.0, 2.5], vec![3.0, 4.0]]));
        assert_eq!(parse_json(json!({"input": {"a": 1}})).unwrap(), PredictInput::NamedRows(vec![vec![("a".into(), 1.0)]]));
        assert_eq!(
            parse_json(json!({"input": [[0, 1], [2, 3]]})).unwrap(),
            PredictInput::Arrays(vec![NdArray { shape: vec![2, 2], values: vec![0.0, 1.0, 2.0, 3.0] }])
        );
    }

    #[test]
    fn ragged_deep_and_odd_bodies_are_refused() {
        for body in [
            json!({"input": [[0, 1], [2]]}),
            json!({"input": [[[[1]]]]}),
            json!({"inputs": []}),
            json!({"inputs": [[1, "x"]]}),
            json!({"inputs": [[1], {"a": 1}]}),
            json!({"input": [[1e308, 0], [0, 0]]}),
            json!({"rows": [[1]]}),
            json!([1, 2]),
            json!({"inputs": [[1]], "input": [1]}),
        ] {
            assert!(parse_json(body.clone()).is_err(), "{body}");
        }
    }
}
