//! The `f32` values of CPU tensors for the hand-written kernels (candle custom and in-place
//! operations): contiguous slices of a storage seen through its layout, or an error naming the
//! operation (`op`) when the tensor is not contiguous or not `f32`.

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};

/// The values of `storage` that `layout` covers.
pub(crate) fn values<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{op}: a non-contiguous input") };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// The same, to write in place.
pub(crate) fn values_mut<'a>(op: &str, storage: &'a mut CpuStorage, layout: &Layout) -> Result<&'a mut [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{op}: a non-contiguous input") };
    match storage {
        CpuStorage::F32(v) => v.get_mut(start..end).ok_or_else(|| candle_core::Error::Msg(format!("{op}: a layout outside its storage"))),
        _ => bail!("{op}: a tensor that is not f32"),
    }
}

/// Calls `f` with the values of the CPU tensor `t`.
pub(crate) fn with_values<R>(op: &str, t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { bail!("{op}: a tensor not on the CPU") };
    f(values(op, cpu, layout)?)
}

/// Runs `f` compiled for the widest vector instructions this CPU has (AVX-512, AVX2 with FMA,
/// NEON), chosen at run time by pulp: the loops inlined into it vectorise to that width instead
/// of the build target's baseline (SSE2 on x86-64). The arithmetic is the same on every
/// machine: no sum is reordered and no multiply-add fused that the baseline would not.
///
/// Mark the closure `#[inline(always)]` (`wide(#[inline(always)] || ...)`): a closure is a
/// function of its own, compiled for the baseline, and LLVM declines to inline a large one into
/// pulp's function for the wide instructions, where its loops would be compiled for them. (Left
/// to itself, max-pooling's loops stayed SSE2 and ran 5x slower.)
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}
