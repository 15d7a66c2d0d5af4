//! Tests of [`ModelMeta`]: the round trip through the header, and files in the layout
//! earlier versions wrote.

use serde_json::json;

use super::*;

fn run_record(datasets: &[&str], base_model: Option<&str>) -> RunRecord {
    RunRecord {
        hyperparameters: Hyperparameters {
            learning_rate: 0.01,
            batch_size: 16,
            epochs: 3,
            optimizer: Optimizer::Sgd,
            loss_function: LossFunction::CrossEntropy,
            validation_split: 0.25,
            seed: u64::MAX,
            dropout: 0.5,
            momentum: 0.875,
        },
        final_metrics: Some(FinalMetrics { epoch: Some(3), loss: 0.125, accuracy: 0.75, val_loss: None, val_accuracy: None }),
        epochs_completed: Some(3),
        stopped: Some(true),
        // Text that reads as JSON stays text.
        session_id: "12345".into(),
        datasets: datasets.iter().map(|d| (*d).to_owned()).collect(),
        base_model: base_model.map(str::to_owned),
        device: "cpu".into(),
        kept: Some(Kept { keep: "best".into(), epoch: 2, metric: "val_loss".into(), value: Some(0.25), stopped_early: true }),
    }
}

fn table() -> ModelMeta {
    let shape = MlpShape { inputs: 2, hidden: vec![8], classes: 2, dropout: true };
    ModelMeta {
        parameters: shape.parameter_shapes().into_iter().collect(),
        parameter_count: Some(shape.parameter_count()),
        model: Model::Table(TableModel {
            shape,
            classes: vec!["cat".into(), "dog".into()],
            feature_names: vec!["a".into(), "b".into()],
            label_column: Some("true".into()),
            normalisation: Normalisation { mean: vec![0.5, -1.25], std: vec![2.0, 0.125] },
        }),
        run: Some(run_record(&["pets"], None)),
    }
}

fn image() -> ModelMeta {
    let input = ImageShape { channels: 1, height: 8, width: 8 };
    ModelMeta {
        model: Model::Image(ImageModel {
            arch: Architecture::Resnet18,
            input,
            classes: (0..10).map(|c| c.to_string()).collect(),
            normalisation: Normalisation { mean: vec![0.5], std: vec![0.25] },
            adaptation: vision::adaptation(Architecture::Resnet18, input),
        }),
        parameters: vision::parameter_shapes(Architecture::Resnet18, input, 10).unwrap().into_iter().collect(),
        parameter_count: Some(vision::parameter_count(Architecture::Resnet18, input, 10)),
        run: Some(run_record(&["digits"], None)),
    }
}

fn char_model() -> ModelMeta {
    ModelMeta {
        model: Model::Char(CharModel {
            sizes: CharLstmOptions { embedding_dim: 4, hidden_size: 3, num_layers: 2, sequence_length: 50 },
            vocabulary: Vocabulary::from_chars(vec!['\n', ' ', '"', 'a', '\u{e9}']),
        }),
        parameters: BTreeMap::new(),
        parameter_count: Some(123),
        run: Some(run_record(&["tempest", "sonnets"], Some("owner"))),
    }
}

