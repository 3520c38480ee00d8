//! The delta rule's chunk computation on a CUDA device (psm-codegen's `ptx::delta`):
//! `psm_cwd_inverse` writes every chunk's T = (I + L)⁻¹, then `psm_cwd_states` passes
//! the state from chunk to chunk and writes the pseudo-values U, which the scalar-decay
//! `psm_cw_outputs` (cuda::chunkwise) then reads in place of the values.

use std::sync::Arc;

use psm_codegen::ptx::chunkwise::{ChunkwiseModule, CHUNK};
use psm_codegen::ptx::delta::INVERSE_THREADS;
use psm_ir::derive::chunkwise::StateField;

use super::chunkwise::upload;
use super::device::{Args, Device, DeviceBuffer, Module};
use crate::error::RunError;

/// Runs the delta rule's kernels of `module` (compiled by `compile_delta` as `m`) for
/// one state field: fills `states` (`[nseq, nchunks + 1, keys, values]`) and returns
/// the pseudo-values `[nseq, steps, values]`. `features` are the field's β and b
/// feature names; `kvg` its uploaded keys, values and log decays.
#[allow(clippy::too_many_arguments)]
pub(super) fn pseudo_values<'f>(
    device: &Device,
    module: &Arc<Module>,
    m: &ChunkwiseModule,
    field: &StateField,
    (beta, b): (&String, &String),
    feature: &impl Fn(&str) -> &'f [f32],
    (k, v, g): (&DeviceBuffer, &DeviceBuffer, &DeviceBuffer),
    states: &DeviceBuffer,
    nseq: usize,
    steps: usize,
) -> Result<DeviceBuffer, RunError> {
    let too_large = |what: String| RunError::TooLarge { what };
    let dim = |n: usize, what: &str| u32::try_from(n).map_err(|_| too_large(format!("{what} {n} of the delta rule's kernels' grid")));
    let nchunks = steps.div_ceil(CHUNK);
    let beta_buf = upload(device, &format!("the delta rule's beta `{beta}`"), feature(beta))?;
    let b_buf = upload(device, &format!("the delta rule's b `{b}`"), feature(b))?;
    let inverse_bytes = nseq.checked_mul(nchunks * CHUNK * CHUNK * 4).ok_or_else(|| too_large("the chunks' inverses".into()))?;
    let inverse = device.alloc("the chunks' inverses", inverse_bytes, false)?;
    let u_bytes = nseq.checked_mul(steps * field.values * 4).ok_or_else(|| too_large("the pseudo-values".into()))?;
    let u = device.alloc("the pseudo-values", u_bytes, false)?;
    let steps64 = steps as u64;

    let mut args = Args::new();
    args.ptr(k).ptr(&b_buf).ptr(&beta_buf).ptr(g).ptr(&inverse).u64(steps64);
    device.launch_grid(&module.function("psm_cwd_inverse")?, (dim(nchunks, "chunks")?, dim(nseq, "sequences")?, 1), INVERSE_THREADS, 0, &args)?;

    let vtiles = dim(field.values.div_ceil(m.value_tile), "value tiles")?;
    let mut args = Args::new();
    args.ptr(k).ptr(&b_buf).ptr(&beta_buf).ptr(g).ptr(&inverse).ptr(v).u64(0).ptr(states).ptr(&u).u64(steps64).u32(0);
    device.launch_grid(&module.function("psm_cwd_states")?, (vtiles, dim(nseq, "sequences")?, 1), m.state_threads, 0, &args)?;
    Ok(u)
}
