//! The start-training body fuzzed the way a client can send it: arbitrary JSON values, valid
//! configurations with fields mutated, and the checked-in corpus of tricky bodies
//! (`tests/corpus/training-config`). Each is read as the route reads it (serde into
//! [`StartTraining`], then [`TrainingConfig::validate`]) and must be accepted with every value
//! in range, or refused with a 4xx that says why.

use actix_web::ResponseError;
use quickcheck::{Arbitrary, Gen, QuickCheck};
use serde_json::{json, Map, Value};
use trainyard_domain::{TrainingConfig, TrainingRequest};

use super::StartTraining;
use crate::error::ApiError;

/// What the route answers for a body: the accepted config, or the refusal's status and message.
fn outcome(body: &[u8]) -> Result<TrainingConfig, (u16, String)> {
    let parsed: StartTraining = serde_json::from_slice(body).map_err(|e| {
        // As `routes::json_error` maps a body that is not a `StartTraining`.
        let status = if e.is_data() { 422 } else { 400 };
        (status, e.to_string())
    })?;
    let req: TrainingRequest = parsed.into();
    TrainingConfig::validate(&req).map_err(|errors| {
        assert!(!errors.is_empty(), "a refusal names at least one field");
        let api = ApiError::from(errors);
        (api.status_code().as_u16(), api.message)
    })
}

/// Every value of an accepted configuration is in its documented range.
fn in_range(c: &TrainingConfig) -> bool {
    (0.0001..=1.0).contains(&c.learning_rate)
        && (1..=1024).contains(&c.batch_size)
        && (1..=1000).contains(&c.epochs)
        && (0.0..=0.9).contains(&c.validation_split)
        && (0.0..1.0).contains(&c.momentum)
        && (0.0..0.9).contains(&c.dropout)
        && c.hidden_sizes.as_ref().is_none_or(|h| (1..=8).contains(&h.len()) && h.iter().all(|w| (1..=8192).contains(w)))
}

/// Accepted in range, or refused with a 4xx and a message.
fn well_handled(body: &[u8]) -> bool {
    match outcome(body) {
        Ok(config) => in_range(&config),
        Err((status, message)) => (400..500).contains(&status) && !message.trim().is_empty(),
    }
}

/// Valid starting points: one per kind of architecture, with most fields set.
fn valid_configs() -> Vec<Value> {
    vec![
        json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 3, "batch_size": 16, "learning_rate": 0.01,
               "hidden_sizes": [32, 16], "dropout": 0.1, "optimizer": "sgd", "momentum": 0.9, "validation_split": 0.2, "seed": 7}),
        json!({"model_architecture": "custom_ai_model", "dataset_name": ["tempest", "sonnets"], "embedding_dim": 16,
               "hidden_size": 32, "num_layers": 1, "sequence_length": 20, "device": "cpu"}),
        json!({"model_architecture": "resnet18", "dataset_name": "digits", "batch_size": 8, "loss_function": "cross_entropy",
               "base_model": "start", "device": "auto"}),
    ]
}

/// Any JSON value, at most three levels deep, with numbers from the edges of every range.
#[derive(Debug, Clone)]
struct AnyJson(Value);

fn any_json(g: &mut Gen, depth: u32) -> Value {
    let edges = [0.0, -1.0, 1.0, 0.5, 0.9, 1e-4, 1e-5, 1024.0, 1025.0, 8192.0, 1e308, -1e308, 5e-324, 9.3e18, 1.8e19];
    let kinds = if depth == 0 { 5 } else { 7 };
    match u8::arbitrary(g) % kinds {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(g)),
        2 => json!(*g.choose(&edges).unwrap_or(&0.0)),
        3 => json!(i64::arbitrary(g)),
        4 => Value::String(String::arbitrary(g)),
        5 => Value::Array((0..usize::arbitrary(g) % 5).map(|_| any_json(g, depth - 1)).collect()),
        _ => Value::Object((0..usize::arbitrary(g) % 5).map(|_| (field_name(g), any_json(g, depth - 1))).collect()),
    }
}

