//! Tests of the image classifiers: torchvision's names, shapes and parameter counts, training
//! on small images, the pooling layers against naive loops, batch norm against PyTorch's
//! formulas, depthwise convolution against candle's grouped one, and seeded initialisation.

use std::{collections::HashMap, time::Instant};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{loss::cross_entropy, AdamW, Optimizer, ParamsAdamW, VarMap};
use trainyard_domain::config::Architecture;

use super::{
    layers::{adaptive_avg_pool2d, depthwise_conv2d, max_pool2d, max_pool2d_with, relu6, Activation, ConvSpec, Params},
    *,
};

const IMAGE_ARCHS: [Architecture; 5] =
    [Architecture::Cnn, Architecture::Resnet18, Architecture::Resnet50, Architecture::Vgg16, Architecture::MobilenetV2];

fn shape(channels: usize, height: usize, width: usize) -> ImageShape {
    ImageShape { channels, height, width }
}

const IMAGENET: ImageShape = ImageShape { channels: 3, height: 224, width: 224 };

/// Distinct values in a random order (a permutation of `0..n`, scaled), as a `dims` tensor.
fn distinct(dims: &[usize], seed: u64) -> Tensor {
    let n: usize = dims.iter().product();
    let mut values: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut values);
    #[allow(clippy::cast_precision_loss)]
    let values: Vec<f32> = values.into_iter().map(|v| v as f32 * 0.01 - 1.0).collect();
    Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
}

/// Values uniform in `[-1, 1)`.
pub(super) fn uniform(dims: &[usize], seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let n: usize = dims.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.uniform_f32(-1.0, 1.0)).collect::<Vec<_>>(), dims, &Device::Cpu).unwrap()
}

pub(super) fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

pub(super) fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

/// Two tensors of the same shape, equal within 1e-4 relative.
pub(super) fn assert_tensors_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    assert_close(&values(a), &values(b), 1e-4, what);
}

fn shape_of<'a>(shapes: &'a [(String, Vec<usize>)], name: &str) -> &'a [usize] {
    &shapes.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1
}

