//! [`CandlePredictor`]: classification with a Trainyard-trained model from the registry.
//!
//! The model file's description, read with [`crate::model_meta`]'s reader, says everything
//! needed: the network's architecture and sizes, the class names, and the standardisation
//! applied in training (per feature for tables, per channel for images), which prediction
//! applies the same way.
//!
//! Inputs:
//! - tables: rows of numbers in the model's feature order, or rows of feature name to value
//!   (every feature named, no unknown names);
//! - images: arrays `[H][W]` (one channel), `[H][W][C]` or `[C][H][W]`, with pixels in 0..=255
//!   (divided by 255 as in training) or already in 0..=1; or an encoded PNG/JPEG, converted to
//!   the model's channel count. The height and width must be the model's: nothing is resized.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use trainyard_domain::{
    ports::{ClassPrediction, NdArray, PredictError, PredictInput, Predictor},
    registry::{ModelFormat, ModelRecord},
};

use crate::{
    images::{self, limits::Limits},
    model_meta::{Model, ModelMeta},
    net::{Net, NetSpec},
    vision::{self, ImageShape, Mode},
    weights,
};

/// Samples evaluated at once.
const CHUNK: usize = 256;

/// Runs Trainyard classifiers (the MLP and the image models) on the CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct CandlePredictor;

impl CandlePredictor {
    #[must_use]
    pub fn new() -> Self {
        Self
    }
}

fn invalid(m: impl Into<String>) -> PredictError {
    PredictError::Invalid(m.into())
}

fn failed(e: impl std::fmt::Display) -> PredictError {
    PredictError::Failed(format!("prediction failed: {e}"))
}

/// A model ready to classify, with what its description says about inputs and outputs.
struct Classifier {
    net: Net,
    classes: Vec<String>,
    kind: Kind,
    mean: Vec<f64>,
    std: Vec<f64>,
}

enum Kind {
    Table { features: Vec<String> },
    Image(ImageShape),
}

impl Classifier {
    fn load(model: &ModelRecord) -> Result<Self, PredictError> {
        let unsupported = |why: &str| {
            PredictError::Unsupported(format!(
                "model '{}' cannot classify: {why}; prediction runs classifiers trained here (mlp, cnn, resnet18, resnet50, vgg16, mobilenet_v2)",
                model.name
            ))
        };
        if model.format != ModelFormat::Safetensors {
            return Err(unsupported(&format!("it is a {} file", model.format)));
        }
        let device = Device::Cpu;
        let loaded = weights::load_safetensors(&model.file_path, &device).map_err(|e| unsupported(&e))?;
        let meta = ModelMeta::from_header(&loaded.header).map_err(|e| unsupported(&e))?;
        let varmap = VarMap::new();
        {
            let mut vars = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (name, tensor) in loaded.tensors {
                let tensor = if tensor.dtype() == DType::F32 || vision::is_buffer(&name) {
                    tensor
                } else {
                    tensor.to_dtype(DType::F32).map_err(failed)?
                };
                vars.insert(name, Var::from_tensor(&tensor).map_err(failed)?);
            }
        }
        let dropout = meta.run.as_ref().map_or(0.0, |run| run.hyperparameters.dropout);
        let bad = |e: candle_core::Error| unsupported(&format!("its tensors do not match its description ({e})"));
        let load = |spec: NetSpec| spec.load(&varmap, dropout, &device).map_err(bad);
        match meta.model {
            Model::Table(m) => Ok(Self {
                net: load(NetSpec::Mlp(m.shape))?,
                classes: m.classes,
                mean: m.normalisation.mean,
                std: m.normalisation.std,
                kind: Kind::Table { features: m.feature_names },
            }),
            Model::Image(m) => Ok(Self {
                net: load(NetSpec::Image { arch: m.arch, input: m.input, classes: m.classes.len() })?,
                classes: m.classes,
                mean: m.normalisation.mean,
                std: m.normalisation.std,
                kind: Kind::Image(m.input),
            }),
            Model::Char(_) => Err(unsupported("it is a text generator; use POST /api/v1/models/{name}/generate")),
        }
    }

