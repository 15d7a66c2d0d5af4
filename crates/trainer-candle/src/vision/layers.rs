//! The layers the image classifiers are made of, composed from differentiable candle operations
//! so that they train on every device: convolutions (candle's `conv2d`, and depthwise ones as a
//! sum of shifted views), batch norm with PyTorch's running statistics, max-pooling with any
//! kernel, stride and padding, adaptive and global average pooling, linear layers, and dropout
//! with masks from [`SplitMix64`]. [`Params`] creates, finds or merely lists the parameters and
//! buffers of a model under their PyTorch names.
//!
//! On the CPU (in `f32`), dense and depthwise convolutions are the kernels of `conv_cpu` (im2col
//! and matrix products, or direct loops, with their own backward passes), because candle's own
//! are several times slower there; batch norm in training is the kernel of `norm_cpu`, and
//! max-pooling is a kernel that remembers where each maximum was (`MaxPoolCpu`, a pass down the
//! window's rows then one across its columns) and sends each gradient there (`MaxPoolGrad`);
//! elsewhere they are the plain composed
//! operations, which the tests hold them to.

use std::{
    collections::HashMap,
    f64::consts::TAU,
    sync::{Arc, Mutex, PoisonError},
};

use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, Var};
use rayon::prelude::*;

use super::{bias_cpu, clamp_cpu, conv_cpu, norm_cpu, Mode};
use crate::cpu_data;
use crate::rng::SplitMix64;

/// Batch norm's `eps` (PyTorch's default).
pub(crate) const BN_EPS: f64 = 1e-5;
/// Batch norm's running-statistics momentum (PyTorch's default).
pub(crate) const BN_MOMENTUM: f64 = 0.1;

/// How a parameter or buffer starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Init {
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: `N(0, 2 / fan_out)` with
    /// `fan_out = shape[0] * prod(shape[2..])`, as torchvision starts convolutions.
    KaimingNormalFanOut,
    /// Uniform in `±bound` (PyTorch's default for `nn.Linear` and `nn.Conv2d`: `1/sqrt(fan_in)`).
    Uniform(f64),
    /// `N(0, std^2)`.
    Normal(f64),
    Zeros,
    Ones,
}

/// A uniform number in `[0, 1)` with 53 random bits.
fn unit_f64(rng: &mut SplitMix64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // 53 bits fit an f64 mantissa exactly
    let bits = (rng.next_u64() >> 11) as f64;
    bits / (1u64 << 53) as f64
}

/// `n` samples of `N(0, std^2)` (Box-Muller, both values of each pair used).
pub(crate) fn normal_vec(rng: &mut SplitMix64, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let (u1, u2) = (1.0 - unit_f64(rng), unit_f64(rng));
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let (sin, cos) = (TAU * u2).sin_cos();
        #[allow(clippy::cast_possible_truncation)] // samples, f32 on purpose
        out.extend([(r * cos) as f32, (r * sin) as f32]);
    }
    out.truncate(n);
    out
}

/// The values of a fresh tensor of `shape` started as `init`.
fn initial_values(init: Init, shape: &[usize], rng: &mut SplitMix64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    match init {
        Init::KaimingNormalFanOut => {
            let fan_out = shape.first().copied().unwrap_or(1) * shape.iter().skip(2).product::<usize>();
            #[allow(clippy::cast_precision_loss)]
            let std = (2.0 / fan_out.max(1) as f64).sqrt();
            normal_vec(rng, n, std)
        }
        Init::Uniform(bound) => {
            #[allow(clippy::cast_possible_truncation)]
            let bound = bound as f32;
            (0..n).map(|_| rng.uniform_f32(-bound, bound)).collect()
        }
        Init::Normal(std) => normal_vec(rng, n, std),
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
    }
}

/// Where [`Params`] takes tensors from.
enum Source<'a> {
    /// Lists names and shapes only; the tensors handed out are one-element broadcasts.
    Shapes,
    /// Creates variables in the map, initialised from the generator.
    Init { vars: &'a mut HashMap<String, Var>, rng: &'a mut SplitMix64, device: &'a Device },
    /// Takes the variables already in the map (adding a missing `num_batches_tracked`).
    Load { vars: &'a mut HashMap<String, Var>, device: &'a Device },
}

