//! The inference use cases: text generation and classification with a model from the registry.

use std::{fmt, sync::Arc};

use crate::{
    ids::ModelName,
    ports::{
        ClassPrediction, GenerateError, GenerateRequest, Generated, Generator, ModelRegistry, PredictError, PredictInput, Predictor,
        StoreError,
    },
};

/// Longest generation one request may ask for, in characters.
pub const MAX_GENERATE_LENGTH: u32 = 10_000;
/// Longest accepted prompt, in characters.
pub const MAX_PROMPT_CHARS: usize = 10_000;
/// Most samples one prediction request may hold.
pub const MAX_PREDICT_SAMPLES: usize = 10_000;

/// What inference fails with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferenceError {
    #[error("model '{0}' not found")]
    NotFound(ModelName),
    /// The request's values are out of range.
    #[error("{0}")]
    Invalid(String),
    /// The model cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
    /// The model could not be evaluated.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs registry models.
#[derive(Clone)]
pub struct Inference {
    models: Arc<dyn ModelRegistry>,
    generator: Arc<dyn Generator>,
    predictor: Arc<dyn Predictor>,
}

impl fmt::Debug for Inference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inference").finish_non_exhaustive()
    }
}

impl Inference {
    #[must_use]
    pub fn new(models: Arc<dyn ModelRegistry>, generator: Arc<dyn Generator>, predictor: Arc<dyn Predictor>) -> Self {
        Self { models, generator, predictor }
    }

    /// Classifies every sample of `input` with the model `name`. Every answer is a probability:
    /// a value that is not a finite number is refused on the way in, and an output that is not
    /// (the inputs overflow the model) is refused on the way out.
    ///
    /// # Errors
    /// [`InferenceError::Invalid`] for no samples, too many, samples that do not fit the model,
    /// values that are not finite, or samples the model's output overflows on,
    /// [`InferenceError::NotFound`], [`InferenceError::Unsupported`] for a model that is not a
    /// classifier.
    pub fn predict(&self, name: &ModelName, input: &PredictInput) -> Result<Vec<ClassPrediction>, InferenceError> {
        if input.is_empty() {
            return Err(InferenceError::Invalid("no samples to classify".into()));
        }
        if input.len() > MAX_PREDICT_SAMPLES {
            return Err(InferenceError::Invalid(format!("at most {MAX_PREDICT_SAMPLES} samples per request, got {}", input.len())));
        }
        if let Some(i) = input.first_non_finite() {
            return Err(InferenceError::Invalid(format!("sample {}: every value must be a finite number", i + 1)));
        }
        let model = self.models.get(name)?.ok_or_else(|| InferenceError::NotFound(name.clone()))?;
        let predictions = self.predictor.predict(&model, input).map_err(|e| match e {
            PredictError::Unsupported(m) => InferenceError::Unsupported(m),
            PredictError::Invalid(m) => InferenceError::Invalid(m),
            PredictError::Failed(m) => InferenceError::Failed(m),
        })?;
        if let Some(i) = predictions.iter().position(|p| !p.is_probability()) {
            return Err(InferenceError::Invalid(format!(
                "sample {}: the model's output overflows (it is not a finite number) on these inputs, which lie far outside the range it was trained on; send values of the magnitude of its training data",
                i + 1
            )));
        }
        Ok(predictions)
    }