#[test]
fn parameter_counts_and_names_match_torchvision() {
    assert_eq!(parameter_count(Architecture::Resnet18, IMAGENET, 1000), 11_689_512);
    assert_eq!(parameter_count(Architecture::Resnet50, IMAGENET, 1000), 25_557_032);
    assert_eq!(parameter_count(Architecture::Vgg16, IMAGENET, 1000), 138_357_544);
    assert_eq!(parameter_count(Architecture::MobilenetV2, IMAGENET, 1000), 3_504_872);
    assert_eq!(parameter_count(Architecture::Mlp, IMAGENET, 1000), 0);

    // Entries of torchvision's `state_dict()`, buffers included.
    for (arch, entries) in
        [(Architecture::Resnet18, 122), (Architecture::Resnet50, 320), (Architecture::Vgg16, 32), (Architecture::MobilenetV2, 314)]
    {
        assert_eq!(parameter_shapes(arch, IMAGENET, 1000).unwrap().len(), entries, "{arch:?}");
    }

    let r18 = parameter_shapes(Architecture::Resnet18, IMAGENET, 1000).unwrap();
    let first: Vec<&str> = r18.iter().take(7).map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        first,
        [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked",
            "layer1.0.conv1.weight"
        ]
    );
    assert_eq!(r18.last().unwrap().0, "fc.bias");
    assert_eq!(shape_of(&r18, "conv1.weight"), [64, 3, 7, 7]);
    assert_eq!(shape_of(&r18, "layer4.1.bn2.running_var"), [512]);
    assert_eq!(shape_of(&r18, "layer4.1.bn2.num_batches_tracked"), [] as [usize; 0]);
    assert_eq!(shape_of(&r18, "layer2.0.downsample.0.weight"), [128, 64, 1, 1]);
    assert_eq!(shape_of(&r18, "layer3.0.downsample.1.running_mean"), [256]);
    assert!(!r18.iter().any(|(n, _)| n.starts_with("layer1.0.downsample")));
    assert_eq!(shape_of(&r18, "fc.weight"), [1000, 512]);

    let r50 = parameter_shapes(Architecture::Resnet50, IMAGENET, 1000).unwrap();
    assert_eq!(shape_of(&r50, "layer1.0.downsample.0.weight"), [256, 64, 1, 1]);
    assert_eq!(shape_of(&r50, "layer3.5.conv3.weight"), [1024, 256, 1, 1]);
    assert_eq!(shape_of(&r50, "layer4.2.bn3.weight"), [2048]);
    assert_eq!(shape_of(&r50, "fc.weight"), [1000, 2048]);

    let vgg = parameter_shapes(Architecture::Vgg16, IMAGENET, 1000).unwrap();
    let convs: Vec<usize> = vgg.iter().filter_map(|(n, _)| n.strip_prefix("features.")?.strip_suffix(".weight")?.parse().ok()).collect();
    assert_eq!(convs, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]);
    assert_eq!(shape_of(&vgg, "features.28.weight"), [512, 512, 3, 3]);
    assert_eq!(shape_of(&vgg, "classifier.0.weight"), [4096, 25088]);
    assert_eq!(shape_of(&vgg, "classifier.3.weight"), [4096, 4096]);
    assert_eq!(shape_of(&vgg, "classifier.6.bias"), [1000]);

    let mnv2 = parameter_shapes(Architecture::MobilenetV2, IMAGENET, 1000).unwrap();
    assert_eq!(shape_of(&mnv2, "features.0.0.weight"), [32, 3, 3, 3]);
    assert_eq!(shape_of(&mnv2, "features.1.conv.0.0.weight"), [32, 1, 3, 3]);
    assert_eq!(shape_of(&mnv2, "features.1.conv.1.weight"), [16, 32, 1, 1]);
    assert_eq!(shape_of(&mnv2, "features.1.conv.2.running_var"), [16]);
    assert_eq!(shape_of(&mnv2, "features.2.conv.0.0.weight"), [96, 16, 1, 1]);
    assert_eq!(shape_of(&mnv2, "features.2.conv.1.0.weight"), [96, 1, 3, 3]);
    assert_eq!(shape_of(&mnv2, "features.17.conv.2.weight"), [320, 960, 1, 1]);
    assert_eq!(shape_of(&mnv2, "features.17.conv.3.running_mean"), [320]);
    assert_eq!(shape_of(&mnv2, "features.18.0.weight"), [1280, 320, 1, 1]);
    assert_eq!(shape_of(&mnv2, "features.18.1.weight"), [1280]);
    assert_eq!(shape_of(&mnv2, "classifier.1.weight"), [1000, 1280]);

    // Small inputs: the CIFAR stem, and LeNet's flatten size.
    let small = parameter_shapes(Architecture::Resnet18, shape(1, 8, 8), 10).unwrap();
    assert_eq!(shape_of(&small, "conv1.weight"), [64, 1, 3, 3]);
    assert_eq!(shape_of(&parameter_shapes(Architecture::Cnn, shape(1, 28, 28), 10).unwrap(), "fc1.weight"), [120, 400]);
    assert_eq!(shape_of(&parameter_shapes(Architecture::Cnn, shape(3, 32, 32), 10).unwrap(), "fc1.weight"), [120, 576]);
    assert_eq!(shape_of(&parameter_shapes(Architecture::Cnn, shape(1, 8, 8), 10).unwrap(), "fc1.weight"), [120, 64]);
    assert_eq!(shape_of(&parameter_shapes(Architecture::Cnn, shape(1, 1, 1), 10).unwrap(), "fc1.weight"), [120, 16]);
    assert_eq!(parameter_count(Architecture::Cnn, shape(1, 28, 28), 10), 61_706);
}

#[test]
fn buffers_are_told_apart() {
    assert!(is_buffer("bn1.running_mean"));
    assert!(is_buffer("layer4.1.bn2.running_var"));
    assert!(is_buffer("features.0.1.num_batches_tracked"));
    assert!(!is_buffer("bn1.weight"));
    assert!(!is_buffer("fc.bias"));
    assert!(!is_buffer("running_mean_fc.weight"));
}

#[test]
fn build_creates_exactly_the_listed_tensors_and_seeds_fix_them() {
    let input = shape(1, 8, 8);
    for arch in [Architecture::Cnn, Architecture::Resnet18, Architecture::MobilenetV2] {
        let varmap = VarMap::new();
        build(arch, &varmap, input, 10, 0.0, &mut SplitMix64::new(7), &Device::Cpu).unwrap();
        let data = varmap.data().lock().unwrap();
        let mut have: Vec<(String, Vec<usize>)> = data.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
        have.sort();
        let mut want = parameter_shapes(arch, input, 10).unwrap();
        want.sort();
        assert_eq!(have, want, "{arch:?}");
        for (name, var) in data.iter() {
            let dtype = if name.ends_with("num_batches_tracked") { DType::I64 } else { DType::F32 };
            assert_eq!(var.dtype(), dtype, "{name}");
        }

        let again = VarMap::new();
        build(arch, &again, input, 10, 0.0, &mut SplitMix64::new(7), &Device::Cpu).unwrap();
        let other = VarMap::new();
        build(arch, &other, input, 10, 0.0, &mut SplitMix64::new(8), &Device::Cpu).unwrap();
        let (again, other) = (again.data().lock().unwrap(), other.data().lock().unwrap());
        let mut differs = false;
        for (name, var) in data.iter().filter(|(n, _)| !n.ends_with("num_batches_tracked")) {
            assert_eq!(values(var.as_tensor()), values(again[name].as_tensor()), "{arch:?} {name}");
            differs |= values(var.as_tensor()) != values(other[name].as_tensor());
        }
        assert!(differs, "{arch:?}: another seed, other weights");
    }
}