/// The parameters and buffers of a model being put together, by PyTorch name, in the order the
/// model asks for them (the order of PyTorch's `state_dict`).
pub(crate) struct Params<'a> {
    source: Source<'a>,
    shapes: Vec<(String, Vec<usize>)>,
}

impl std::fmt::Debug for Params<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.source {
            Source::Shapes => "shapes",
            Source::Init { .. } => "init",
            Source::Load { .. } => "load",
        };
        f.debug_struct("Params").field("mode", &mode).field("tensors", &self.shapes.len()).finish()
    }
}

impl<'a> Params<'a> {
    /// Lists names and shapes without allocating the tensors.
    pub(crate) fn shapes_only() -> Self {
        Self { source: Source::Shapes, shapes: Vec::new() }
    }

    /// Creates every tensor in `vars`, initialised from `rng`, on `device`.
    pub(crate) fn init(vars: &'a mut HashMap<String, Var>, rng: &'a mut SplitMix64, device: &'a Device) -> Self {
        Self { source: Source::Init { vars, rng, device }, shapes: Vec::new() }
    }

    /// Takes every tensor from `vars`, which must be on `device`. A missing batch-norm
    /// `num_batches_tracked` is added as 0, as PyTorch does for checkpoints older than the counter.
    pub(crate) fn load(vars: &'a mut HashMap<String, Var>, device: &'a Device) -> Self {
        Self { source: Source::Load { vars, device }, shapes: Vec::new() }
    }

    /// Whether the model runs on the CPU (its fused kernels); a shapes-only listing counts as
    /// the CPU.
    pub(crate) fn on_cpu(&self) -> bool {
        match self.source {
            Source::Shapes => true,
            Source::Init { device, .. } | Source::Load { device, .. } => device.is_cpu(),
        }
    }

    /// The names and shapes handed out so far.
    pub(crate) fn into_shapes(self) -> Vec<(String, Vec<usize>)> {
        self.shapes
    }

    /// The tensor `name` of `shape`: a float parameter, or the `num_batches_tracked` counter
    /// (`i64`, shape `[]`, as PyTorch stores it) when `init` is `None`.
    fn tensor(&mut self, name: String, shape: &[usize], init: Option<Init>) -> Result<Tensor> {
        let dtype = if init.is_some() { DType::F32 } else { DType::I64 };
        let tensor = match &mut self.source {
            Source::Shapes => Tensor::zeros((), dtype, &Device::Cpu)?.broadcast_as(shape)?,
            Source::Init { vars, rng, device } => {
                let var = match init {
                    Some(init) => Var::from_vec(initial_values(init, shape, rng), shape, device)?,
                    None => Var::zeros((), DType::I64, device)?,
                };
                let tensor = var.as_tensor().clone();
                vars.insert(name.clone(), var);
                tensor
            }
            Source::Load { vars, device } => {
                if init.is_none() && !vars.contains_key(&name) {
                    vars.insert(name.clone(), Var::zeros((), DType::I64, device)?);
                }
                let Some(var) = vars.get(&name) else { bail!("the weights lack '{name}'") };
                if var.dims() != shape {
                    bail!("'{name}' has shape {:?} but this model needs {shape:?}", var.dims())
                }
                if init.is_some() && var.dtype() != DType::F32 {
                    bail!("'{name}' is {:?}, not f32", var.dtype())
                }
                if !var.device().same_device(device) {
                    bail!("'{name}' is on {:?}, not on {device:?}", var.device())
                }
                var.as_tensor().clone()
            }
        };
        self.shapes.push((name, shape.to_vec()));
        Ok(tensor)
    }

    /// A convolution `name` (`name.weight`, and `name.bias` when `spec.bias`).
    pub(crate) fn conv(&mut self, name: &str, spec: ConvSpec) -> Result<Conv2d> {
        let ConvSpec { in_channels, out_channels, kernel, stride, padding, groups, bias, init } = spec;
        if groups == 0 || in_channels % groups != 0 || out_channels % groups != 0 || kernel == 0 || stride == 0 {
            bail!("invalid convolution {name}: {spec:?}")
        }
        let weight = self.tensor(format!("{name}.weight"), &[out_channels, in_channels / groups, kernel, kernel], Some(init))?;
        let bias = match bias {
            Some(init) => Some(self.tensor(format!("{name}.bias"), &[out_channels], Some(init))?),
            None => None,
        };
        Ok(Conv2d { weight, bias, kernel, stride, padding, groups })
    }

