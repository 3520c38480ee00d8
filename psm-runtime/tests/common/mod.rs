//! Shared helpers of the runtime tests: the operator library, seeded data, the
//! reference runs of psm-ir, and comparisons (bit-exact, or the tolerance of
//! psm-ir/tests/forms.rs for associative operators).

#![allow(dead_code, clippy::too_many_arguments)]

use psm_ir::derive::{self, Form as RefForm};
use psm_ir::interp::{FloatDomain, Precision};
use psm_ir::ir::{Dtype, Role};
use psm_runtime::{Aggregator, Backend, Buffer, DimOverride, Inputs, Program};

#[allow(unused_imports)] // each test crate uses its part of the library loader
pub use psm_testgen::{library_dir, library_names, value_range, SplitMix64 as Rng};

pub fn load(name: &str, dims: &[(&str, i64)]) -> Aggregator {
    let overrides: Vec<DimOverride> = dims.iter().map(|&(n, v)| DimOverride { name: n.into(), value: v }).collect();
    let program = Program::from_file(library_dir().join(format!("{name}.psm")), &overrides).unwrap_or_else(|e| panic!("{e}"));
    program.aggregator(name).unwrap().with_backend(Backend::Interp)
}

pub fn inline(src: &str, name: &str) -> Aggregator {
    Program::from_source(src, &[]).unwrap_or_else(|e| panic!("{e}")).aggregator(name).unwrap().with_backend(Backend::Interp)
}

/// The backends every runtime test runs: the interpreter and the JIT.
pub fn backends(agg: &Aggregator) -> Vec<Aggregator> {
    let cpu = agg.with_backend(Backend::Cpu);
    cpu.compile().unwrap_or_else(|e| panic!("{}: {e}", agg.name()));
    vec![agg.with_backend(Backend::Interp), cpu]
}

/// Random values for one role, one buffer per tensor (`steps` = 1 for params), each
/// exactly representable in its dtype; an i32 input holds the step index.
pub fn data(agg: &Aggregator, role: Role, steps: usize, rng: &mut Rng) -> Vec<Vec<f64>> {
    let (ir, info) = (agg.ir(), agg.info());
    ir.tensors_of(role)
        .map(|f| {
            let t = &ir.tensors[f];
            let len = info.len(f);
            let (lo, hi) = value_range(&ir.name, &t.name);
            (0..steps * len)
                .map(|k| match t.dtype {
                    Dtype::I32 => (k / len) as f64,
                    Dtype::F32 => rng.range(lo, hi) as f32 as f64,
                    Dtype::F64 => rng.range(lo, hi),
                    Dtype::BF16 | Dtype::F16 => t.dtype.round_to_storage(rng.range(lo, hi)),
                })
                .collect()
        })
        .collect()
}

pub fn to_buffer(dtype: Dtype, v: &[f64]) -> Buffer {
    match dtype {
        Dtype::F32 => Buffer::F32(v.iter().map(|&x| x as f32).collect()),
        Dtype::F64 => Buffer::F64(v.to_vec()),
        Dtype::I32 => Buffer::I32(v.iter().map(|&x| x as i32).collect()),
        // Exact: the values are of the format (`data`).
        Dtype::BF16 => Buffer::BF16(v.iter().map(|&x| psm_runtime::half::bf16::from_f64(x)).collect()),
        Dtype::F16 => Buffer::F16(v.iter().map(|&x| psm_runtime::half::f16::from_f64(x)).collect()),
    }
}

pub fn dtypes(agg: &Aggregator, role: Role) -> Vec<Dtype> {
    agg.ir().tensors_of(role).map(|t| agg.ir().tensors[t].dtype).collect()
}

pub fn lens(agg: &Aggregator, role: Role) -> Vec<usize> {
    agg.ir().tensors_of(role).map(|t| agg.info().len(t)).collect()
}

pub fn names(agg: &Aggregator, role: Role) -> Vec<String> {
    agg.ir().tensors_of(role).map(|t| agg.ir().tensors[t].name.clone()).collect()
}

/// Per-sequence data for a batch, and the typed buffers of its first n steps.
pub struct Batch {
    pub params: Vec<Vec<f64>>,
    pub seqs: Vec<Vec<Vec<f64>>>,
    pub param_bufs: Vec<Buffer>,
}

impl Batch {
    pub fn new(agg: &Aggregator, nseq: usize, steps: usize, seed: u64) -> Batch {
        let mut rng = Rng(seed);
        let params = data(agg, Role::Param, 1, &mut rng);
        let seqs = (0..nseq).map(|_| data(agg, Role::Input, steps, &mut rng)).collect();
        let param_bufs = params.iter().zip(dtypes(agg, Role::Param)).map(|(v, d)| to_buffer(d, v)).collect();
        Batch { params, seqs, param_bufs }
    }

    /// Sequence b's first n steps, one buffer per field.
    pub fn first(&self, agg: &Aggregator, b: usize, n: usize) -> Vec<Vec<f64>> {
        self.seqs[b].iter().zip(lens(agg, Role::Input)).map(|(v, len)| v[..n * len].to_vec()).collect()
    }