#[test]
fn initialisation_follows_torchvision() {
    let varmap = VarMap::new();
    build(Architecture::Resnet18, &varmap, IMAGENET, 10, 0.0, &mut SplitMix64::new(1), &Device::Cpu).unwrap();
    let data = varmap.data().lock().unwrap();
    let std = |name: &str| {
        let v = values(data[name].as_tensor());
        #[allow(clippy::cast_precision_loss)]
        let n = v.len() as f32;
        let mean = v.iter().sum::<f32>() / n;
        (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt())
    };
    // kaiming_normal_(fan_out): std sqrt(2 / (out * k * k)).
    let (mean, sd) = std("layer3.0.conv1.weight");
    assert!(mean.abs() < 0.002, "{mean}");
    let want = (2.0f32 / (256.0 * 9.0)).sqrt();
    assert!((sd - want).abs() < 0.02 * want, "{sd} vs {want}");
    assert_eq!(values(data["bn1.weight"].as_tensor()), vec![1.0; 64]);
    assert_eq!(values(data["bn1.bias"].as_tensor()), vec![0.0; 64]);
    assert_eq!(values(data["bn1.running_var"].as_tensor()), vec![1.0; 64]);
    assert_eq!(data["bn1.num_batches_tracked"].as_tensor().to_scalar::<i64>().unwrap(), 0);
    // fc as nn.Linear: uniform in ±1/sqrt(512).
    assert!(values(data["fc.weight"].as_tensor()).iter().all(|w| w.abs() <= 1.0 / 512f32.sqrt()));
}

/// Adam steps on one fixed batch lower the loss; returns the logits' shape.
fn trains(arch: Architecture, input: ImageShape, batch: usize, steps: usize) -> Vec<usize> {
    trains_with(arch, input, batch, steps, |vars| {
        Box::new(AdamW::new(vars, ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..ParamsAdamW::default() }).unwrap())
    })
}

/// The optimizers the tests use.
trait Step {
    fn step(&mut self, loss: &Tensor);
}

impl<O: Optimizer> Step for O {
    fn step(&mut self, loss: &Tensor) {
        self.backward_step(loss).unwrap();
    }
}

/// Steps of the optimizer `make` returns on one fixed batch lower the loss; returns the logits' shape.
fn trains_with(arch: Architecture, input: ImageShape, batch: usize, steps: usize, make: impl Fn(Vec<Var>) -> Box<dyn Step>) -> Vec<usize> {
    let classes = 3;
    let varmap = VarMap::new();
    let mut rng = SplitMix64::new(11);
    let model = build(arch, &varmap, input, classes, 0.0, &mut rng, &Device::Cpu).unwrap();
    let trained: Vec<Var> = varmap.data().lock().unwrap().iter().filter(|(n, _)| !is_buffer(n)).map(|(_, v)| v.clone()).collect();
    let mut opt = make(trained);
    let x = uniform(&[batch, input.channels, input.height, input.width], 3);
    #[allow(clippy::cast_possible_truncation)]
    let y = Tensor::from_vec((0..batch).map(|i| (i % classes) as u32).collect::<Vec<_>>(), batch, &Device::Cpu).unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let loss = cross_entropy(&model.forward(&x, Mode::Train(&mut rng)).unwrap(), &y).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.step(&loss);
    }
    let last = cross_entropy(&model.forward(&x, Mode::Train(&mut rng)).unwrap(), &y).unwrap().to_scalar::<f32>().unwrap();
    assert!(last < losses[0], "{arch:?} {input:?}: losses {losses:?} then {last}");
    let logits = model.forward(&x, Mode::Eval).unwrap();
    assert!(values(&logits).iter().all(|v| v.is_finite()));
    logits.dims().to_vec()
}

#[test]
fn cnn_trains_on_small_images() {
    assert_eq!(trains(Architecture::Cnn, shape(1, 8, 8), 6, 5), [6, 3]);
    assert_eq!(trains(Architecture::Cnn, shape(3, 32, 32), 6, 5), [6, 3]);
    assert_eq!(trains(Architecture::Cnn, shape(1, 1, 1), 6, 5), [6, 3]);
}

#[test]
fn resnet18_trains_on_small_images() {
    assert_eq!(trains(Architecture::Resnet18, shape(1, 8, 8), 4, 4), [4, 3]);
    assert_eq!(trains(Architecture::Resnet18, shape(3, 32, 32), 4, 3), [4, 3]);
}

#[test]
fn resnet50_trains_on_small_images() {
    assert_eq!(trains(Architecture::Resnet50, shape(1, 8, 8), 4, 3), [4, 3]);
}