    /// A batch norm `name` over `channels` (weight, bias and the three buffers).
    pub(crate) fn batch_norm(&mut self, name: &str, channels: usize) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            weight: self.tensor(format!("{name}.weight"), &[channels], Some(Init::Ones))?,
            bias: self.tensor(format!("{name}.bias"), &[channels], Some(Init::Zeros))?,
            running_mean: self.tensor(format!("{name}.running_mean"), &[channels], Some(Init::Zeros))?,
            running_var: self.tensor(format!("{name}.running_var"), &[channels], Some(Init::Ones))?,
            num_batches_tracked: self.tensor(format!("{name}.num_batches_tracked"), &[], None)?,
        })
    }

    /// A linear layer `name` from `inputs` to `outputs`, its weight and bias started as given.
    pub(crate) fn linear(&mut self, name: &str, inputs: usize, outputs: usize, weight: Init, bias: Init) -> Result<Linear> {
        Ok(Linear {
            weight: self.tensor(format!("{name}.weight"), &[outputs, inputs], Some(weight))?,
            bias: self.tensor(format!("{name}.bias"), &[outputs], Some(bias))?,
        })
    }
}

/// PyTorch's default start of `nn.Linear` and `nn.Conv2d` weights and biases: uniform in
/// `±1/sqrt(fan_in)`.
pub(crate) fn pytorch_default(fan_in: usize) -> Init {
    #[allow(clippy::cast_precision_loss)]
    Init::Uniform(1.0 / (fan_in.max(1) as f64).sqrt())
}

/// Output side of a convolution or pooling window.
pub(crate) fn out_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// A convolution's sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    /// How the bias starts, or `None` for no bias.
    pub bias: Option<Init>,
    /// How the weight starts.
    pub init: Init,
}

impl ConvSpec {
    /// A `kernel x kernel` convolution without bias, started as torchvision starts them.
    pub(crate) fn new(in_channels: usize, out_channels: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        Self { in_channels, out_channels, kernel, stride, padding, groups: 1, bias: None, init: Init::KaimingNormalFanOut }
    }

    /// The same, with `groups` groups.
    pub(crate) fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }

    /// The same, with a bias started as `init`.
    pub(crate) fn bias(self, init: Init) -> Self {
        Self { bias: Some(init), ..self }
    }

    /// The same, the weight started as `init`.
    pub(crate) fn init(self, init: Init) -> Self {
        Self { init, ..self }
    }
}

/// A 2-D convolution (square kernel, same stride and padding on both axes).
#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
}