    /// Generates text after `req.prompt` with the model `name`. The temperature is above 0 and
    /// at most 10; near 0 the most probable character is always picked.
    ///
    /// # Errors
    /// [`InferenceError::Invalid`] for out-of-range values or a model whose output is not
    /// finite, [`InferenceError::NotFound`],
    /// [`InferenceError::Unsupported`] for a model that does not generate text.
    pub fn generate(&self, name: &ModelName, req: &GenerateRequest) -> Result<Generated, InferenceError> {
        if !(1..=MAX_GENERATE_LENGTH).contains(&req.max_length) {
            return Err(InferenceError::Invalid(format!("max_length must be between 1 and {MAX_GENERATE_LENGTH}, got {}", req.max_length)));
        }
        if !(req.temperature.is_finite() && req.temperature > 0.0 && req.temperature <= 10.0) {
            return Err(InferenceError::Invalid(format!("temperature must be above 0 and at most 10, got {}", req.temperature)));
        }
        if req.prompt.chars().count() > MAX_PROMPT_CHARS {
            return Err(InferenceError::Invalid(format!("prompt must be at most {MAX_PROMPT_CHARS} characters")));
        }
        let model = self.models.get(name)?.ok_or_else(|| InferenceError::NotFound(name.clone()))?;
        self.generator.generate(&model, req).map_err(|e| match e {
            GenerateError::Unsupported(m) => InferenceError::Unsupported(m),
            GenerateError::Invalid(m) => InferenceError::Invalid(m),
            GenerateError::Failed(m) => InferenceError::Failed(m),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{
        ports::{ClassPrediction, NdArray},
        registry::ModelRecord,
        testing::MemoryModels,
    };

    /// Counts the calls that reach it and answers one class per sample.
    #[derive(Default)]
    struct CountingPredictor(AtomicUsize);

    impl Predictor for CountingPredictor {
        fn predict(&self, _: &ModelRecord, input: &PredictInput) -> Result<Vec<ClassPrediction>, PredictError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            match input {
                PredictInput::Encoded(_) => Err(PredictError::Invalid("expects 8x8".into())),
                other => {
                    Ok(vec![
                        ClassPrediction { class: "a".into(), class_index: 0, confidence: 1.0, probabilities: vec![("a".into(), 1.0)] };
                        other.len()
                    ])
                }
            }
        }
    }

    struct NoText;

    impl Generator for NoText {
        fn generate(&self, _: &ModelRecord, _: &GenerateRequest) -> Result<Generated, GenerateError> {
            Err(GenerateError::Unsupported("not text".into()))
        }
    }

    #[test]
    fn predictions_are_bounded_and_refusals_keep_their_kind() {
        let predictor = Arc::new(CountingPredictor::default());
        let inference = Inference::new(Arc::new(MemoryModels::default()), Arc::new(NoText), predictor.clone());
        let name = ModelName::new("m").unwrap();
        let rows = |n: usize| PredictInput::Rows(vec![vec![1.0]; n]);
        assert!(matches!(inference.predict(&name, &rows(0)), Err(InferenceError::Invalid(_))));
        assert!(matches!(inference.predict(&name, &rows(MAX_PREDICT_SAMPLES + 1)), Err(InferenceError::Invalid(_))));
        assert!(matches!(inference.predict(&name, &rows(1)), Err(InferenceError::NotFound(_))));
        assert_eq!(predictor.0.load(Ordering::SeqCst), 0, "nothing reaches the predictor before the checks pass");
        let arrays = PredictInput::Arrays(vec![NdArray { shape: vec![1], values: vec![0.0] }; 2]);
        assert_eq!(arrays.len(), 2);
        assert!(!PredictInput::Encoded(vec![1]).is_empty());
    }

    /// Answers, for each row, its first value as the confidence of the one class.
    struct EchoPredictor;

    impl Predictor for EchoPredictor {
        fn predict(&self, _: &ModelRecord, input: &PredictInput) -> Result<Vec<ClassPrediction>, PredictError> {
            let PredictInput::Rows(rows) = input else { return Err(PredictError::Invalid("rows only".into())) };
            Ok(rows
                .iter()
                .map(|r| {
                    let p = r.first().copied().unwrap_or(0.0);
                    ClassPrediction { class: "a".into(), class_index: 0, confidence: p, probabilities: vec![("a".into(), p)] }
                })
                .collect())
        }
    }

    fn echo_inference() -> (Inference, ModelName) {
        let models = MemoryModels::default();
        let name = ModelName::new("m").unwrap();
        let model = crate::registry::NewModel {
            name: name.clone(),
            staged_file: "m.safetensors".into(),
            format: crate::registry::ModelFormat::Safetensors,
            session_id: None,
            metadata: serde_json::json!({}),
            content_hash: None,
        };
        models.import(model).unwrap();
        (Inference::new(Arc::new(models), Arc::new(NoText), Arc::new(EchoPredictor)), name)
    }

    #[test]
    fn inputs_that_are_not_finite_never_reach_the_model() {
        let (inference, name) = echo_inference();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = inference.predict(&name, &PredictInput::Rows(vec![vec![0.5], vec![0.5, bad]])).unwrap_err();
            assert_eq!(err, InferenceError::Invalid("sample 2: every value must be a finite number".into()));
        }
        let arrays = PredictInput::Arrays(vec![NdArray { shape: vec![1], values: vec![f32::NAN] }]);
        assert!(matches!(inference.predict(&name, &arrays), Err(InferenceError::Invalid(_))));
    }

    /// The outputs a model may give: ordinary probabilities, and the values an overflow gives.
    #[derive(Debug, Clone)]
    struct Output(f64);

    impl quickcheck::Arbitrary for Output {
        fn arbitrary(g: &mut quickcheck::Gen) -> Self {
            let odd = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 1.0 + f64::EPSILON, -1e-300, f64::MAX];
            let pick_odd = <bool as quickcheck::Arbitrary>::arbitrary(g);
            Self(if pick_odd {
                *g.choose(&odd).unwrap_or(&0.0)
            } else {
                f64::from(<u16 as quickcheck::Arbitrary>::arbitrary(g)) / f64::from(u16::MAX)
            })
        }
    }

    quickcheck::quickcheck! {
        // Property 58: a prediction never answers a number that is not a probability: whatever
        // the model outputs, the answer is every value finite and in 0..=1, or a refusal saying
        // which sample overflowed.
        fn prop58_predictions_are_probabilities_or_refused(outputs: Vec<Output>) -> quickcheck::TestResult {
            if outputs.is_empty() {
                return quickcheck::TestResult::discard();
            }
            let (inference, name) = echo_inference();
            let rows = outputs.iter().map(|o| vec![o.0]).collect();
            let finite_in = outputs.iter().all(|o| o.0.is_finite());
            let all_probabilities = outputs.iter().all(|o| (0.0..=1.0).contains(&o.0));
            quickcheck::TestResult::from_bool(match inference.predict(&name, &PredictInput::Rows(rows)) {
                Ok(answers) => all_probabilities && answers.iter().all(ClassPrediction::is_probability),
                Err(InferenceError::Invalid(m)) => {
                    !all_probabilities && (m.contains("overflows") || (!finite_in && m.contains("finite number")))
                }
                Err(_) => false,
            })
        }
    }
}