#[test]
fn mobilenet_v2_trains_on_small_images() {
    assert_eq!(trains(Architecture::MobilenetV2, shape(1, 8, 8), 4, 4), [4, 3]);
    assert_eq!(trains(Architecture::MobilenetV2, shape(3, 32, 32), 4, 3), [4, 3]);
}

#[test]
fn vgg16_trains_on_small_images() {
    let start = Instant::now();
    let sgd = |vars| -> Box<dyn Step> { Box::new(candle_nn::SGD::new(vars, 0.01).unwrap()) };
    assert_eq!(trains_with(Architecture::Vgg16, shape(1, 8, 8), 2, 1, sgd), [2, 3]);
    eprintln!("vgg16: {:?}", start.elapsed());
}

/// The model over zeros (cheap to allocate), for shapes.
fn zero_model(arch: Architecture, input: ImageShape, classes: usize) -> (VarMap, Box<dyn ImageClassifier>) {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, dims) in parameter_shapes(arch, input, classes).unwrap() {
            let dtype = if name.ends_with("num_batches_tracked") { DType::I64 } else { DType::F32 };
            let init = if name.ends_with("running_var") {
                Tensor::ones(dims, dtype, &Device::Cpu)
            } else {
                Tensor::zeros(dims, dtype, &Device::Cpu)
            };
            data.insert(name, Var::from_tensor(&init.unwrap()).unwrap());
        }
    }
    let model = load(arch, &varmap, input, classes, 0.5, &Device::Cpu).unwrap();
    (varmap, model)
}

#[test]
fn every_architecture_gives_batch_by_classes_on_small_and_odd_images() {
    for arch in IMAGE_ARCHS {
        // 64x64 takes the standard stems and strides, the others the small-input ones.
        for input in [shape(1, 8, 8), shape(3, 32, 32), shape(2, 13, 9), shape(3, 64, 64)] {
            let (_, model) = zero_model(arch, input, 5);
            let x = uniform(&[2, input.channels, input.height, input.width], 1);
            assert_eq!(model.forward(&x, Mode::Eval).unwrap().dims(), [2, 5], "{arch:?} {input:?}");
            if arch != Architecture::Vgg16 || input.height == 8 {
                let out = model.forward(&x, Mode::Train(&mut SplitMix64::new(1))).unwrap();
                out.sum_all().unwrap().backward().unwrap();
            }
        }
    }
}

#[test]
fn load_finds_saved_weights_and_checks_them() {
    let input = shape(3, 12, 12);
    let varmap = VarMap::new();
    let mut rng = SplitMix64::new(5);
    let model = build(Architecture::Resnet18, &varmap, input, 4, 0.0, &mut rng, &Device::Cpu).unwrap();
    let x = uniform(&[3, 3, 12, 12], 2);
    model.forward(&x, Mode::Train(&mut rng)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    varmap.save(&path).unwrap();

    let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded["bn1.num_batches_tracked"].dtype(), DType::I64);
    assert_eq!(loaded["bn1.num_batches_tracked"].dims(), [] as [usize; 0]);
    assert_eq!(loaded["layer4.1.bn2.num_batches_tracked"].to_scalar::<i64>().unwrap(), 1);
    let again = VarMap::new();
    again.data().lock().unwrap().extend(loaded.iter().map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap())));
    let reloaded = load(Architecture::Resnet18, &again, input, 4, 0.0, &Device::Cpu).unwrap();
    assert_eq!(values(&model.forward(&x, Mode::Eval).unwrap()), values(&reloaded.forward(&x, Mode::Eval).unwrap()));

    assert!(load(Architecture::Resnet18, &again, input, 5, 0.0, &Device::Cpu).unwrap_err().to_string().contains("fc.weight"));
    again.data().lock().unwrap().remove("layer1.0.bn1.num_batches_tracked");
    load(Architecture::Resnet18, &again, input, 4, 0.0, &Device::Cpu).unwrap();
    assert_eq!(again.data().lock().unwrap()["layer1.0.bn1.num_batches_tracked"].as_tensor().to_scalar::<i64>().unwrap(), 0);
    again.data().lock().unwrap().remove("layer2.0.downsample.1.running_var");
    assert!(load(Architecture::Resnet18, &again, input, 4, 0.0, &Device::Cpu).unwrap_err().to_string().contains("lack"));
    assert!(build(Architecture::Mlp, &VarMap::new(), input, 4, 0.0, &mut rng, &Device::Cpu).is_err());
    assert!(build(Architecture::Cnn, &VarMap::new(), shape(0, 8, 8), 4, 0.0, &mut rng, &Device::Cpu).is_err());
}