impl Conv2d {
    /// `[N, C, H, W]` to `[N, out, H', W']`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, fast_path(x))
    }

    /// The same, with the hand-written backward passes (`fast`, CPU and `f32` only) or with
    /// candle's and composed operations' own.
    pub(crate) fn forward_with(&self, x: &Tensor, fast: bool) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        if h + 2 * p < k || w + 2 * p < k {
            bail!("a {k}x{k} convolution with padding {p} does not fit a {h}x{w} map")
        }
        let depthwise = self.groups > 1 && self.groups == c && self.weight.dims()[..2] == [c, 1];
        if fast && (self.groups == 1 || depthwise) {
            let (x, weight) = (x.contiguous()?, self.weight.contiguous()?);
            let y = if depthwise { conv_cpu::depthwise_conv2d(&x, &weight, s, p)? } else { conv_cpu::conv2d(&x, &weight, s, p)? };
            return match &self.bias {
                Some(b) => bias_cpu::add_channel_bias(&y, b),
                None => Ok(y),
            };
        }
        // The padding is explicit and the padded map is cut to the rows and columns the windows
        // read: candle's own backward pass sizes the input gradient as if every window fitted
        // exactly (`(out - 1) * stride + k` rows), so it must not see the rest.
        let x = if p > 0 { x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)? } else { x.clone() };
        let (hh, ww) = ((out_size(h, k, s, p) - 1) * s + k, (out_size(w, k, s, p) - 1) * s + k);
        let x = if hh < h + 2 * p || ww < w + 2 * p { x.narrow(2, 0, hh)?.narrow(3, 0, ww)? } else { x };
        let y = match (self.groups, depthwise) {
            (1, _) => x.conv2d(&self.weight, 0, s, 1, 1)?,
            (_, true) => depthwise_conv2d(&x, &self.weight, s, 0)?,
            _ => x.conv2d(&self.weight, 0, s, 1, self.groups)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

/// Whether `x` takes the hand-written backward passes: on the CPU, in `f32`.
fn fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

// On the CPU, candle differentiates some operations slowly: a convolution's input gradient is a
// direct `conv_transpose2d` loop several times slower than the forward convolution, and
// reductions over several axes (batch norm's, and those that undo a broadcast) take a slow
// strided path. There the convolutions and batch norm are the kernels of `conv_cpu` and
// `norm_cpu`, with their own backward passes. Other devices use the plain operations; the tests
// hold the two to the same values and gradients.

/// The shifted (and strided) views of a padded map that a `k x k` window with stride `s` and
/// padding `p` reads: view `(i, j)` is `[N, C, H', W']`, element `(y, x)` being the map at
/// `(y * s + i - p, x * s + j - p)`, or `fill` outside it.
///
/// The map is padded (or cut) to `s * (H' + (k - 1) / s)` rows and columns and, for `s > 1`,
/// split into its `s * s` phases (rows and columns `≡ a, b (mod s)`), so that every view is a
/// plain `narrow` of one phase; all of it differentiable.
struct Taps {
    phases: Vec<Option<Tensor>>,
    padded: Tensor,
    stride: usize,
    out_h: usize,
    out_w: usize,
}

/// `x` with `left` values of `fill` before its `dim` axis and as many after (or as many
/// elements cut) as make it `total` long.
fn pad_to(x: &Tensor, dim: usize, left: usize, total: usize, fill: f32) -> Result<Tensor> {
    let size = x.dim(dim)?;
    let keep = size.min(total.saturating_sub(left));
    let right = total - left - keep;
    let x = if keep < size { x.narrow(dim, 0, keep)? } else { x.clone() };
    if left == 0 && right == 0 {
        return Ok(x);
    }
    let block = |len: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = len;
        Tensor::full(fill, dims, x.device())?.to_dtype(x.dtype())
    };
    let mut parts = Vec::with_capacity(3);
    if left > 0 {
        parts.push(block(left)?);
    }
    parts.push(x.clone());
    if right > 0 {
        parts.push(block(right)?);
    }
    Tensor::cat(&parts, dim)
}

impl Taps {
    fn new(x: &Tensor, kernel: usize, stride: usize, padding: usize, fill: f32) -> Result<Self> {
        let (n, c, h, w) = x.dims4()?;
        if h + 2 * padding < kernel || w + 2 * padding < kernel {
            bail!("a {kernel}x{kernel} window with padding {padding} does not fit a {h}x{w} map")
        }
        let (out_h, out_w) = (out_size(h, kernel, stride, padding), out_size(w, kernel, stride, padding));
        let (len_h, len_w) = (stride * (out_h + (kernel - 1) / stride), stride * (out_w + (kernel - 1) / stride));
        let padded = pad_to(&pad_to(x, 2, padding, len_h, fill)?, 3, padding, len_w, fill)?;
        let padded = if stride == 1 { padded } else { padded.reshape((n, c, len_h / stride, stride, len_w / stride, stride))? };
        Ok(Self { phases: vec![None; stride * stride], padded, stride, out_h, out_w })
    }

    /// The view of kernel position `(i, j)`.
    fn view(&mut self, i: usize, j: usize) -> Result<Tensor> {
        let s = self.stride;
        let phase = if s == 1 {
            self.padded.clone()
        } else {
            let slot = (i % s) * s + j % s;
            if let Some(p) = &self.phases[slot] {
                p.clone()
            } else {
                let d = self.padded.dims();
                let p = self.padded.narrow(3, i % s, 1)?.narrow(5, j % s, 1)?.reshape((d[0], d[1], d[2], d[4]))?;
                self.phases[slot] = Some(p.clone());
                p
            }
        };
        phase.narrow(2, i / s, self.out_h)?.narrow(3, j / s, self.out_w)
    }
}

