//! The chunkwise form's chunk computation on a CUDA device: psm-codegen's tensor-core
//! kernels (`ptx::chunkwise`) for state fields with no decay, a scalar decay or a decay
//! per key (diagonal), and `ptx::delta`'s for the delta rule (`super::delta`), one module
//! per field shape. The derived feature and readout maps run through the CUDA executor
//! like any aggregator (crate::chunkwise drives the whole form).
//!
//! Per state field: for a decay per key, `psm_cw_decays` first writes its cumulative
//! logs Λ within each chunk; `psm_cw_states` (or the delta rule's prepare and states
//! kernels, which also write the pseudo-values that replace the values) writes the state
//! entering every chunk (and the final one), then `psm_cw_outputs` each contraction that
//! reads the field. Chunks
//! are psm-codegen's [`CHUNK`] steps; the state and the sums are f32, and the operands
//! on the tensor cores are taken as the caller's [`Products`] say: split into bf16 hi +
//! lo planes (f32 accuracy, about 1e-5) or rounded to bf16 (about 3e-3 on f32 data),
//! for the delta rule's kernels (`ptx::delta`) as for the others.

use psm_codegen::ptx::chunkwise::{compile_chunkwise_with, ChunkDecay, ChunkwiseShape, Products, Storage, CHUNK, OUTPUT_THREADS};
use psm_ir::derive::chunkwise::{Chunkwise, Decay, Gate};

use super::device::{Args, Device, DeviceBuffer};
use crate::error::RunError;

pub(super) fn upload(device: &Device, what: &str, data: &[f32]) -> Result<DeviceBuffer, RunError> {
    // SAFETY: f32 values viewed as their bytes: same memory, alignment 1.
    let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) };
    device.upload(what, bytes)
}

/// The contractions of `plan`, `[contraction][sequence × steps × values]`, from the
/// per-step features (`feature(name)`: `[sequence × steps × len]` f32), with the
/// tensor-core products `products`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn contract<'f>(
    device: &Device,
    arch: u32,
    plan: &Chunkwise,
    feature: impl Fn(&str) -> &'f [f32],
    nseq: usize,
    steps: usize,
    products: Products,
) -> Result<Vec<Vec<f32>>, RunError> {
    let too_large = |what: String| RunError::TooLarge { what };
    let nchunks = steps.div_ceil(CHUNK);
    let dim = |n: usize, what: &str| u32::try_from(n).map_err(|_| too_large(format!("{what} {n} of the chunkwise kernels' grid")));
    let mut contractions: Vec<Vec<f32>> = plan.contractions.iter().map(|c| vec![0.0; nseq * steps * plan.fields[c.field].values]).collect();
    if nseq == 0 || steps == 0 {
        return Ok(contractions);
    }
    device.bind()?;
    for (fi, field) in plan.fields.iter().enumerate() {
        let (decay, gate) = match &field.decay {
            Decay::Scalar { gate: Gate::Log(g) } => (ChunkDecay::Log, Some(g)),
            Decay::Scalar { gate: Gate::Value(g) } => (ChunkDecay::Value, Some(g)),
            Decay::Diagonal { gate: Gate::Log(g) } => (ChunkDecay::DiagonalLog, Some(g)),
            Decay::Diagonal { gate: Gate::Value(g) } => (ChunkDecay::DiagonalValue, Some(g)),
            Decay::DeltaRule { log_decay: Some(g), .. } => (ChunkDecay::Log, Some(g)),
            _ => (ChunkDecay::None, None),
        };
        let shape = ChunkwiseShape { keys: field.keys, values: field.values, decay, exclusive: plan.exclusive };
        let m = compile_chunkwise_with(shape, Storage::F32, products, arch).map_err(|e| RunError::Codegen { aggregator: plan.aggregator.clone(), message: e.0 })?;
        let module = device.module(&plan.aggregator, &m.text)?;
        let (states_fn, outputs_fn) = (module.function("psm_cw_states")?, module.function("psm_cw_outputs")?);
        // The outputs kernel's arrays are dynamic shared memory, more than 48 KiB at 128 keys.
        outputs_fn.allow_shared(m.output_shared_bytes)?;
        let output_shared = u32::try_from(m.output_shared_bytes).map_err(|_| too_large("the outputs kernel's shared memory".into()))?;
        let k = upload(device, &format!("the keys `{}`", field.key), feature(&field.key))?;
        let v = upload(device, &format!("the values `{}`", field.value), feature(&field.value))?;
        let decays = match gate {
            Some(name) => upload(device, &format!("the decays `{name}`"), feature(name))?,
            None => device.alloc("an unread decay", 8, true)?,
        };
        // For a decay per key, Λ replaces the decays as the other kernels' `g`.
        let lam = match m.decay_threads {
            Some(threads) => {
                let entries = nseq.checked_mul(steps).and_then(|n| n.checked_mul(field.keys * 4));
                let lam = device.alloc("the cumulative log decays", entries.ok_or_else(|| too_large("the cumulative log decays".into()))?, false)?;
                let mut args = Args::new();
                args.ptr(&decays).ptr(&lam).u64(steps as u64);
                device.launch_grid(&module.function("psm_cw_decays")?, (dim(nchunks, "chunks")?, dim(nseq, "sequences")?, 1), threads, 0, &args)?;
                Some(lam)
            }
            None => None,
        };
        let g = lam.as_ref().unwrap_or(&decays);
        let matrices = nseq.checked_mul(nchunks + 1).and_then(|n| n.checked_mul(field.keys * field.values * 4));
        let states = device.alloc("the chunk states", matrices.ok_or_else(|| too_large("the chunk states".into()))?, false)?;
        // The delta rule's outputs read its pseudo-values in place of the values.
        let v = if let Decay::DeltaRule { beta, b, .. } = &field.decay {
            super::delta::pseudo_values(device, arch, plan, shape, (beta, b), &feature, (&k, &v, g), &states, nseq, steps, products)?
        } else {
            let mut args = Args::new();
            args.ptr(&k).ptr(&v).ptr(g).u64(0).ptr(&states).u64(steps as u64).u32(0);
            device.launch_grid(&states_fn, m.state_grid(dim(nseq, "sequences")?), m.state_threads, 0, &args)?;
            v
        };
        for (c, out) in plan.contractions.iter().zip(&mut contractions) {
            if c.field != fi {
                continue;
            }
            let q = upload(device, &format!("the queries `{}`", c.query), feature(&c.query))?;
            let o = device.alloc(&format!("the contraction `{}`", c.output), out.len() * 4, false)?;
            let mut args = Args::new();
            args.ptr(&q).ptr(&k).ptr(&v).ptr(g).ptr(&states).ptr(&o).u64(steps as u64).u32(0);
            device.launch_grid(&outputs_fn, m.output_grid(dim(nchunks, "chunks")?, dim(nseq, "sequences")?), OUTPUT_THREADS, output_shared, &args)?;
            // SAFETY: f32 values viewed as their bytes, exclusively borrowed.
            let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, out.len() * 4) };
            device.copy_to_host(&o, 0, bytes)?;
        }
    }
    Ok(contractions)
}
