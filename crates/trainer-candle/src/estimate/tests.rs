//! Tests of the memory estimate: exact parameter counts against the models built in a
//! `VarMap`, the optimizer state it assumes against the optimizer's, and how the estimate
//! moves with the config.

use candle_core::{DType, Device as Backend};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{json, Value};
use time::OffsetDateTime;
use trainyard_domain::{
    registry::{DatasetFormat, DatasetInfo},
    DatasetName, TrainingRequest,
};

use super::*;
use crate::{
    epoch_loop::named_vars,
    optim::TrainOptimizer,
    rng::SplitMix64,
    vision::{self, ImageShape},
};

fn record(format: DatasetFormat, samples: u64, dimensions: &str, statistics: Value) -> DatasetRecord {
    DatasetRecord {
        name: DatasetName::new("data").unwrap(),
        file_path: "/nonexistent".into(),
        size_bytes: 0,
        info: DatasetInfo { format, sample_count: Some(samples), dimensions: Some(dimensions.into()), statistics },
        created_at: OffsetDateTime::UNIX_EPOCH,
        content_hash: None,
    }
}

fn digits() -> DatasetRecord {
    record(DatasetFormat::Npz, 1797, "8x8x1", json!({ "classes": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"] }))
}

fn config(arch: &str, req: TrainingRequest) -> TrainingConfig {
    TrainingConfig::validate(&TrainingRequest { model_architecture: Some(arch.into()), dataset_name: Some("data".into()), ..req }).unwrap()
}

/// Trainable numbers of the variables in `varmap` (buffers left out).
fn trained_in(varmap: &VarMap) -> usize {
    named_vars(varmap).iter().filter(|(name, _)| !vision::is_buffer(name)).map(|(_, v)| v.elem_count()).sum()
}

#[test]
fn image_parameter_counts_are_those_of_the_built_models() {
    let input = ImageShape { channels: 1, height: 8, width: 8 };
    for arch in ["cnn", "resnet18", "resnet50", "vgg16", "mobilenet_v2"] {
        let cfg = config(arch, TrainingRequest::default());
        let varmap = VarMap::new();
        vision::build(cfg.model_architecture, &varmap, input, 10, 0.0, &mut SplitMix64::new(1), &Backend::Cpu).unwrap();
        let f = footprint(&cfg, &[digits()], Device::Cpu).unwrap();
        assert_eq!(f.parameters, trained_in(&varmap), "{arch}");
        let largest = named_vars(&varmap).iter().map(|(_, v)| v.elem_count()).max().unwrap();
        assert_eq!(f.largest, largest, "{arch}");
        let kernels = named_vars(&varmap).iter().filter(|(_, v)| v.rank() == 4).map(|(_, v)| v.elem_count()).max().unwrap();
        assert_eq!(f.largest_kernel, kernels, "{arch}");
    }
}

#[test]
fn mlp_and_lstm_parameter_counts_are_those_of_the_built_models() {
    let table = record(DatasetFormat::Csv, 150, "4", json!({ "class_counts": { "a": 50, "b": 50, "c": 50 } }));
    let cfg = config("mlp", TrainingRequest { hidden_sizes: Some(vec![16, 8]), ..TrainingRequest::default() });
    let varmap = VarMap::new();
    let shape = MlpShape { inputs: 4, hidden: vec![16, 8], classes: 3, dropout: false };
    crate::mlp::Mlp::new(&varmap, &shape, 0.0, &mut SplitMix64::new(1), &Backend::Cpu).unwrap();
    assert_eq!(footprint(&cfg, &[table], Device::Cpu).unwrap().parameters, trained_in(&varmap));
    assert_eq!(trained_in(&varmap), 4 * 16 + 16 + 16 * 8 + 8 + 8 * 3 + 3);

    let text = record(DatasetFormat::Text, 5000, "vocab=40", json!({ "vocabulary_size": 40 }));
    let cfg = config(
        "custom_ai_model",
        TrainingRequest { embedding_dim: Some(8), hidden_size: Some(12), num_layers: Some(2), ..TrainingRequest::default() },
    );
    let varmap = VarMap::new();
    let opts = cfg.char_lstm.unwrap();
    crate::lstm::CharLstm::new(
        crate::lstm::CharLstmConfig::from_options(opts, 40),
        VarBuilder::from_varmap(&varmap, DType::F32, &Backend::Cpu),
        1,
    )
    .unwrap();
    assert_eq!(footprint(&cfg, &[text], Device::Cpu).unwrap().parameters, trained_in(&varmap));
}

#[test]
fn optimizer_state_is_what_the_optimizer_keeps() {
    for &kind in Optimizer::ALL {
        for momentum in [0.0, 0.9] {
            let w = candle_core::Var::ones(3, DType::F32, &Backend::Cpu).unwrap();
            let mut opt = TrainOptimizer::new(kind, vec![("w".into(), w.clone())], 0.01, momentum);
            opt.backward_step(&w.as_tensor().sqr().unwrap().sum_all().unwrap()).unwrap();
            // `optim.steps` and one tensor per state kind.
            assert_eq!(opt.state().unwrap().len() - 1, state_tensors(kind, momentum), "{kind} momentum {momentum}");
        }
    }
}

#[test]
fn dimensions_parse_as_the_inspector_writes_them() {
    assert_eq!(parse_dimensions("8x8x1"), Some(Samples::Image(ImageShape { channels: 1, height: 8, width: 8 })));
    assert_eq!(parse_dimensions("32x28x3"), Some(Samples::Image(ImageShape { channels: 3, height: 32, width: 28 })));
    assert_eq!(parse_dimensions("13"), Some(Samples::Table(13)));
    assert_eq!(parse_dimensions("5x6"), Some(Samples::Table(30)));
    assert_eq!(parse_dimensions("vocab=65"), Some(Samples::Text(65)));
    assert_eq!(parse_dimensions("vocab=x"), None);
    assert_eq!(parse_dimensions("wide"), None);
}

#[test]
fn the_estimate_grows_with_batch_and_optimizer_state() {
    let at = |arch: &str, req: TrainingRequest| estimate(&config(arch, req), &[digits()], Device::Cpu).unwrap().host_mb;
    let req = |batch, optimizer: &str| TrainingRequest {
        batch_size: Some(batch),
        optimizer: Some(optimizer.into()),
        ..TrainingRequest::default()
    };
    for arch in ["cnn", "resnet18", "vgg16", "mobilenet_v2"] {
        assert!(at(arch, req(1024, "adam")) > at(arch, req(16, "adam")), "{arch}");
        if arch != "cnn" {
            // The CNN's 60 thousand parameters are a fraction of a megabyte either way.
            assert!(at(arch, req(32, "adam")) > at(arch, req(32, "sgd")), "{arch}");
        }
    }
    // VGG-16's 134 million parameters: weights, gradients and Adam's two moments are 2 GB.
    assert!(at("vgg16", req(32, "adam")) > 2048);
    assert!(at("cnn", req(32, "adam")) < 256);
}

#[test]
fn on_a_gpu_the_model_moves_to_the_device() {
    let cfg = config("resnet18", TrainingRequest::default());
    let cpu = estimate(&cfg, &[digits()], Device::Cpu).unwrap();
    let gpu = estimate(&cfg, &[digits()], Device::Cuda(0)).unwrap();
    assert_eq!((cpu.device, cpu.gpu_mb), (Device::Cpu, 0));
    assert_eq!(gpu.device, Device::Cuda(0));
    assert!(gpu.gpu_mb > 4 * 11_000_000 / (1 << 20), "{gpu:?}");
    assert!(gpu.host_mb < cpu.host_mb, "{gpu:?} {cpu:?}");
}

#[test]
fn datasets_that_say_too_little_are_refused() {
    let cfg = config("cnn", TrainingRequest::default());
    let mut vague = digits();
    vague.info.dimensions = None;
    assert!(estimate(&cfg, &[vague], Device::Cpu).unwrap_err().contains("dimensions"));
    let mut uncounted = digits();
    uncounted.info.sample_count = None;
    assert!(estimate(&cfg, &[uncounted], Device::Cpu).unwrap_err().contains("sample count"));
    assert!(estimate(&cfg, &[], Device::Cpu).is_err());
    let text = record(DatasetFormat::Text, 100, "vocab=20", Value::Null);
    assert!(estimate(&cfg, &[text], Device::Cpu).is_err());
}