/// A depthwise convolution (`groups == channels`, weight `[C, 1, k, k]`) as the sum over kernel
/// positions of the shifted views times each channel's weight: a few large element-wise
/// operations instead of candle's one small convolution per channel.
pub(crate) fn depthwise_conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (c, one, k, k2) = weight.dims4()?;
    if one != 1 || k != k2 || x.dim(1)? != c {
        bail!("depthwise convolution of {:?} with a {:?} weight", x.dims(), weight.dims())
    }
    let mut taps = Taps::new(x, k, stride, padding, 0.0)?;
    let weight = weight.reshape((c, k * k))?;
    let mut sum = taps.view(0, 0)?.broadcast_mul(&weight.narrow(1, 0, 1)?.reshape((1, c, 1, 1))?)?;
    for t in 1..k * k {
        sum = (sum + taps.view(t / k, t % k)?.broadcast_mul(&weight.narrow(1, t, 1)?.reshape((1, c, 1, 1))?)?)?;
    }
    Ok(sum)
}

/// Max-pooling with a `kernel x kernel` window, `stride` and `padding` (padding reads as
/// `-inf`, as in PyTorch; `ceil_mode` off), whose gradient goes to the maximum of each window.
///
/// On the CPU (`f32`) a kernel finds each window's maximum and remembers where it was; the
/// backward pass adds the output gradient there. Like PyTorch's, it takes the first maximum in
/// row-major order, so a tie sends the whole gradient to one element. Elsewhere it is the
/// element-wise maximum of the shifted views, whose ties share the gradient (in halves at each
/// pairwise maximum); either way the total reaches the input.
///
/// (candle's own `max_pool2d` is not used: its backward pass divides the gradient by the
/// window's size, misroutes it on odd sides, and needs `kernel == stride`.)
pub(crate) fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    max_pool2d_with(x, kernel, stride, padding, fast_path(x))
}

/// The same, with the CPU kernel (`fast`) or composed operations.
pub(crate) fn max_pool2d_with(x: &Tensor, kernel: usize, stride: usize, padding: usize, fast: bool) -> Result<Tensor> {
    if 2 * padding > kernel {
        bail!("max-pool padding {padding} exceeds half the kernel {kernel}")
    }
    if fast {
        return x.contiguous()?.apply_op1(MaxPoolCpu { kernel, stride, padding, argmax: Mutex::new(None) });
    }
    let mut taps = Taps::new(x, kernel, stride, padding, f32::NEG_INFINITY)?;
    let mut out = taps.view(0, 0)?;
    for t in 1..kernel * kernel {
        out = out.maximum(&taps.view(t / kernel, t % kernel)?)?;
    }
    Ok(out)
}

/// Max-pooling on the CPU: the maxima, and where they were for the backward pass.
struct MaxPoolCpu {
    kernel: usize,
    stride: usize,
    padding: usize,
    /// For each output, the flat index of its input.
    argmax: Mutex<Option<Arc<Vec<u32>>>>,
}