    /// The typed buffers `[nseq, n, dims]` of the first `nseq` sequences.
    pub fn input_bufs(&self, agg: &Aggregator, nseq: usize, n: usize) -> Vec<Buffer> {
        let lens = lens(agg, Role::Input);
        dtypes(agg, Role::Input)
            .into_iter()
            .enumerate()
            .map(|(k, d)| {
                let v: Vec<f64> = (0..nseq).flat_map(|b| self.seqs[b][k][..n * lens[k]].to_vec()).collect();
                to_buffer(d, &v)
            })
            .collect()
    }

    /// Steps j0..j1 of the first nseq sequences, `[nseq, j1 - j0, dims]`.
    pub fn window_bufs(&self, agg: &Aggregator, nseq: usize, j0: usize, j1: usize) -> Vec<Buffer> {
        let lens = lens(agg, Role::Input);
        dtypes(agg, Role::Input)
            .into_iter()
            .enumerate()
            .map(|(k, d)| {
                let v: Vec<f64> = (0..nseq).flat_map(|b| self.seqs[b][k][j0 * lens[k]..j1 * lens[k]].to_vec()).collect();
                to_buffer(d, &v)
            })
            .collect()
    }
}

pub fn inputs<'a>(agg: &Aggregator, batch: &[usize], n: usize, bufs: &'a [Buffer], params: &'a [Buffer]) -> Inputs<'a> {
    let mut x = Inputs::new(batch, n);
    for (name, b) in names(agg, Role::Input).iter().zip(bufs) {
        x = x.input(name, b);
    }
    for (name, b) in names(agg, Role::Param).iter().zip(params) {
        x = x.param(name, b);
    }
    x
}

pub fn reference(agg: &Aggregator, p: Precision, form: RefForm, params: &[Vec<f64>], inputs: &[Vec<f64>], n: usize) -> derive::Outputs {
    derive::run(agg.ir(), agg.info(), FloatDomain::new(p), form, params, inputs, n).unwrap()
}

/// The values of sequence b (of `seq_len` units of `width`) in a batched buffer.
pub fn seq_slice(buf: &Buffer, b: usize, unit: usize) -> Vec<f64> {
    buf.to_f64()[b * unit..(b + 1) * unit].to_vec()
}

pub fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// |found − ref| ≤ tol · (|ref| + scale_t), scale_t the running max |ref| over steps ≤ t
/// (psm-ir/tests/forms.rs). Returns the worst err / (tol·(|ref| + scale)).
pub fn close(what: &str, found: &[f64], reference: &[f64], width: usize, exact: bool, tol: f64) -> f64 {
    assert_eq!(found.len(), reference.len(), "{what}: lengths");
    let mut scale = 0.0f64;
    let mut worst = 0.0f64;
    for (t, (f, r)) in found.chunks(width.max(1)).zip(reference.chunks(width.max(1))).enumerate() {
        scale = r.iter().fold(scale, |m, v| m.max(v.abs()));
        for (j, (&a, &b)) in f.iter().zip(r).enumerate() {
            if exact {
                assert_eq!(a, b, "{what}: step {t}, entry {j}");
                continue;
            }
            if a == b || (a.is_nan() && b.is_nan()) {
                continue; // equal, infinities and NaN included
            }
            let err = (a - b).abs();
            let bound = tol * (b.abs() + scale);
            assert!(err <= bound, "{what}: step {t}, entry {j}: {a:e} vs {b:e} (err {err:e}, bound {bound:e})");
            if bound > 0.0 {
                worst = worst.max(err / bound);
            }
        }
    }
    worst
}

// Not every test binary uses all of them.
#[allow(unused_imports)]
pub use psm_runtime::accuracy::{conditioned_tolerance, tolerance, worst_error};

/// The norm-wise relative error ‖found − reference‖ / ‖reference‖ (the absolute norm
/// for a zero reference).
pub fn norm_error(found: &[f64], reference: &[f64]) -> f64 {
    let diff: f64 = found.iter().zip(reference).map(|(a, b)| (a - b) * (a - b)).sum();
    let size: f64 = reference.iter().map(|b| b * b).sum();
    if size == 0.0 {
        diff.sqrt()
    } else {
        (diff / size).sqrt()
    }
}

/// A final state p_n against the reference, with the scale of forms.rs: the largest
/// |entry| of that field over the reference prefixes p_1..p_n.
pub fn close_state(what: &str, found: &[f64], prefixes: &[Option<Vec<Vec<f64>>>], k: usize, exact: bool, tol: f64) {
    let n = prefixes.len() - 1;
    let want = &prefixes[n].as_ref().expect("a state after a step")[k];
    let scale = prefixes[1..].iter().flatten().flat_map(|p| p[k].iter()).fold(0.0f64, |m, v| m.max(v.abs()));
    assert_eq!(found.len(), want.len(), "{what}: lengths");
    for (j, (&a, &b)) in found.iter().zip(want).enumerate() {
        if exact {
            assert_eq!(a, b, "{what}: entry {j}");
        } else {
            let bound = tol * (b.abs() + scale);
            assert!((a - b).abs() <= bound, "{what}: entry {j}: {a:e} vs {b:e} (bound {bound:e})");
        }
    }
}
