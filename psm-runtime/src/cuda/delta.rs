//! The delta rule's chunk computation on a CUDA device (psm-codegen's `ptx::delta`):
//! `psm_cwd_prepare` computes every chunk's operands of the WY/UT form at once, then
//! `psm_cwd_states` passes the state from chunk to chunk and writes the pseudo-values
//! U, which the scalar-decay `psm_cw_outputs` (cuda::chunkwise) reads in place of the
//! values. Both take their products as the field's outputs kernel does ([`Products`]).

use psm_codegen::ptx::chunkwise::{ChunkwiseShape, Products, CHUNK};
use psm_codegen::ptx::delta::{compile_delta_with, DeltaOptions, PREPARE_THREADS};
use psm_ir::derive::chunkwise::Chunkwise;

use super::chunkwise::upload;
use super::device::{Args, Device, DeviceBuffer};
use crate::error::RunError;

/// Runs the delta rule's kernels for one state field of `shape`: fills `states`
/// (`[nseq, nchunks + 1, keys, values]`, the state entering every chunk and the final
/// one) and returns the pseudo-values `[nseq, steps, values]`. `(beta, b)` are the
/// field's feature names, `kvg` its uploaded keys, values and log decays (unread
/// without a gate); the kernels' tensor-core products are `products` (split, the chunk
/// states carry their lo planes for an outputs kernel with the same products).
#[allow(clippy::too_many_arguments)]
pub(super) fn pseudo_values<'f>(
    device: &Device,
    arch: u32,
    plan: &Chunkwise,
    shape: ChunkwiseShape,
    (beta, b): (&String, &String),
    feature: &impl Fn(&str) -> &'f [f32],
    (k, v, g): (&DeviceBuffer, &DeviceBuffer, &DeviceBuffer),
    states: &DeviceBuffer,
    nseq: usize,
    steps: usize,
    products: Products,
) -> Result<DeviceBuffer, RunError> {
    let options = DeltaOptions { products, ..DeltaOptions::default() };
    let m = compile_delta_with(shape, options, arch).map_err(|e| RunError::Codegen { aggregator: plan.aggregator.clone(), message: e.0 })?;
    let module = device.module(&plan.aggregator, &m.text)?;
    let too_large = |what: &str| RunError::TooLarge { what: what.to_string() };
    let dim = |n: usize, what: &str| u32::try_from(n).map_err(|_| too_large(&format!("{what} {n} of the delta rule's kernels' grid")));
    let nchunks = steps.div_ceil(CHUNK);
    // Bytes of one per-chunk operand times the chunks of every sequence.
    let per_chunk = |bytes: usize, what: &str| nseq.checked_mul(nchunks).and_then(|n| n.checked_mul(bytes)).ok_or_else(|| too_large(what));
    let beta = upload(device, &format!("the delta rule's beta `{beta}`"), feature(beta))?;
    let b = upload(device, &format!("the delta rule's b `{b}`"), feature(b))?;
    let w = device.alloc("the chunks' W", per_chunk(m.operand_bytes(), "the chunks' W")?, false)?;
    let khat = device.alloc("the chunks' decayed keys", per_chunk(m.operand_bytes(), "the chunks' decayed keys")?, false)?;
    let upre = device.alloc("the chunks' T V", per_chunk(CHUNK * m.padded_values * m.entry_bytes(), "the chunks' T V")?, false)?;
    let decay = device.alloc("the chunks' decays", per_chunk(4, "the chunks' decays")?, false)?;
    let u_bytes = nseq.checked_mul(steps * shape.values * m.entry_bytes()).ok_or_else(|| too_large("the pseudo-values"))?;
    let u = device.alloc("the pseudo-values", u_bytes, false)?;
    let steps64 = steps as u64;
    let sequences = dim(nseq, "sequences")?;

    let mut args = Args::new();
    args.ptr(k).ptr(&b).ptr(&beta).ptr(g).ptr(v).ptr(&w).ptr(&khat).ptr(&upre).ptr(&decay).u64(steps64);
    let prepare_fn = module.function("psm_cwd_prepare")?;
    // Its arrays are static with bf16 products (no dynamic bytes), a window when split.
    if m.prepare_shared_bytes > 0 {
        prepare_fn.allow_shared(m.prepare_shared_bytes)?;
    }
    let shared = dim(m.prepare_shared_bytes, "shared bytes")?;
    device.launch_grid(&prepare_fn, (dim(nchunks, "chunks")?, sequences, 1), PREPARE_THREADS, shared, &args)?;

    let vtiles = dim(shape.values.div_ceil(m.state_value_tile), "value tiles")?;
    let states_fn = module.function("psm_cwd_states")?;
    states_fn.allow_shared(m.state_shared_bytes)?;
    let shared = dim(m.state_shared_bytes, "shared bytes")?;
    let mut args = Args::new();
    args.ptr(&w).ptr(&khat).ptr(&upre).ptr(&decay).u64(0).ptr(states).ptr(&u).u64(steps64).u32(0);
    device.launch_grid(&states_fn, (vtiles, sequences, 1), m.state_threads, shared, &args)?;
    Ok(u)
}