/// A field the body knows, mostly; sometimes one it does not.
fn field_name(g: &mut Gen) -> String {
    const FIELDS: [&str; 19] = [
        "model_architecture",
        "dataset_name",
        "learning_rate",
        "batch_size",
        "epochs",
        "optimizer",
        "loss_function",
        "validation_split",
        "seed",
        "momentum",
        "embedding_dim",
        "hidden_size",
        "num_layers",
        "sequence_length",
        "hidden_sizes",
        "dropout",
        "base_model",
        "device",
        "unknown_field",
    ];
    if u8::arbitrary(g) % 8 == 0 {
        String::arbitrary(g)
    } else {
        (*g.choose(&FIELDS).unwrap_or(&"epochs")).to_owned()
    }
}

impl Arbitrary for AnyJson {
    fn arbitrary(g: &mut Gen) -> Self {
        Self(any_json(g, 3))
    }
}

/// A valid configuration with fields removed, replaced, added and its text cut or overwritten.
#[derive(Debug, Clone)]
struct Mutated(Vec<u8>);

impl Arbitrary for Mutated {
    fn arbitrary(g: &mut Gen) -> Self {
        let configs = valid_configs();
        let mut value = g.choose(&configs).cloned().unwrap_or(Value::Null);
        let map: &mut Map<String, Value> = value.as_object_mut().expect("valid configs are objects");
        for _ in 0..1 + usize::arbitrary(g) % 4 {
            let field = field_name(g);
            match u8::arbitrary(g) % 3 {
                0 => drop(map.remove(&field)),
                _ => drop(map.insert(field, any_json(g, 1))),
            }
        }
        let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
        match u8::arbitrary(g) % 4 {
            0 if !bytes.is_empty() => {
                let at = usize::arbitrary(g) % bytes.len();
                bytes[at] = u8::arbitrary(g);
            }
            1 => bytes.truncate(usize::arbitrary(g) % (bytes.len() + 1)),
            _ => {}
        }
        Self(bytes)
    }
}

/// Cases per generator: each is a few microseconds, so many run in well under a second.
const CASES: u64 = 2_000;

// Property 55: any start-training body (arbitrary JSON, or a valid configuration with fields
// removed, replaced with any JSON, added, or its text cut or overwritten) is either accepted
// with every value in its range, or refused with a 4xx whose message says why; it never panics.
#[test]
fn prop55_any_json_body_is_accepted_in_range_or_refused() {
    fn prop(body: AnyJson) -> bool {
        well_handled(&serde_json::to_vec(&body.0).unwrap_or_default())
    }
    QuickCheck::new().tests(CASES).quickcheck(prop as fn(AnyJson) -> bool);
}

#[test]
fn prop55_mutated_configs_are_accepted_in_range_or_refused() {
    fn prop(body: Mutated) -> bool {
        well_handled(&body.0)
    }
    QuickCheck::new().tests(CASES).quickcheck(prop as fn(Mutated) -> bool);
}

#[test]
fn the_valid_starting_points_are_accepted() {
    for config in valid_configs() {
        let body = serde_json::to_vec(&config).unwrap();
        assert!(outcome(&body).is_ok(), "{config}: {:?}", outcome(&body));
    }
}

/// The corpus: `ok-*.json` must be accepted, `bad-*` refused with a 4xx, whatever their bytes.
#[test]
fn the_training_config_corpus_is_accepted_or_refused_as_named() {
    for (name, body) in crate::corpus("training-config") {
        let result = outcome(&body);
        if name.starts_with("ok-") {
            assert!(result.as_ref().is_ok_and(in_range), "{name}: {result:?}");
        } else {
            assert!(name.starts_with("bad-"), "corpus files are named ok-* or bad-*: {name}");
            assert!(result.as_ref().is_err_and(|(s, m)| (400..500).contains(s) && !m.is_empty()), "{name}: {result:?}");
        }
    }
}