fn header(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn every_description_survives_the_header_round_trip() {
    for meta in [table(), image(), char_model()] {
        let header = meta.to_header();
        assert_eq!(header["format"], "pt");
        assert_eq!(ModelMeta::from_header(&header).unwrap(), meta, "{header:?}");
        // A checkpoint's description, without a run.
        let bare = ModelMeta { run: None, ..meta };
        assert_eq!(ModelMeta::from_header(&bare.to_header()).unwrap(), bare);
    }
}

#[test]
fn exactly_the_text_keys_are_written_as_text() {
    for meta in [table(), image(), char_model()] {
        let Value::Object(object) = meta.to_value() else { panic!("an object") };
        for (key, value) in &object {
            assert_eq!(value.is_string(), TEXT_KEYS.contains(&key.as_str()), "{key}: {value}");
        }
    }
}

#[test]
fn the_written_layout_is_the_one_earlier_versions_wrote() {
    let value = table().to_value();
    assert_eq!(value["architecture"], "mlp");
    assert_eq!(value["model"], json!({ "architecture": "mlp", "layers": [2, 8, 2], "dropout_layers": true }));
    assert_eq!(
        (value["layers"].clone(), value["input_features"].clone(), value["sample_shape"].clone()),
        (json!([2, 8, 2]), json!(2), json!([2]))
    );
    assert_eq!(value["final_metrics"], json!({ "epoch": 3, "loss": 0.125, "accuracy": 0.75, "val_loss": null, "val_accuracy": null }));
    assert_eq!((value["dataset"].clone(), value["datasets"].clone()), (json!("pets"), json!(["pets"])));
    assert_eq!(value["hyperparameters"]["optimizer"], "sgd");
    let value = image().to_value();
    assert_eq!(value["model"], json!({ "architecture": "resnet18", "input_shape": [1, 8, 8], "classes": 10 }));
    assert_eq!(value["input_shape"], json!([1, 8, 8]));
    assert!(value["pixel_scale"].as_str().unwrap().contains("255"));
    let value = char_model().to_value();
    assert_eq!(value["architecture"], "custom_ai_model");
    assert_eq!((value["vocab_size"].clone(), value["hidden_dim"].clone()), (json!(5), json!(3)));
    assert_eq!(value["vocabulary"], json!(["\n", " ", "\"", "a", "\u{e9}"]));
    assert_eq!(value["base_model"], "owner");
    // A run that finished no epoch says so.
    let mut meta = table();
    meta.run.as_mut().unwrap().final_metrics = None;
    assert_eq!(meta.to_value()["final_metrics"], Value::Null);
    assert_eq!(meta.to_header()["final_metrics"], "null");
}

#[test]
fn reads_an_mlp_file_in_todays_layout() {
    let meta = ModelMeta::from_header(&header(&[
        ("architecture", "mlp"),
        ("model", r#"{"architecture":"mlp","dropout_layers":false,"layers":[4,16,3]}"#),
        ("sample_shape", "[4]"),
        ("classes", r#"["setosa","versicolor","virginica"]"#),
        ("parameters", r#"{"layers.0.bias":[16],"layers.0.weight":[16,4],"layers.2.bias":[3],"layers.2.weight":[3,16]}"#),
        ("parameter_count", "131"),
        (
            "hyperparameters",
            r#"{"batch_size":16,"dropout":0.0,"epochs":30,"learning_rate":0.01,"loss_function":"cross_entropy","optimizer":"adam","seed":42,"validation_split":0.2}"#,
        ),
        ("final_metrics", r#"{"accuracy":0.95,"epoch":30,"loss":0.125,"val_accuracy":0.9,"val_loss":0.25}"#),
        ("epochs_completed", "30"),
        ("stopped", "false"),
        ("session_id", "0b7d1f2e"),
        ("dataset", "iris"),
        ("device", "cpu"),
        ("layers", "[4,16,3]"),
        ("input_features", "4"),
        ("feature_names", r#"["sepal_length","sepal_width","petal_length","petal_width"]"#),
        ("label_column", "species"),
        ("feature_mean", "[5.8,3.0,3.7,1.2]"),
        ("feature_std", "[0.8,0.4,1.7,0.7]"),
        ("format", "pt"),
    ]))
    .unwrap();
    let Model::Table(m) = &meta.model else { panic!("{meta:?}") };
    assert_eq!(m.shape, MlpShape { inputs: 4, hidden: vec![16], classes: 3, dropout: false });
    assert_eq!((m.classes.len(), m.feature_names[3].as_str(), m.label_column.as_deref()), (3, "petal_width", Some("species")));
    assert_eq!(m.normalisation.mean, [5.8, 3.0, 3.7, 1.2]);
    assert_eq!((meta.parameters.len(), meta.parameter_count), (4, Some(131)));
    let run = meta.run.unwrap();
    assert_eq!((run.hyperparameters.optimizer, run.hyperparameters.momentum), (Optimizer::Adam, 0.0));
    assert_eq!(run.final_metrics.unwrap().epoch, Some(30));
    assert_eq!((run.epochs_completed, run.stopped, run.datasets), (Some(30), Some(false), vec!["iris".to_owned()]));
}

#[test]
fn reads_an_image_file_in_todays_layout() {
    let meta = ModelMeta::from_header(&header(&[
        ("architecture", "cnn"),
        ("model", r#"{"architecture":"cnn","classes":2,"input_shape":[3,8,8]}"#),
        ("classes", r#"["cat","dog"]"#),
        ("input_shape", "[3,8,8]"),
        ("adaptation", "two 5x5 convolutions"),
        ("channel_mean", "[0.5,0.5,0.5]"),
        ("channel_std", "[0.25,0.25,0.25]"),
        ("pixel_scale", PIXEL_SCALE),
        ("final_metrics", "null"),
        ("session_id", "s1"),
        (
            "hyperparameters",
            r#"{"batch_size":16,"dropout":0.1,"epochs":1,"learning_rate":0.01,"loss_function":"cross_entropy","optimizer":"adam","seed":42,"validation_split":0.2}"#,
        ),
        ("device", "cuda:0"),
    ]))
    .unwrap();
    assert_eq!(
        meta.model.net_spec(),
        Some(NetSpec::Image { arch: Architecture::Cnn, input: ImageShape { channels: 3, height: 8, width: 8 }, classes: 2 })
    );
    let Model::Image(m) = &meta.model else { panic!() };
    assert_eq!((m.adaptation.as_str(), m.normalisation.std.len()), ("two 5x5 convolutions", 3));
    let run = meta.run.unwrap();
    assert_eq!((run.final_metrics, run.hyperparameters.dropout, run.device.as_str()), (None, 0.1, "cuda:0"));
}

#[test]
fn reads_a_char_lstm_file_in_todays_layout() {
    // The run's whole config as hyperparameters, final metrics without the epoch, a list of datasets.
    let meta = ModelMeta::from_header(&header(&[
        ("architecture", "custom_ai_model"),
        ("vocab_size", "3"),
        ("embedding_dim", "4"),
        ("hidden_dim", "3"),
        ("num_layers", "2"),
        ("sequence_length", "50"),
        ("vocabulary", r#"["\n"," ","a"]"#),
        ("datasets", r#"["tempest"]"#),
        (
            "hyperparameters",
            r#"{"model_architecture":"custom_ai_model","dataset_name":"tempest","learning_rate":0.002,"batch_size":32,"epochs":3,"optimizer":"adam","loss_function":"cross_entropy","validation_split":0.1,"seed":42,"momentum":0.0,"char_lstm":{"embedding_dim":4,"hidden_size":3,"num_layers":2,"sequence_length":50},"dropout":0.0,"base_model":"owner","device":"auto"}"#,
        ),
        ("final_metrics", r#"{"loss":2.5,"accuracy":0.25,"val_loss":null,"val_accuracy":null}"#),
        ("session_id", "abc"),
        ("device", "cpu"),
        ("base_model", "owner"),
        ("format", "pt"),
    ]))
    .unwrap();
    let Model::Char(m) = &meta.model else { panic!("{meta:?}") };
    assert_eq!(m.sizes, CharLstmOptions { embedding_dim: 4, hidden_size: 3, num_layers: 2, sequence_length: 50 });
    assert_eq!(m.vocabulary.chars(), ['\n', ' ', 'a']);
    let run = meta.run.unwrap();
    assert_eq!((run.hyperparameters.batch_size, run.hyperparameters.learning_rate), (32, 0.002));
    assert_eq!(run.final_metrics.unwrap().epoch, None);
    assert_eq!((run.datasets, run.base_model.as_deref(), run.epochs_completed), (vec!["tempest".to_owned()], Some("owner"), None));
}

#[test]
fn reads_a_checkpoint_in_todays_layout() {
    // A char-LSTM checkpoint: the model's keys, the epoch and its metrics, no run.
    let meta = ModelMeta::from_header(&header(&[
        ("architecture", "custom_ai_model"),
        ("vocab_size", "2"),
        ("embedding_dim", "4"),
        ("hidden_dim", "3"),
        ("num_layers", "1"),
        ("sequence_length", "10"),
        ("vocabulary", r#"["a","b"]"#),
        ("epoch", "2"),
        ("metrics", r#"{"epoch":2,"loss":1.0}"#),
    ]))
    .unwrap();
    assert_eq!((meta.model.architecture(), meta.run), (Architecture::CharLstm, None));
}

#[test]
fn says_what_a_foreign_file_lacks() {
    assert_eq!(ModelMeta::from_header(&HashMap::new()).unwrap_err(), "it has no Trainyard model description");
    assert_eq!(ModelMeta::from_header(&header(&[("format", "pt")])).unwrap_err(), "it has no Trainyard model description");
    assert_eq!(ModelMeta::from_header(&header(&[("architecture", "bert")])).unwrap_err(), "unknown architecture 'bert'");
    assert_eq!(ModelMeta::from_header(&header(&[("architecture", "mlp")])).unwrap_err(), "it has no Trainyard model description");
    let no_classes = header(&[("architecture", "mlp"), ("model", r#"{"architecture":"mlp","layers":[2,2]}"#)]);
    assert_eq!(ModelMeta::from_header(&no_classes).unwrap_err(), "it lists no classes");
    let no_vocabulary = header(&[("architecture", "custom_ai_model"), ("embedding_dim", "4")]);
    assert_eq!(ModelMeta::from_header(&no_vocabulary).unwrap_err(), "its description lacks 'vocabulary'");
}