/// Max-pooling by the definition.
fn naive_max_pool(x: &Tensor, k: usize, s: usize, p: usize) -> (Vec<f32>, Vec<usize>) {
    let (n, c, h, w) = x.dims4().unwrap();
    let v = values(x);
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let (mut out, mut argmax) = (Vec::new(), Vec::new());
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = (f32::NEG_INFINITY, 0);
                for i in 0..k {
                    for j in 0..k {
                        let (y, x) = ((oy * s + i).wrapping_sub(p), (ox * s + j).wrapping_sub(p));
                        if y < h && x < w && v[plane * h * w + y * w + x] > best.0 {
                            best = (v[plane * h * w + y * w + x], plane * h * w + y * w + x);
                        }
                    }
                }
                out.push(best.0);
                argmax.push(best.1);
            }
        }
    }
    (out, argmax)
}

#[test]
fn max_pool_matches_the_definition_with_gradient_to_the_maximum() {
    let cases =
        [([2, 3, 7, 6], 3, 2, 1), ([1, 2, 8, 8], 3, 2, 1), ([1, 1, 1, 1], 3, 2, 1), ([2, 2, 7, 5], 2, 2, 0), ([1, 2, 6, 4], 2, 2, 0)];
    for ((dims, k, s, p), fast) in cases.into_iter().flat_map(|case| [(case, true), (case, false)]) {
        let x = Var::from_tensor(&distinct(&dims, 9)).unwrap();
        let out = max_pool2d_with(x.as_tensor(), k, s, p, fast).unwrap();
        let (want, argmax) = naive_max_pool(x.as_tensor(), k, s, p);
        assert_eq!(values(&out), want, "{dims:?} {k} {s} {p}");
        let g = uniform(out.dims(), 4);
        let grads = (&out * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let mut want_grad = vec![0f32; x.elem_count()];
        for (gi, &a) in values(&g).iter().zip(&argmax) {
            want_grad[a] += gi;
        }
        assert_close(&values(grads.get(x.as_tensor()).unwrap()), &want_grad, 1e-6, "max-pool gradient");
    }
}

#[test]
fn max_pool_takes_the_first_maximum_in_row_major_order_on_ties_and_nans() {
    // Few distinct values, so windows tie, and some NaNs: the output and where the gradient
    // goes must be what a row-major scan of the window finds (the first NaN, else the first
    // maximum), as PyTorch's kernel does.
    let (dims, levels) = ([2, 3, 9, 8], [0.0f32, -0.0, 1.0, 2.0, f32::NAN]);
    let mut rng = SplitMix64::new(11);
    let v: Vec<f32> = (0..dims.iter().product::<usize>()).map(|_| levels[rng.below(levels.len() as u64) as usize]).collect();
    let x = Var::from_tensor(&Tensor::from_vec(v.clone(), &dims, &Device::Cpu).unwrap()).unwrap();
    let (h, w) = (dims[2], dims[3]);
    for (k, s, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
        let out = max_pool2d_with(x.as_tensor(), k, s, p, true).unwrap();
        let (oh, ow) = (out.dim(2).unwrap(), out.dim(3).unwrap());
        let g: Vec<f32> = (0..out.elem_count()).map(|i| (i + 1) as f32).collect();
        let grads = (&out * Tensor::from_vec(g.clone(), out.dims(), &Device::Cpu).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let (mut want, mut want_grad) = (Vec::new(), vec![0f32; v.len()]);
        for plane in 0..dims[0] * dims[1] {
            for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                let mut best: Option<(f32, usize)> = None;
                for (i, j) in (0..k).flat_map(|i| (0..k).map(move |j| (i, j))) {
                    let (y, xx) = ((oy * s + i).wrapping_sub(p), (ox * s + j).wrapping_sub(p));
                    if y < h && xx < w {
                        let at = plane * h * w + y * w + xx;
                        let take = best.is_none_or(|(b, _)| v[at] > b || (v[at].is_nan() && !b.is_nan()));
                        best = if take { Some((v[at], at)) } else { best };
                    }
                }
                let (b, at) = best.unwrap();
                want.push(b.to_bits());
                want_grad[at] += g[(plane * oh + oy) * ow + ox];
            }
        }
        let got: Vec<u32> = values(&out).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "max-pool {k} {s} {p}");
        assert_eq!(values(grads.get(x.as_tensor()).unwrap()), want_grad, "max-pool gradient {k} {s} {p}");
    }
}

#[test]
fn adaptive_average_pool_averages_pytorch_bins() {
    for (h, w) in [(1, 1), (3, 3), (14, 14), (5, 9), (7, 7)] {
        let x = uniform(&[2, 3, h, w], 6);
        let out = adaptive_avg_pool2d(&x, 7, 7).unwrap();
        assert_eq!(out.dims(), [2, 3, 7, 7]);
        let v = values(&x);
        let mut want = Vec::new();
        for plane in 0..6 {
            for i in 0..7 {
                for j in 0..7 {
                    let (y0, y1) = (i * h / 7, ((i + 1) * h).div_ceil(7));
                    let (x0, x1) = (j * w / 7, ((j + 1) * w).div_ceil(7));
                    let mut sum = 0f32;
                    for y in y0..y1 {
                        for x in x0..x1 {
                            sum += v[plane * h * w + y * w + x];
                        }
                    }
                    #[allow(clippy::cast_precision_loss)]
                    want.push(sum / ((y1 - y0) * (x1 - x0)) as f32);
                }
            }
        }
        assert_close(&values(&out), &want, 1e-6, &format!("{h}x{w}"));
    }
    // A 1x1 map is replicated; a 14x14 one averages 2x2 blocks.
    let one = uniform(&[1, 1, 1, 1], 2);
    assert_eq!(values(&adaptive_avg_pool2d(&one, 7, 7).unwrap()), vec![values(&one)[0]; 49]);
}