impl CustomOp1 for MaxPoolCpu {
    fn name(&self) -> &'static str {
        "max-pool-cpu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let (n, c, h, w) = layout.shape().dims4()?;
        let Some((start, end)) = layout.contiguous_offsets() else { bail!("max-pool-cpu: the input must be contiguous") };
        if h + 2 * p < k || w + 2 * p < k {
            bail!("a {k}x{k} window with padding {p} does not fit a {h}x{w} map")
        }
        if u32::try_from(end - start).is_err() {
            bail!("max-pool-cpu: more than 2^32 inputs")
        }
        let x = &storage.as_slice::<f32>()?[start..end];
        let (oh, ow) = (out_size(h, k, s, p), out_size(w, k, s, p));
        let mut out = vec![0f32; n * c * oh * ow];
        let mut argmax = vec![0u32; n * c * oh * ow];
        // The rows (or columns) of window `o` inside the map: `o * s - p ..` clipped to `0..size`,
        // never empty (`2 * p <= k`).
        let span = |o: usize, size: usize| (o * s).saturating_sub(p)..(o * s + k).saturating_sub(p).min(size);
        let work = out.par_chunks_mut(oh * ow).zip(argmax.par_chunks_mut(oh * ow)).enumerate();
        work.for_each_init(<(Vec<f32>, Vec<u32>)>::default, |(col_max, col_row), (plane, (out, argmax))| {
            let base = plane * h * w;
            let map = &x[base..base + h * w];
            col_max.resize(w, 0.0);
            col_row.resize(w, 0);
            // Branch-free selects (`&`, `|` on comparisons), so that the column pass vectorises
            // and neither pass mispredicts on the data.
            cpu_data::wide(
                #[inline(always)]
                || {
                    for oy in 0..oh {
                        // Down each column of the window's rows: its maximum and the row of its
                        // first occurrence (of its first NaN, if any), one pass over whole rows.
                        let rows = span(oy, h);
                        col_max.copy_from_slice(&map[rows.start * w..][..w]);
                        #[allow(clippy::cast_possible_truncation)] // checked above: fewer than 2^32 inputs
                        col_row.fill(rows.start as u32);
                        for y in rows.start + 1..rows.end {
                            #[allow(clippy::cast_possible_truncation)]
                            let y32 = y as u32;
                            for ((best, row), &v) in col_max.iter_mut().zip(col_row.iter_mut()).zip(&map[y * w..][..w]) {
                                let take = (v > *best) | (v.is_nan() & !best.is_nan());
                                *best = if take { v } else { *best };
                                *row = if take { y32 } else { *row };
                            }
                        }
                        // Across the window's columns: the first maximum in row-major order (the
                        // first NaN, if any), as a scan of the whole window in that order finds it.
                        let outputs = out[oy * ow..][..ow].iter_mut().zip(&mut argmax[oy * ow..][..ow]);
                        for (ox, (out, argmax)) in outputs.enumerate() {
                            let cols = span(ox, w);
                            let (mut value, mut row, mut col) = (col_max[cols.start], col_row[cols.start], cols.start);
                            for c in cols.start + 1..cols.end {
                                let (v, r) = (col_max[c], col_row[c]);
                                let earlier = r < row;
                                let take = (value.is_nan() & v.is_nan() & earlier)
                                    | (!value.is_nan() & (v.is_nan() | (v > value) | ((v == value) & earlier)));
                                value = if take { v } else { value };
                                row = if take { r } else { row };
                                col = if take { c } else { col };
                            }
                            *out = value;
                            #[allow(clippy::cast_possible_truncation)] // checked above: fewer than 2^32 inputs
                            let at = (base + row as usize * w + col) as u32;
                            *argmax = at;
                        }
                    }
                },
            );
        });
        *self.argmax.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(argmax));
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(argmax) = self.argmax.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
            bail!("max-pool-cpu: backward before forward")
        };
        Ok(Some(grad.detach().contiguous()?.apply_op1(MaxPoolGrad { input: x.shape().clone(), argmax })?))
    }
}

/// The input gradient of [`MaxPoolCpu`]: each output's gradient added at its maximum.
struct MaxPoolGrad {
    input: Shape,
    /// For each output, the flat index of its input.
    argmax: Arc<Vec<u32>>,
}

impl CustomOp1 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-cpu-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.input.dims4()?;
        let Some((start, end)) = layout.contiguous_offsets() else { bail!("max-pool-cpu: the gradient must be contiguous") };
        let grad = &storage.as_slice::<f32>()?[start..end];
        let planes = n * c;
        if grad.len() != self.argmax.len() || planes == 0 || grad.len() % planes != 0 {
            bail!("max-pool-cpu: a gradient of {} values for {} outputs", grad.len(), self.argmax.len())
        }
        let per_plane = grad.len() / planes;
        let mut dx = vec![0f32; planes * h * w];
        let work = dx.par_chunks_mut(h * w).zip(grad.par_chunks(per_plane).zip(self.argmax.par_chunks(per_plane))).enumerate();
        work.for_each(|(plane, (dx, (grad, argmax)))| {
            for (&g, &at) in grad.iter().zip(argmax) {
                dx[at as usize - plane * h * w] += g;
            }
        });
        Ok((CpuStorage::F32(dx), self.input.clone()))
    }
}

/// The `[size, out]` matrix that averages PyTorch's adaptive-pooling bins: bin `i` covers
/// `[floor(i * size / out), ceil((i + 1) * size / out))`.
fn bin_matrix(size: usize, out: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; size * out];
    for i in 0..out {
        let (start, end) = (i * size / out, ((i + 1) * size).div_ceil(out));
        #[allow(clippy::cast_precision_loss)]
        let weight = 1.0 / (end - start) as f32;
        for j in start..end {
            m[j * out + i] = weight;
        }
    }
    Tensor::from_vec(m, (size, out), device)
}