    /// The input as standardised samples, row-major, and the shape of one sample.
    fn samples(&self, input: &PredictInput) -> Result<(Vec<f32>, Vec<usize>), PredictError> {
        match (&self.kind, input) {
            (Kind::Table { features }, PredictInput::Rows(rows)) => {
                let mut x = Vec::with_capacity(rows.len() * features.len());
                for (i, row) in rows.iter().enumerate() {
                    if row.len() != features.len() {
                        return Err(invalid(format!(
                            "sample {} has {} values; the model expects {} features in this order: {}",
                            i + 1,
                            row.len(),
                            features.len(),
                            features.join(", ")
                        )));
                    }
                    for (j, v) in row.iter().enumerate() {
                        x.push(table_value(i, &features[j], *v, self.moments(j))?);
                    }
                }
                Ok((x, vec![features.len()]))
            }
            (Kind::Table { features }, PredictInput::NamedRows(rows)) => {
                let mut x = Vec::with_capacity(rows.len() * features.len());
                for (i, row) in rows.iter().enumerate() {
                    if let Some((unknown, _)) = row.iter().find(|(k, _)| !features.contains(k)) {
                        return Err(invalid(format!(
                            "sample {}: unknown feature '{unknown}'; the model's features are {}",
                            i + 1,
                            features.join(", ")
                        )));
                    }
                    for (j, name) in features.iter().enumerate() {
                        let v = row.iter().find(|(k, _)| k == name).map(|(_, v)| *v).ok_or_else(|| {
                            invalid(format!("sample {} lacks feature '{name}'; the model's features are {}", i + 1, features.join(", ")))
                        })?;
                        x.push(table_value(i, name, v, self.moments(j))?);
                    }
                }
                Ok((x, vec![features.len()]))
            }
            (Kind::Table { features }, _) => Err(invalid(format!(
                "this is a table model: send rows of {} numbers ({}) or objects of feature name to number",
                features.len(),
                features.join(", ")
            ))),
            (Kind::Image(shape), PredictInput::Arrays(arrays)) => {
                let mut x = Vec::with_capacity(arrays.len() * shape.channels * shape.height * shape.width);
                for (i, a) in arrays.iter().enumerate() {
                    let chw = to_chw(a, *shape).map_err(|why| invalid(format!("sample {}: {why}", i + 1)))?;
                    self.push_image(&mut x, &chw);
                }
                Ok((x, vec![shape.channels, shape.height, shape.width]))
            }
            (Kind::Image(shape), PredictInput::Encoded(bytes)) => {
                let chw = decode(bytes, *shape)?;
                let mut x = Vec::with_capacity(chw.len());
                self.push_image(&mut x, &chw);
                Ok((x, vec![shape.channels, shape.height, shape.width]))
            }
            (Kind::Image(shape), _) => Err(invalid(format!(
                "this is an image model: send a PNG or JPEG of {}x{} pixels, or arrays {}",
                shape.width,
                shape.height,
                expected_arrays(*shape)
            ))),
        }
    }

    /// The training mean and standard deviation of feature or channel `i`.
    fn moments(&self, i: usize) -> (f64, f64) {
        (self.mean.get(i).copied().unwrap_or(0.0), self.std.get(i).copied().unwrap_or(1.0))
    }

    /// Appends a CHW image in 0..=1, standardised per channel.
    fn push_image(&self, x: &mut Vec<f32>, chw: &[f32]) {
        let plane = chw.len() / self.mean.len().max(1);
        for (c, channel) in chw.chunks(plane.max(1)).enumerate() {
            let (m, s) = self.moments(c);
            x.extend(channel.iter().map(|&v| standard(f64::from(v), m, s)));
        }
    }

    fn predict(&self, input: &PredictInput) -> Result<Vec<ClassPrediction>, PredictError> {
        let (x, sample) = self.samples(input)?;
        let per: usize = sample.iter().product();
        let n = x.len() / per.max(1);
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(CHUNK) {
            let len = CHUNK.min(n - start);
            let shape: Vec<usize> = std::iter::once(len).chain(sample.iter().copied()).collect();
            let batch = Tensor::from_slice(&x[start * per..(start + len) * per], shape, &Device::Cpu).map_err(failed)?;
            let logits = self.net.forward(&batch, Mode::Eval).map_err(failed)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits).map_err(failed)?.to_vec2::<f32>().map_err(failed)?;
            out.extend(probs.into_iter().map(|p| self.answer(&p)));
        }
        Ok(out)
    }

    fn answer(&self, probs: &[f32]) -> ClassPrediction {
        let mut ranked: Vec<(usize, f64)> = probs.iter().map(|&p| f64::from(p)).enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let name = |i: usize| self.classes.get(i).cloned().unwrap_or_else(|| i.to_string());
        let (best, confidence) = ranked[0];
        ClassPrediction {
            class: name(best),
            class_index: u32::try_from(best).unwrap_or(u32::MAX),
            confidence,
            probabilities: ranked.into_iter().map(|(i, p)| (name(i), p)).collect(),
        }
    }
}