#[test]
fn batch_norm_follows_pytorch() {
    let (n, c, h, w) = (4, 3, 2, 3);
    let mut vars = HashMap::new();
    let mut rng = SplitMix64::new(3);
    let bn = Params::init(&mut vars, &mut rng, &Device::Cpu).batch_norm("bn", c).unwrap();
    let (gamma, beta) = ([1.5f32, 0.5, 2.0], [0.1f32, -0.2, 0.3]);
    vars["bn.weight"].set(&Tensor::new(&gamma, &Device::Cpu).unwrap()).unwrap();
    vars["bn.bias"].set(&Tensor::new(&beta, &Device::Cpu).unwrap()).unwrap();
    let x = uniform(&[n, c, h, w], 8);
    let y = values(&bn.forward_then(&x, &Mode::Train(&mut rng), Activation::Identity).unwrap());
    let v = values(&x);
    let at = |b: usize, ch: usize, i: usize| (b * c + ch) * h * w + i;
    let count = n * h * w;
    #[allow(clippy::cast_precision_loss)]
    let count_f = count as f32;
    let (mut means, mut unbiased) = (Vec::new(), Vec::new());
    for ch in 0..c {
        let xs: Vec<f32> = (0..n).flat_map(|b| (0..h * w).map(move |i| at(b, ch, i))).map(|i| v[i]).collect();
        let mean = xs.iter().sum::<f32>() / count_f;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / count_f;
        for b in 0..n {
            for i in 0..h * w {
                let want = (v[at(b, ch, i)] - mean) / (var + 1e-5).sqrt() * gamma[ch] + beta[ch];
                assert!((y[at(b, ch, i)] - want).abs() < 1e-5, "{} vs {want}", y[at(b, ch, i)]);
            }
        }
        means.push(mean);
        unbiased.push(var * count_f / (count_f - 1.0));
    }
    let running_mean: Vec<f32> = means.iter().map(|m| 0.1 * m).collect();
    let running_var: Vec<f32> = unbiased.iter().map(|u| 0.9 + 0.1 * u).collect();
    assert_close(&values(vars["bn.running_mean"].as_tensor()), &running_mean, 1e-6, "running_mean");
    assert_close(&values(vars["bn.running_var"].as_tensor()), &running_var, 1e-6, "running_var");
    assert_eq!(vars["bn.num_batches_tracked"].as_tensor().to_scalar::<i64>().unwrap(), 1);

    // Evaluation normalises with the running statistics and changes nothing.
    let y = values(&bn.forward_then(&x, &Mode::Eval, Activation::Identity).unwrap());
    for ch in 0..c {
        for b in 0..n {
            for i in 0..h * w {
                let want = (v[at(b, ch, i)] - running_mean[ch]) / (running_var[ch] + 1e-5).sqrt() * gamma[ch] + beta[ch];
                assert!((y[at(b, ch, i)] - want).abs() < 1e-5);
            }
        }
    }
    assert_eq!(vars["bn.num_batches_tracked"].as_tensor().to_scalar::<i64>().unwrap(), 1);
    assert_close(&values(vars["bn.running_mean"].as_tensor()), &running_mean, 1e-6, "running_mean after eval");

    // One value per channel cannot be normalised, as in PyTorch.
    let err = bn.forward_then(&uniform(&[1, c, 1, 1], 1), &Mode::Train(&mut rng), Activation::Identity).unwrap_err();
    assert!(err.to_string().contains("more than 1 value per channel"), "{err}");
}

#[test]
fn depthwise_convolution_matches_candles_grouped_one() {
    // (candle's own backward pass fails on non-square inputs whose sides need different
    // output paddings, so those are compared forward only.)
    for (dims, stride) in [([2, 4, 7, 6], 1), ([2, 4, 7, 7], 2), ([1, 3, 1, 1], 2), ([1, 3, 8, 8], 2), ([2, 2, 6, 9], 2)] {
        let c = dims[1];
        let x = Var::from_tensor(&uniform(&dims, 1)).unwrap();
        let weight = Var::from_tensor(&uniform(&[c, 1, 3, 3], 2)).unwrap();
        let ours = depthwise_conv2d(x.as_tensor(), weight.as_tensor(), stride, 1).unwrap();
        let theirs = x.as_tensor().conv2d(weight.as_tensor(), 1, stride, 1, c).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        assert_close(&values(&ours), &values(&theirs), 1e-5, "depthwise forward");
        if dims[2] != dims[3] && stride > 1 {
            (ours * 1.0).unwrap().sum_all().unwrap().backward().unwrap();
            continue;
        }
        let g = uniform(ours.dims(), 3);
        let ours = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let theirs = (theirs * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &weight] {
            assert_close(
                &values(ours.get(v.as_tensor()).unwrap()),
                &values(theirs.get(v.as_tensor()).unwrap()),
                1e-5,
                "depthwise gradient",
            );
        }
    }
}