/// PyTorch's `AdaptiveAvgPool2d((out_h, out_w))`, as two matrix products with the bin
/// matrices (maps smaller than the output replicate their values).
pub(crate) fn adaptive_avg_pool2d(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let x = if w == out_w {
        x.clone()
    } else {
        x.reshape((n * c * h, w))?.matmul(&bin_matrix(w, out_w, x.device())?)?.reshape((n, c, h, out_w))?
    };
    if h == out_h {
        return Ok(x);
    }
    let x = x.transpose(2, 3)?.reshape((n * c * out_w, h))?.matmul(&bin_matrix(h, out_h, x.device())?)?;
    x.reshape((n, c, out_w, out_h))?.transpose(2, 3)
}

/// The mean over each map, `[N, C, H, W]` to `[N, C]`.
pub(crate) fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(2)
}

/// `max(x, 0)`: on the CPU (`f32`) the kernel of `clamp_cpu`, elsewhere candle's.
pub(crate) fn relu(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) {
        clamp_cpu::clamp(&x.contiguous()?, clamp_cpu::RELU.0, clamp_cpu::RELU.1)
    } else {
        x.relu()
    }
}

/// `min(max(x, 0), 6)`: on the CPU (`f32`) the kernel of `clamp_cpu`, elsewhere
/// `relu(x) - relu(x - 6)` (whose gradient candle computes without the slow comparisons
/// against a broadcast constant that `minimum` takes).
pub(crate) fn relu6(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) {
        clamp_cpu::clamp(&x.contiguous()?, clamp_cpu::RELU6.0, clamp_cpu::RELU6.1)
    } else {
        x.relu()? - x.affine(1.0, -6.0)?.relu()?
    }
}

/// Inverted dropout: each value is zeroed with probability `p` (by a mask drawn from `rng`)
/// and the others are scaled by `1 / (1 - p)`; the identity when `p == 0`, zeros when `p >= 1`.
pub(crate) fn dropout(x: &Tensor, p: f64, rng: &mut SplitMix64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    #[allow(clippy::cast_possible_truncation)]
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if unit_f64(rng) < p { 0.0 } else { keep }).collect();
    x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)
}

/// A linear layer, `x W^T + b`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// `[N, in]` to `[N, out]`, computed as `(W x^T)^T`: candle multiplies by a transposed
    /// right-hand side and accumulates a transposed weight gradient several times slower (seconds
    /// for VGG's 4096x25088 layer), while this order keeps the weight and its gradient contiguous.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, inputs) = x.dims2()?;
        let expected = self.weight.dim(1)?;
        if inputs != expected {
            bail!("a linear layer of {expected} inputs got {inputs} (was the model built for this image size?)")
        }
        self.weight.matmul(&x.t()?)?.t()?.broadcast_add(&self.bias)
    }
}

/// `nn.BatchNorm2d` (affine, running statistics, `eps` 1e-5, momentum 0.1).
///
/// In training it normalises with the batch mean and biased variance over `N, H, W`, and moves
/// the running statistics as PyTorch does: `running = 0.9 * running + 0.1 * batch`, with the
/// *unbiased* batch variance for `running_var`; `num_batches_tracked` counts the steps. Like
/// PyTorch it refuses a batch with a single value per channel. In evaluation it uses the
/// running statistics.
#[derive(Debug, Clone)]
pub(crate) struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
}

/// Replaces the values of the variable `t` by `value`.
fn assign(t: &Tensor, value: &Tensor) -> Result<()> {
    if !t.is_variable() {
        bail!("batch-norm buffers must be variables")
    }
    Var::from_tensor(t)?.set(value)
}

/// What follows a batch norm: nothing, ReLU or ReLU6. On the CPU in training it is fused into
/// the batch norm's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Identity,
    Relu,
    Relu6,
}

impl Activation {
    /// The clamp's bounds, for the fused operation.
    fn bounds(self) -> Option<(f32, f32)> {
        match self {
            Self::Identity => None,
            Self::Relu => Some(clamp_cpu::RELU),
            Self::Relu6 => Some(clamp_cpu::RELU6),
        }
    }