#[allow(clippy::cast_possible_truncation)]
fn standard(v: f64, mean: f64, std: f64) -> f32 {
    ((v - mean) / std) as f32
}

/// A table value standardised as in training; refused when it is not a finite 32-bit float
/// then (the network computes in `f32`, so 1e308 would enter it as infinity).
fn table_value(sample: usize, feature: &str, v: f64, (mean, std): (f64, f64)) -> Result<f32, PredictError> {
    let x = standard(v, mean, std);
    if x.is_finite() {
        Ok(x)
    } else {
        Err(invalid(format!(
            "sample {}: the value {v} of feature '{feature}' is too large for the model, which computes in 32-bit floats; send values of the magnitude of its training data",
            sample + 1
        )))
    }
}

fn expected_arrays(s: ImageShape) -> String {
    if s.channels == 1 {
        format!("[{}][{}] or [{}][{}][1]", s.height, s.width, s.height, s.width)
    } else {
        format!("[{h}][{w}][{c}] or [{c}][{h}][{w}]", h = s.height, w = s.width, c = s.channels)
    }
}

/// An array sample as CHW in 0..=1: values above 1 are taken as 8-bit and divided by 255.
fn to_chw(a: &NdArray, s: ImageShape) -> Result<Vec<f32>, String> {
    let (c, h, w) = (s.channels, s.height, s.width);
    let wrong = || format!("shape {:?} does not fit the model, which expects {}", a.shape, expected_arrays(s));
    let chw: Vec<f32> = match a.shape.as_slice() {
        [hh, ww] if c == 1 && (*hh, *ww) == (h, w) => a.values.clone(),
        [cc, hh, ww] if (*cc, *hh, *ww) == (c, h, w) => a.values.clone(),
        [hh, ww, cc] if (*hh, *ww, *cc) == (h, w, c) => {
            let mut out = Vec::with_capacity(a.values.len());
            images::push_chw(&mut out, &a.values, c);
            out
        }
        _ => return Err(wrong()),
    };
    let eight_bit = chw.iter().any(|&v| v > 1.0);
    if let Some(bad) = chw.iter().find(|&&v| !(0.0..=255.0).contains(&v)) {
        return Err(format!("pixel value {bad} is outside 0..=255"));
    }
    Ok(if eight_bit { chw.into_iter().map(|v| v / 255.0).collect() } else { chw })
}

/// An encoded image as CHW in 0..=1 with the model's channel count, decoded within the limits
/// that training's decoder keeps.
fn decode(bytes: &[u8], s: ImageShape) -> Result<Vec<f32>, PredictError> {
    let (image, _) = images::read_image(bytes, "the uploaded image", &Limits::DEFAULT).map_err(invalid)?;
    if (image.width() as usize, image.height() as usize) != (s.width, s.height) {
        return Err(invalid(format!(
            "the image is {}x{} pixels; the model expects {}x{} (width x height)",
            image.width(),
            image.height(),
            s.width,
            s.height
        )));
    }
    let interleaved: Vec<f32> = match s.channels {
        1 => image.to_luma8().into_raw(),
        3 => image.to_rgb8().into_raw(),
        4 => image.to_rgba8().into_raw(),
        c => return Err(invalid(format!("the model takes {c}-channel images, which PNG/JPEG cannot carry; send arrays instead"))),
    }
    .into_iter()
    .map(|v| f32::from(v) / 255.0)
    .collect();
    let mut chw = Vec::with_capacity(interleaved.len());
    images::push_chw(&mut chw, &interleaved, s.channels);
    Ok(chw)
}

impl Predictor for CandlePredictor {
    fn predict(&self, model: &ModelRecord, input: &PredictInput) -> Result<Vec<ClassPrediction>, PredictError> {
        Classifier::load(model)?.predict(input)
    }
}
