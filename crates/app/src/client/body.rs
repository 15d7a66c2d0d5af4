//! The body of `trainyard train`'s start request: the named flags, then each `--set
//! field=value` in order.

use serde_json::{Map, Value};

use crate::cli::TrainArgs;

/// Parses one `--set field=value`: the value is JSON when it parses as JSON, else the text
/// itself as a string.
///
/// # Errors
/// When there is no `=` or the field is empty.
pub fn parse_set(raw: &str) -> Result<(String, Value), String> {
    let (field, value) = raw.split_once('=').ok_or_else(|| format!("'{raw}' is not field=value"))?;
    let field = field.trim();
    if field.is_empty() {
        return Err(format!("'{raw}' has no field name before '='"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((field.to_owned(), value))
}

/// The fields of `base`, then each of `sets` in order: a later value of a field replaces an
/// earlier one.
#[must_use]
pub fn with_sets(mut base: Map<String, Value>, sets: &[(String, Value)]) -> Map<String, Value> {
    for (field, value) in sets {
        base.insert(field.clone(), value.clone());
    }
    base
}

/// The start request of `train`: `--arch` is `model_architecture`, `--dataset`
/// `dataset_name` (a list when repeated), `--lr` `learning_rate`, then `--set` overrides.
#[must_use]
pub fn training_body(args: &TrainArgs) -> Value {
    let mut base = Map::new();
    base.insert("model_architecture".into(), Value::from(args.arch.clone()));
    let dataset = match args.dataset.as_slice() {
        [one] => Value::from(one.clone()),
        many => Value::from(many.to_vec()),
    };
    base.insert("dataset_name".into(), dataset);
    if let Some(epochs) = args.epochs {
        base.insert("epochs".into(), Value::from(epochs));
    }
    if let Some(lr) = args.lr {
        base.insert("learning_rate".into(), Value::from(lr));
    }
    if let Some(batch) = args.batch_size {
        base.insert("batch_size".into(), Value::from(batch));
    }
    Value::Object(with_sets(base, &args.set))
}

#[cfg(test)]
mod tests {
    use quickcheck::{Arbitrary, Gen, QuickCheck};
    use serde_json::json;

    use super::*;

    fn train_args(argv: &[&str]) -> TrainArgs {
        use clap::Parser;

        use crate::cli::{Cli, ClientCommand, Command};
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Some(Command::Client(ClientCommand::Train(args)))) => args,
            other => panic!("{argv:?}: {other:?}"),
        }
    }

    #[test]
    fn flags_become_the_api_fields_and_set_overrides_them() {
        let args = train_args(&["trainyard", "train", "--arch", "mlp", "--dataset", "iris", "--epochs", "3", "--lr", "0.01"]);
        assert_eq!(training_body(&args), json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 3, "learning_rate": 0.01}));
        let args = train_args(&[
            "trainyard",
            "train",
            "--arch",
            "custom_ai_model",
            "--dataset",
            "a",
            "--dataset",
            "b",
            "--batch-size",
            "8",
            "--epochs",
            "3",
            "--set",
            "epochs=5",
            "--set",
            "hidden_size=64",
            "--set",
            "optimizer=sgd",
            "--set",
            "epochs=7",
        ]);
        assert_eq!(
            training_body(&args),
            json!({"model_architecture": "custom_ai_model", "dataset_name": ["a", "b"], "batch_size": 8, "epochs": 7, "hidden_size": 64, "optimizer": "sgd"})
        );
    }

    #[test]
    fn values_are_json_when_they_parse_and_strings_otherwise() {
        assert_eq!(parse_set("hidden_sizes=[64,32]"), Ok(("hidden_sizes".into(), json!([64, 32]))));
        assert_eq!(parse_set("dropout=0.2"), Ok(("dropout".into(), json!(0.2))));
        assert_eq!(parse_set("optimizer=sgd"), Ok(("optimizer".into(), json!("sgd"))));
        assert_eq!(parse_set("device=cuda:0"), Ok(("device".into(), json!("cuda:0"))));
        assert_eq!(parse_set("seed=\"7\""), Ok(("seed".into(), json!("7"))));
        assert_eq!(parse_set("base_model="), Ok(("base_model".into(), json!(""))));
        assert_eq!(parse_set("expr=a=b"), Ok(("expr".into(), json!("a=b"))));
        assert!(parse_set("dropout").is_err());
        assert!(parse_set("=0.2").is_err());
    }

    /// A JSON value whose text round-trips exactly (numbers are integers or quarters).
    #[derive(Debug, Clone)]
    struct Json(Value);

    fn json_value(g: &mut Gen, depth: u32) -> Value {
        let pick = u32::arbitrary(g) % if depth == 0 { 5 } else { 7 };
        match pick {
            0 => Value::Null,
            1 => Value::Bool(bool::arbitrary(g)),
            2 => Value::from(i64::arbitrary(g)),
            3 => Value::from(f64::from(i32::arbitrary(g)) / 4.0),
            4 => Value::String(String::arbitrary(g)),
            5 => Value::Array((0..u8::arbitrary(g) % 4).map(|_| json_value(g, depth - 1)).collect()),
            _ => Value::Object((0..u8::arbitrary(g) % 4).map(|_| (String::arbitrary(g), json_value(g, depth - 1))).collect()),
        }
    }

    impl Arbitrary for Json {
        fn arbitrary(g: &mut Gen) -> Self {
            Self(json_value(g, 2))
        }
    }

    /// One `--set`: a field from a small set (so that fields repeat) or any name, and a value
    /// given as JSON text or as arbitrary text.
    #[derive(Debug, Clone)]
    struct SetFlag {
        field: String,
        value: Json,
        as_text: Option<String>,
    }

    impl Arbitrary for SetFlag {
        fn arbitrary(g: &mut Gen) -> Self {
            const FIELDS: &[&str] = &["epochs", "dropout", "hidden_sizes", "optimizer", "model_architecture", "seed"];
            let field = if bool::arbitrary(g) {
                (*g.choose(FIELDS).unwrap_or(&"epochs")).to_owned()
            } else {
                String::arbitrary(g).replace('=', "")
            };
            let as_text = bool::arbitrary(g).then(|| String::arbitrary(g));
            Self { field, value: Json::arbitrary(g), as_text }
        }
    }

    impl SetFlag {
        fn flag(&self) -> String {
            match &self.as_text {
                Some(text) => format!("{}={text}", self.field),
                None => format!("{}={}", self.field, self.value.0),
            }
        }
    }

    // Property 68: building the request body from any sequence of --set pairs equals folding
    // them into a JSON object in order (last wins), and values that are valid JSON round-trip.
    #[test]
    fn property_68_set_flags_fold_in_order_and_json_values_round_trip() {
        fn prop(base: Vec<(String, Json)>, flags: Vec<SetFlag>) -> bool {
            let base: Map<String, Value> = base.into_iter().map(|(k, v)| (k, v.0)).collect();
            let mut parsed = Vec::new();
            for flag in &flags {
                let text = flag.flag();
                let Ok((field, value)) = parse_set(&text) else {
                    // Only a field that trims to nothing is refused.
                    if flag.field.trim().is_empty() {
                        continue;
                    }
                    return false;
                };
                if field.is_empty() || field != flag.field.trim() {
                    return false;
                }
                let expected = match &flag.as_text {
                    None => flag.value.0.clone(),
                    Some(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone())),
                };
                if value != expected {
                    return false;
                }
                parsed.push((field, value));
            }
            let body = with_sets(base.clone(), &parsed);
            // Every field of the base or of a flag is there, and nothing else ...
            let mut fields: Vec<&String> = base.keys().chain(parsed.iter().map(|(f, _)| f)).collect();
            fields.sort();
            fields.dedup();
            let mut keys: Vec<&String> = body.keys().collect();
            keys.sort();
            if keys != fields {
                return false;
            }
            // ... each with its last flag's value, or the base's when no flag names it.
            fields.iter().all(|f| {
                let last = parsed.iter().rev().find(|(g, _)| g == *f).map(|(_, v)| v);
                body.get(*f) == last.or_else(|| base.get(*f))
            })
        }
        QuickCheck::new().tests(300).rng(Gen::new(12)).quickcheck(prop as fn(Vec<(String, Json)>, Vec<SetFlag>) -> bool);
    }
}