    /// The activation as its own operation.
    pub(crate) fn apply(self, x: Tensor) -> Result<Tensor> {
        match self {
            Self::Identity => Ok(x),
            Self::Relu => relu(&x),
            Self::Relu6 => relu6(&x),
        }
    }
}

impl BatchNorm2d {
    /// The batch norm of `x` then `activation` (one operation on the CPU in training).
    pub(crate) fn forward_then(&self, x: &Tensor, mode: &Mode<'_>, activation: Activation) -> Result<Tensor> {
        self.forward_with(x, mode, fast_path(x), activation)
    }

    /// The same, with the hand-written backward pass in training (`fast`, CPU and `f32` only;
    /// the activation fused) or with that of the composed operations.
    pub(crate) fn forward_with(&self, x: &Tensor, mode: &Mode<'_>, fast: bool, activation: Activation) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let per_channel = |t: &Tensor| t.reshape((1, c, 1));
        let flat = x.reshape((n, c, h * w))?;
        if !mode.is_train() {
            let scale = (&self.weight / (&self.running_var + BN_EPS)?.sqrt()?)?;
            let shift = (&self.bias - (&self.running_mean * &scale)?)?;
            let y = flat.broadcast_mul(&per_channel(&scale)?)?.broadcast_add(&per_channel(&shift)?)?.reshape((n, c, h, w))?;
            return activation.apply(y);
        }
        let count = n * h * w;
        if count < 2 {
            bail!("Expected more than 1 value per channel when training, got input size {:?}", x.dims())
        }
        #[allow(clippy::cast_precision_loss)]
        let count_f = count as f64;
        let sum = |t: &Tensor| t.sum_keepdim(2)?.sum_keepdim(0);
        if fast {
            let flat = flat.contiguous()?;
            let (y, mean, var) = norm_cpu::batch_norm_train(&flat, &self.weight, &self.bias, BN_EPS, activation.bounds())?;
            self.update_statistics(&mean, &var, count_f)?;
            return y.reshape((n, c, h, w));
        }
        let mean = (sum(&flat)? / count_f)?;
        let centred = flat.broadcast_sub(&mean)?;
        let var = (sum(&centred.sqr()?)? / count_f)?;
        let scale = per_channel(&self.weight)?.broadcast_div(&(&var + BN_EPS)?.sqrt()?)?;
        self.update_statistics(&mean.detach(), &var.detach(), count_f)?;
        activation.apply(centred.broadcast_mul(&scale)?.broadcast_add(&per_channel(&self.bias)?)?.reshape((n, c, h, w))?)
    }

    /// Moves the running statistics towards the batch's `mean` and biased `var` (`[1, C, 1]`)
    /// over `count` values, and counts the step.
    fn update_statistics(&self, mean: &Tensor, var: &Tensor, count: f64) -> Result<()> {
        let blend = |running: &Tensor, batch: Tensor| running.affine(1.0 - BN_MOMENTUM, 0.0)?.add(&batch.flatten_all()?);
        assign(&self.running_mean, &blend(&self.running_mean, (mean * BN_MOMENTUM)?)?)?;
        assign(&self.running_var, &blend(&self.running_var, (var * (BN_MOMENTUM * count / (count - 1.0)))?)?)?;
        let tracked = &self.num_batches_tracked;
        assign(tracked, &tracked.add(&Tensor::ones((), tracked.dtype(), tracked.device())?)?)
    }
}

/// A convolution followed by batch norm, the unit of ResNet and MobileNetV2.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl ConvBn {
    /// `conv` at `conv_name` and batch norm at `bn_name`.
    pub(crate) fn new(params: &mut Params<'_>, conv_name: &str, bn_name: &str, spec: ConvSpec) -> Result<Self> {
        Ok(Self { conv: params.conv(conv_name, spec)?, bn: params.batch_norm(bn_name, spec.out_channels)? })
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: &Mode<'_>) -> Result<Tensor> {
        self.forward_then(x, mode, Activation::Identity)
    }

    /// The same then `activation`.
    pub(crate) fn forward_then(&self, x: &Tensor, mode: &Mode<'_>, activation: Activation) -> Result<Tensor> {
        self.bn.forward_then(&self.conv.forward(x)?, mode, activation)
    }
}