#[test]
fn dropout_masks_come_from_the_generator() {
    let x = Tensor::ones((40, 50), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(values(&dropout(&x, 0.0, &mut SplitMix64::new(1)).unwrap()), values(&x));
    let a = values(&dropout(&x, 0.25, &mut SplitMix64::new(1)).unwrap());
    let b = values(&dropout(&x, 0.25, &mut SplitMix64::new(1)).unwrap());
    assert_eq!(a, b);
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    let dropped = a.iter().filter(|&&v| v == 0.0).count();
    assert!((400..600).contains(&dropped), "{dropped} of 2000 dropped at p = 0.25");
    assert_eq!(values(&dropout(&x, 1.0, &mut SplitMix64::new(1)).unwrap()), vec![0.0; 2000]);
}

#[test]
fn adaptation_says_what_changed() {
    assert!(adaptation(Architecture::Resnet18, shape(3, 32, 32)).contains("3x3 stride-1 stem"));
    assert!(adaptation(Architecture::Resnet50, IMAGENET).contains("standard"));
    assert!(adaptation(Architecture::MobilenetV2, shape(1, 28, 28)).contains("features.2"));
    assert!(adaptation(Architecture::Vgg16, shape(1, 8, 8)).contains("2 of 5 max-pools skipped"));
    assert!(adaptation(Architecture::Vgg16, IMAGENET).starts_with("standard"));
    assert!(adaptation(Architecture::Cnn, shape(1, 8, 8)).contains("conv2 padded by 2"));
    assert!(adaptation(Architecture::Cnn, shape(1, 28, 28)).starts_with("standard"));
}

#[test]
fn cpu_convolution_gradients_match_candles() {
    for (dims, o, k, s, p) in [
        ([2, 3, 9, 9], 4, 3, 1, 1),
        ([2, 3, 9, 9], 4, 3, 2, 1),
        ([2, 3, 8, 8], 5, 1, 2, 0),
        ([2, 3, 8, 8], 5, 1, 1, 0),
        ([2, 2, 11, 11], 3, 7, 2, 3),
        ([1, 2, 6, 6], 3, 5, 1, 0),
        ([2, 2, 5, 5], 3, 3, 2, 1),
    ] {
        let mut vars = HashMap::new();
        let conv = Params::init(&mut vars, &mut SplitMix64::new(1), &Device::Cpu).conv("c", ConvSpec::new(dims[1], o, k, s, p)).unwrap();
        let w = vars["c.weight"].clone();
        let x = Var::from_tensor(&uniform(&dims, 2)).unwrap();
        let ours = conv.forward(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1).unwrap();
        assert_close(&values(&ours), &values(&theirs), 1e-5, "conv forward");
        let g = uniform(ours.dims(), 3);
        let ours = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let theirs = (theirs * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            assert_close(
                &values(ours.get(v.as_tensor()).unwrap()),
                &values(theirs.get(v.as_tensor()).unwrap()),
                1e-4,
                &format!("conv gradient {dims:?} {k} {s} {p}"),
            );
        }
    }
}

#[test]
fn fast_depthwise_and_batch_norm_gradients_match_the_composed_ones() {
    let shapes = [([2, 4, 7, 6], 1), ([2, 4, 7, 6], 2), ([2, 3, 1, 1], 2), ([2, 3, 8, 8], 2), ([2, 2, 5, 9], 1)];
    let activations = [Activation::Identity, Activation::Relu, Activation::Relu6];
    for ((dims, stride), activation) in shapes.into_iter().flat_map(|shape| activations.map(|a| (shape, a))) {
        let c = dims[1];
        let mut vars = HashMap::new();
        let mut rng = SplitMix64::new(4);
        let mut params = Params::init(&mut vars, &mut rng, &Device::Cpu);
        let conv = params.conv("dw", ConvSpec::new(c, c, 3, stride, 1).groups(c)).unwrap();
        let bn = params.batch_norm("bn", c).unwrap();
        vars["bn.weight"].set(&uniform(&[c], 5)).unwrap();
        vars["bn.bias"].set(&uniform(&[c], 6)).unwrap();
        let x = Var::from_tensor(&uniform(&dims, 1)).unwrap();
        let g = uniform(&[dims[0], c, out(dims[2], stride), out(dims[3], stride)], 7);
        let run = |fast: bool| {
            vars["bn.running_var"].set(&Tensor::ones(c, DType::F32, &Device::Cpu).unwrap()).unwrap();
            let y = conv.forward_with(x.as_tensor(), fast).unwrap();
            let y = bn.forward_with(&y, &Mode::Train(&mut SplitMix64::new(1)), fast, activation).unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![values(&y)];
            out.extend(
                [x.as_tensor(), vars["dw.weight"].as_tensor(), vars["bn.weight"].as_tensor(), vars["bn.bias"].as_tensor()]
                    .map(|t| values(grads.get(t).unwrap())),
            );
            out.push(values(vars["bn.running_var"].as_tensor()));
            out
        };
        let (fast, composed) = (run(true), run(false));
        for (i, (a, b)) in fast.iter().zip(&composed).enumerate() {
            assert_close(a, b, 1e-4, &format!("{dims:?} stride {stride} then {activation:?}, output {i}"));
        }
    }
}

fn out(size: usize, stride: usize) -> usize {
    (size - 1) / stride + 1
}

#[test]
fn relu6_clips_and_passes_gradient_inside() {
    let x = Var::from_tensor(&Tensor::new(&[-2f32, 0.5, 3.0, 7.0], &Device::Cpu).unwrap()).unwrap();
    let y = relu6(x.as_tensor()).unwrap();
    assert_eq!(values(&y), [0.0, 0.5, 3.0, 6.0]);
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(values(grads.get(x.as_tensor()).unwrap()), [0.0, 1.0, 1.0, 0.0]);
}

#[test]
fn models_drop_out_in_training_only_and_reproducibly() {
    for arch in [Architecture::Cnn, Architecture::MobilenetV2] {
        let input = shape(1, 8, 8);
        let varmap = VarMap::new();
        let model = build(arch, &varmap, input, 4, 0.5, &mut SplitMix64::new(1), &Device::Cpu).unwrap();
        let x = uniform(&[3, 1, 8, 8], 2);
        let train = |seed: u64| values(&model.forward(&x, Mode::Train(&mut SplitMix64::new(seed))).unwrap());
        assert_eq!(train(5), train(5), "{arch:?}");
        assert_ne!(train(5), train(6), "{arch:?}");
        let eval = || values(&model.forward(&x, Mode::Eval).unwrap());
        assert_eq!(eval(), eval(), "{arch:?}");
    }
}

#[test]
fn cpu_max_pool_sends_a_tie_to_the_first_maximum() {
    let x = Var::from_tensor(&Tensor::new(&[[[[1f32, 3.0], [3.0, 2.0]]]], &Device::Cpu).unwrap()).unwrap();
    let out = max_pool2d(x.as_tensor(), 2, 2, 0).unwrap();
    assert_eq!(values(&out), [3.0]);
    let grads = out.sum_all().unwrap().backward().unwrap();
    assert_eq!(values(grads.get(x.as_tensor()).unwrap()), [0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn evaluation_in_chunks_gives_the_logits_of_one_pass() {
    let input = shape(1, 8, 8);
    for arch in [Architecture::Cnn, Architecture::Resnet18] {
        let varmap = VarMap::new();
        let whole = build(arch, &varmap, input, 5, 0.0, &mut SplitMix64::new(3), &Device::Cpu).unwrap();
        let chunked = Chunked { model: load(arch, &varmap, input, 5, 0.0, &Device::Cpu).unwrap(), chunk: 3 };
        let x = uniform(&[7, 1, 8, 8], 2);
        let (a, b) = (values(&whole.forward(&x, Mode::Eval).unwrap()), values(&chunked.forward(&x, Mode::Eval).unwrap()));
        assert_eq!(a.len(), 35);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5, "{arch:?}: {p} vs {q}");
        }
    }
}

#[test]
fn activation_walks_follow_the_feature_maps() {
    // VGG-16 on 32x32x3: 3 convolution tensors per map and 2 per pool, over the five stages.
    let small = activation_floats(Architecture::Vgg16, shape(3, 32, 32), 10, true);
    let tiny = activation_floats(Architecture::Vgg16, shape(1, 8, 8), 10, true);
    assert!(small > 3 * 2 * 64 * 32 * 32, "{small}");
    assert!(tiny < small / 4, "{tiny} {small}");
    for arch in IMAGE_ARCHS {
        // Both sizes take the standard stems and strides (32x32 would not).
        let a = activation_floats(arch, shape(3, 64, 64), 10, true);
        let b = activation_floats(arch, shape(3, 128, 128), 10, true);
        assert!(a > 0 && b > a, "{arch:?}: {a} {b}");
        // The composed operations on other devices keep at least as much.
        assert!(activation_floats(arch, shape(3, 64, 64), 10, false) >= a, "{arch:?}");
    }
}
