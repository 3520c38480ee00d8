//! Shared test harness: load and compile operators, random data, byte buffers in the
//! CPU ABI layouts, the interpreter (Declared precision) as the reference, and
//! bit-for-bit comparisons (any NaN equals any NaN).

#![allow(dead_code)]

pub mod programs;

use psm_codegen::clif::{self, Compiled, Layout, HAS_STATE, NO_STATE_OUT, REVERSE, WRITE_OUTPUTS};
use psm_ir::arena::Handle;
use psm_ir::derive::{self, Form};
use psm_ir::interp::{Evaluator, Fields, FloatDomain, Precision};
use psm_ir::ir::{Aggregator, Dtype, ReadoutKind, Role, Tensor};
use psm_ir::valid::{DimOverride, Info};

// ------------------------------------------------------------------ operators

pub struct Op {
    pub agg: Aggregator,
    pub info: Info,
    pub compiled: Compiled,
}

/// Parses and validates `source`, returning its only (or named) aggregator.
pub fn parse_one(source: &str, overrides: &[(&str, i64)]) -> (Aggregator, Info) {
    let module = psm_ir::front::dsl::parse(source).unwrap_or_else(|d| panic!("parse: {d:?}"));
    let overrides: Vec<DimOverride> =
        overrides.iter().map(|&(n, v)| DimOverride { name: n.to_string(), value: v }).collect();
    let infos = psm_ir::valid::validate(&module, &overrides).unwrap_or_else(|d| panic!("validate: {d:?}"));
    assert_eq!(module.aggregators.len(), 1);
    (module.aggregators[0].clone(), infos[0].clone())
}

/// The dims the tests use for a library operator (attn_agg is shrunk to stay fast).
pub fn test_dims(name: &str) -> &'static [(&'static str, i64)] {
    match name {
        "attn_agg" => &[("C", 2), ("D", 4)],
        _ => &[],
    }
}


pub fn load_op(name: &str) -> Op {
    let (agg, info) = parse_one(&library_source(name), test_dims(name));
    from_parts(agg, info)
}

pub fn from_source(source: &str, overrides: &[(&str, i64)]) -> Op {
    let (agg, info) = parse_one(source, overrides);
    from_parts(agg, info)
}

pub fn from_parts(agg: Aggregator, info: Info) -> Op {
    let compiled = clif::compile(&agg, &info).unwrap_or_else(|e| panic!("compile {}: {e}", agg.name));
    Op { agg, info, compiled }
}

#[allow(unused_imports)] // each test crate uses its part of the library loader
pub use psm_testgen::{library_names, library_source, SplitMix64 as Rng};

pub fn domain() -> FloatDomain {
    FloatDomain::new(Precision::Declared)
}

// ------------------------------------------------------------------ values

/// A value exactly representable in `dtype`.
pub fn round(dtype: Dtype, x: f64) -> f64 {
    match dtype {
        Dtype::F32 => x as f32 as f64,
        Dtype::F64 => x,
        Dtype::I32 => x as i64 as i32 as f64,
        Dtype::BF16 | Dtype::F16 => dtype.round_to_storage(x),
    }
}

/// Sensible random data for a param or input: gates and decays in (0.5, 1), the rest
/// in (-1, 1); integers in [-100, 100).
pub fn random_values(rng: &mut Rng, agg: &Aggregator, t: Handle<Tensor>, n: usize) -> Vec<f64> {
    let tensor = &agg.tensors[t];
    let gate = matches!(tensor.name.as_str(), "alpha" | "gamma")
        || (tensor.name == "a" && matches!(agg.name.as_str(), "scalar_affine" | "diag_affine"));
    (0..n)
        .map(|_| match tensor.dtype {
            Dtype::I32 => rng.below(200) as f64 - 100.0,
            d if gate => round(d, rng.uniform(0.5, 1.0)),
            d => round(d, rng.uniform(-1.0, 1.0)),
        })
        .collect()
}

/// A raw element: every field random in (-1, 1) (integers in [-100, 100)).
pub fn random_element(rng: &mut Rng, layout: &Layout) -> Fields<f64> {
    layout
        .dtypes
        .iter()
        .zip(&layout.field_lens)
        .map(|(&d, &n)| {
            (0..n)
                .map(|_| match d {
                    Dtype::I32 => rng.below(200) as f64 - 100.0,
                    d => round(d, rng.uniform(-1.0, 1.0)),
                })
                .collect()
        })
        .collect()
}

/// Bit-for-bit equality in `dtype`; any NaN equals any NaN.
pub fn same(dtype: Dtype, a: f64, b: f64) -> bool {
    match dtype {
        Dtype::F32 | Dtype::BF16 | Dtype::F16 => {
            let (x, y) = (a as f32, b as f32);
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
        }
        Dtype::F64 => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
        Dtype::I32 => a == b,
    }
}

/// Asserts two tuples of tensors agree bit for bit.
pub fn assert_same(what: &str, names: &[String], dtypes: &[Dtype], jit: &Fields<f64>, interp: &Fields<f64>) {
    assert_eq!(jit.len(), interp.len(), "{what}: field count");
    for (k, (a, b)) in jit.iter().zip(interp).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}: length of `{}`", names[k]);
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            assert!(
                same(dtypes[k], x, y),
                "{what}: `{}`[{i}] differs: jit {x:e} ({:#x}), interpreter {y:e} ({:#x})",
                names[k],
                bits(dtypes[k], x),
                bits(dtypes[k], y)
            );
        }
    }
}

fn bits(d: Dtype, x: f64) -> u64 {
    match d {
        Dtype::F32 | Dtype::BF16 | Dtype::F16 => (x as f32).to_bits() as u64,
        _ => x.to_bits(),
    }
}

// ------------------------------------------------------------------ buffers

/// An 8-byte aligned byte buffer.
#[derive(Clone)]
pub struct Buf(pub Vec<u64>);

impl Buf {
    pub fn zeroed(bytes: usize) -> Buf {
        Buf(vec![0; bytes.div_ceil(8).max(1)])
    }
    /// Filled with 0xFF bytes (NaN patterns, -1 integers): nothing may rely on zeros.
    pub fn garbage(bytes: usize) -> Buf {
        Buf(vec![u64::MAX; bytes.div_ceil(8).max(1)])
    }
    pub fn ptr(&self) -> *const u8 {
        self.0.as_ptr() as *const u8
    }
    pub fn mut_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr() as *mut u8
    }
    pub fn bytes(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr(), self.0.len() * 8) }
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.mut_ptr(), self.0.len() * 8) }
    }
}

pub fn dsize(d: Dtype) -> usize {
    d.size()
}

pub fn write_values(bytes: &mut [u8], dtype: Dtype, values: &[f64]) {
    for (i, &v) in values.iter().enumerate() {
        match dtype {
            Dtype::F32 => bytes[4 * i..4 * i + 4].copy_from_slice(&(v as f32).to_ne_bytes()),
            Dtype::I32 => bytes[4 * i..4 * i + 4].copy_from_slice(&(v as i32).to_ne_bytes()),
            Dtype::F64 => bytes[8 * i..8 * i + 8].copy_from_slice(&v.to_ne_bytes()),
            Dtype::BF16 => bytes[2 * i..2 * i + 2].copy_from_slice(&half::bf16::from_f64(v).to_ne_bytes()),
            Dtype::F16 => bytes[2 * i..2 * i + 2].copy_from_slice(&half::f16::from_f64(v).to_ne_bytes()),
        }
    }
}

pub fn read_values(bytes: &[u8], dtype: Dtype, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| match dtype {
            Dtype::F32 => f32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()) as f64,
            Dtype::I32 => i32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()) as f64,
            Dtype::F64 => f64::from_ne_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap()),
            Dtype::BF16 => half::bf16::from_ne_bytes(bytes[2 * i..2 * i + 2].try_into().unwrap()).to_f64(),
            Dtype::F16 => half::f16::from_ne_bytes(bytes[2 * i..2 * i + 2].try_into().unwrap()).to_f64(),
        })
        .collect()
}

pub fn tensor_buf(dtype: Dtype, values: &[f64]) -> Buf {
    let mut b = Buf::zeroed(values.len() * dsize(dtype));
    write_values(b.bytes_mut(), dtype, values);
    b
}

pub fn encode_element(layout: &Layout, e: &Fields<f64>) -> Buf {
    let mut b = Buf::garbage(layout.size);
    write_element(&mut b, layout, e);
    b
}

pub fn write_element(b: &mut Buf, layout: &Layout, e: &Fields<f64>) {
    for (k, values) in e.iter().enumerate() {
        write_values(&mut b.bytes_mut()[layout.offsets[k]..], layout.dtypes[k], values);
    }
}

pub fn decode_element(layout: &Layout, bytes: &[u8]) -> Fields<f64> {
    (0..layout.offsets.len())
        .map(|k| read_values(&bytes[layout.offsets[k]..], layout.dtypes[k], layout.field_lens[k]))
        .collect()
}

// ------------------------------------------------------------------ data sets

/// Params and `steps` steps of inputs, as values and as buffers.
pub struct Data {
    pub params: Vec<Vec<f64>>,
    pub inputs: Vec<Vec<f64>>,
    pub param_bufs: Vec<Buf>,
    pub input_bufs: Vec<Buf>,
    pub steps: usize,
}

impl Data {
    pub fn random(op: &Op, rng: &mut Rng, steps: usize) -> Data {
        let agg = &op.agg;
        let params: Vec<Vec<f64>> =
            agg.tensors_of(Role::Param).map(|t| random_values(rng, agg, t, op.info.len(t))).collect();
        let inputs: Vec<Vec<f64>> =
            agg.tensors_of(Role::Input).map(|t| random_values(rng, agg, t, op.info.len(t) * steps)).collect();
        Data::new(op, params, inputs, steps)
    }

    pub fn new(op: &Op, params: Vec<Vec<f64>>, inputs: Vec<Vec<f64>>, steps: usize) -> Data {
        let agg = &op.agg;
        let param_bufs =
            agg.tensors_of(Role::Param).zip(&params).map(|(t, v)| tensor_buf(agg.tensors[t].dtype, v)).collect();
        let input_bufs =
            agg.tensors_of(Role::Input).zip(&inputs).map(|(t, v)| tensor_buf(agg.tensors[t].dtype, v)).collect();
        Data { params, inputs, param_bufs, input_bufs, steps }
    }

    /// The inputs of one step, as the interpreter takes them.
    pub fn step(&self, op: &Op, t: usize) -> Fields<f64> {
        op.agg
            .tensors_of(Role::Input)
            .zip(&self.inputs)
            .map(|(f, buf)| {
                let n = op.info.len(f);
                buf[t * n..(t + 1) * n].to_vec()
            })
            .collect()
    }

    pub fn param_ptrs(&self) -> Vec<*const u8> {
        self.param_bufs.iter().map(Buf::ptr).collect()
    }
    pub fn input_ptrs(&self) -> Vec<*const u8> {
        self.input_bufs.iter().map(Buf::ptr).collect()
    }
}

/// Output buffers of `steps` rows, filled with garbage.
pub struct Outs {
    pub bufs: Vec<Buf>,
}

impl Outs {
    pub fn new(op: &Op, steps: usize) -> Outs {
        let agg = &op.agg;
        Outs {
            bufs: agg
                .tensors_of(Role::Output)
                .map(|t| Buf::garbage(op.info.len(t) * dsize(agg.tensors[t].dtype) * steps))
                .collect(),
        }
    }
    pub fn ptrs(&mut self) -> Vec<*mut u8> {
        self.bufs.iter_mut().map(Buf::mut_ptr).collect()
    }
    /// Row `t` of every output.
    pub fn row(&self, op: &Op, t: usize) -> Fields<f64> {
        let agg = &op.agg;
        agg.tensors_of(Role::Output)
            .zip(&self.bufs)
            .map(|(f, b)| {
                let n = op.info.len(f);
                let d = agg.tensors[f].dtype;
                read_values(&b.bytes()[t * n * dsize(d)..], d, n)
            })
            .collect()
    }
    /// Whether row `t` of every output still holds the garbage it was filled with.
    pub fn untouched(&self, op: &Op, t: usize) -> bool {
        let agg = &op.agg;
        agg.tensors_of(Role::Output).zip(&self.bufs).all(|(f, b)| {
            let n = op.info.len(f) * dsize(agg.tensors[f].dtype);
            b.bytes()[t * n..(t + 1) * n].iter().all(|&x| x == 0xFF)
        })
    }
}

// ------------------------------------------------------------------ names

pub fn element_names(op: &Op) -> (Vec<String>, Vec<Dtype>) {
    names(op, Role::Element)
}

pub fn output_names(op: &Op) -> (Vec<String>, Vec<Dtype>) {
    names(op, Role::Output)
}

fn names(op: &Op, role: Role) -> (Vec<String>, Vec<Dtype>) {
    op.agg.tensors_of(role).map(|t| (op.agg.tensors[t].name.clone(), op.agg.tensors[t].dtype)).unzip()
}

// ------------------------------------------------------------------ calls

pub fn never<T>(r: Result<T, std::convert::Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => match e {},
    }
}

pub struct Calls<'a> {
    pub op: &'a Op,
    pub eval: Evaluator<'a>,
    pub scratch: Buf,
}

impl<'a> Calls<'a> {
    pub fn new(op: &'a Op) -> Calls<'a> {
        Calls { op, eval: Evaluator::new(&op.agg, &op.info), scratch: Buf::garbage(op.compiled.scratch_size) }
    }

    pub fn jit_lift(&mut self, data: &Data, t: usize) -> Fields<f64> {
        let layout = &self.op.compiled.layout;
        let mut out = Buf::garbage(layout.size);
        let (p, x) = (data.param_ptrs(), data.input_ptrs());
        unsafe { (self.op.compiled.lift)(p.as_ptr(), x.as_ptr(), t as u64, out.mut_ptr(), self.scratch.mut_ptr()) };
        decode_element(layout, out.bytes())
    }

    pub fn interp_lift(&self, data: &Data, t: usize) -> Fields<f64> {
        never(self.eval.lift(&mut domain(), &data.params, &data.step(self.op, t)))
    }

    pub fn jit_combine(&mut self, data: &Data, l: &Fields<f64>, r: &Fields<f64>) -> Fields<f64> {
        let layout = &self.op.compiled.layout;
        let (lb, rb) = (encode_element(layout, l), encode_element(layout, r));
        let mut out = Buf::garbage(layout.size);
        let p = data.param_ptrs();
        unsafe { (self.op.compiled.combine)(p.as_ptr(), lb.ptr(), rb.ptr(), out.mut_ptr(), self.scratch.mut_ptr()) };
        decode_element(layout, out.bytes())
    }

    pub fn interp_combine(&self, data: &Data, l: &Fields<f64>, r: &Fields<f64>) -> Fields<f64> {
        never(self.eval.combine(&mut domain(), &data.params, l, r))
    }

    pub fn jit_readout(&mut self, data: &Data, state: &Fields<f64>, t: usize, empty: bool) -> Fields<f64> {
        let layout = &self.op.compiled.layout;
        let sb = encode_element(layout, state);
        let mut outs = Outs::new(self.op, data.steps);
        let (p, x, o) = (data.param_ptrs(), data.input_ptrs(), outs.ptrs());
        unsafe {
            (self.op.compiled.readout)(
                p.as_ptr(),
                sb.ptr(),
                x.as_ptr(),
                t as u64,
                o.as_ptr(),
                empty as u32,
                self.scratch.mut_ptr(),
            )
        };
        for s in 0..data.steps {
            if s != t {
                assert!(outs.untouched(self.op, s), "readout of step {t} wrote row {s}");
            }
        }
        outs.row(self.op, t)
    }

    pub fn interp_readout(&self, data: &Data, state: &Fields<f64>, t: usize, empty: bool) -> Fields<f64> {
        never(self.eval.readout(&mut domain(), &data.params, state, &data.step(self.op, t), empty))
    }

    pub fn jit_identity(&mut self, data: &Data) -> Option<Fields<f64>> {
        let layout = &self.op.compiled.layout;
        let f = self.op.compiled.identity?;
        let mut out = Buf::garbage(layout.size);
        let p = data.param_ptrs();
        unsafe { f(p.as_ptr(), out.mut_ptr(), self.scratch.mut_ptr()) };
        Some(decode_element(layout, out.bytes()))
    }

    pub fn interp_identity(&self, data: &Data) -> Option<Fields<f64>> {
        self.eval.identity(&mut domain(), &data.params).map(never)
    }

    /// The reference of `scan`: the ABI's loop over the interpreter. Returns the
    /// outputs of each step read out (when `write`), and the final prefix.
    #[allow(clippy::type_complexity)]
    pub fn interp_scan(
        &self,
        data: &Data,
        t0: usize,
        t1: usize,
        state: Option<&Fields<f64>>,
        reverse: bool,
    ) -> (Vec<(usize, Fields<f64>)>, Option<Fields<f64>>) {
        let steps: Vec<usize> = if reverse { (t0..t1).rev().collect() } else { (t0..t1).collect() };
        let mut p: Option<Fields<f64>> = state.cloned();
        let mut outs = Vec::new();
        let identity = self.interp_identity(data);
        for t in steps {
            let e = self.interp_lift(data, t);
            let next = match &p {
                Some(p) => self.interp_combine(data, p, &e),
                None => e,
            };
            let y = match self.op.agg.readout_kind {
                ReadoutKind::Inclusive => self.interp_readout(data, &next, t, false),
                ReadoutKind::Exclusive => match (&p, &identity) {
                    (Some(p), _) => self.interp_readout(data, p, t, false),
                    (None, Some(id)) => self.interp_readout(data, id, t, false),
                    (None, None) => self.interp_readout(data, &self.eval.zeros(&mut domain()), t, true),
                },
            };
            outs.push((t, y));
            p = Some(next);
        }
        (outs, p)
    }

    /// Runs the compiled `scan`; returns its result, the outputs buffers and the state.
    pub fn jit_scan(
        &mut self,
        data: &Data,
        t0: usize,
        t1: usize,
        state: Option<&Fields<f64>>,
        flags: u32,
    ) -> (u32, Outs, Fields<f64>) {
        let layout = &self.op.compiled.layout;
        let mut sb = match state {
            Some(s) => encode_element(layout, s),
            None => Buf::garbage(layout.size),
        };
        let mut outs = Outs::new(self.op, data.steps);
        let (p, x, o) = (data.param_ptrs(), data.input_ptrs(), outs.ptrs());
        let r = unsafe {
            (self.op.compiled.scan)(
                p.as_ptr(),
                x.as_ptr(),
                o.as_ptr(),
                t0 as u64,
                t1 as u64,
                sb.mut_ptr(),
                flags,
                self.scratch.mut_ptr(),
            )
        };
        let s = decode_element(layout, sb.bytes());
        (r, outs, s)
    }
}

// ------------------------------------------------------------------ the full check

/// Steps of input data; scans run over sub-ranges of them.
const STEPS: usize = 70;

/// Every compiled function of `op` against the interpreter: lift, identity, combine
/// (of lifted, combined, raw and identity elements), readout (empty on and off), and
/// scan over every flag combination, several lengths and starts, also against the
/// reference driver's recurrent form forward and reversed.
pub fn check_op(op: &Op, seed: u64) {
    let name = op.agg.name.as_str();
    let mut rng = Rng::new(seed);
    let data = Data::random(op, &mut rng, STEPS);
    let mut c = Calls::new(op);
    let (en, ed) = element_names(op);
    let (on, od) = output_names(op);
    let layout = op.compiled.layout.clone();

    // lift
    for t in [0, 1, 5, STEPS - 1] {
        assert_same(&format!("{name}: lift step {t}"), &en, &ed, &c.jit_lift(&data, t), &c.interp_lift(&data, t));
    }

    // identity
    let id = c.interp_identity(&data);
    assert_eq!(c.jit_identity(&data).is_some(), id.is_some(), "{name}: identity declared");
    if let Some(id) = &id {
        assert_same(&format!("{name}: identity"), &en, &ed, &c.jit_identity(&data).unwrap(), id);
    }

    // combine: lifted elements, combined ones, raw random ones, and the identity.
    let lifted: Vec<_> = (0..6).map(|t| c.interp_lift(&data, t)).collect();
    let mut pairs = vec![];
    for k in 0..5 {
        pairs.push((lifted[k].clone(), lifted[k + 1].clone()));
    }
    let ab = c.interp_combine(&data, &lifted[0], &lifted[1]);
    let cd = c.interp_combine(&data, &lifted[2], &lifted[3]);
    pairs.push((ab.clone(), cd.clone()));
    pairs.push((cd, lifted[4].clone()));
    for _ in 0..4 {
        pairs.push((random_element(&mut rng, &layout), random_element(&mut rng, &layout)));
    }
    if let Some(id) = &id {
        pairs.push((id.clone(), lifted[0].clone()));
        pairs.push((lifted[0].clone(), id.clone()));
    }
    for (k, (l, r)) in pairs.iter().enumerate() {
        assert_same(
            &format!("{name}: combine pair {k}"),
            &en,
            &ed,
            &c.jit_combine(&data, l, r),
            &c.interp_combine(&data, l, r),
        );
    }

    // readout: lifted, combined and raw states, empty on and off.
    let mut states = vec![lifted[0].clone(), ab, random_element(&mut rng, &layout)];
    states.push(c.eval.zeros(&mut domain()));
    states.extend(id.clone());
    for (k, s) in states.iter().enumerate() {
        for t in [0, 3, STEPS - 1] {
            for empty in [false, true] {
                assert_same(
                    &format!("{name}: readout state {k} step {t} empty {empty}"),
                    &on,
                    &od,
                    &c.jit_readout(&data, s, t, empty),
                    &c.interp_readout(&data, s, t, empty),
                );
            }
        }
    }

    // scan: every flag combination, several lengths and starts.
    let init = c.interp_combine(&data, &lifted[4], &lifted[5]);
    for len in [0usize, 1, 2, 3, 7, 64] {
        for t0 in [0usize, 5] {
            let t1 = t0 + len;
            for flags in 0..16u32 {
                let has = flags & HAS_STATE != 0;
                let write = flags & WRITE_OUTPUTS != 0;
                let reverse = flags & REVERSE != 0;
                let state_out = flags & NO_STATE_OUT == 0;
                let what = format!("{name}: scan {t0}..{t1} flags {flags:#06b}");
                let state = has.then_some(&init);
                let (r, outs, s) = c.jit_scan(&data, t0, t1, state, flags);
                let (ys, p) = c.interp_scan(&data, t0, t1, state, reverse);
                assert_eq!(r, p.is_some() as u32, "{what}: return value");
                match &p {
                    Some(p) if state_out => assert_same(&format!("{what}: final state"), &en, &ed, &s, p),
                    // Without steps `state` is untouched, whatever the flags.
                    Some(p) if t0 == t1 => assert_same(&format!("{what}: state kept"), &en, &ed, &s, p),
                    _ => {}
                }
                for t in 0..STEPS {
                    if !(write && (t0..t1).contains(&t)) {
                        assert!(outs.untouched(op, t), "{what}: row {t} written");
                    }
                }
                if write {
                    for (t, y) in &ys {
                        assert_same(&format!("{what}: output row {t}"), &on, &od, &outs.row(op, *t), y);
                    }
                }
            }
        }
    }

    // scan against the reference driver's recurrent form, forward and reversed.
    for len in [1usize, 7, 64] {
        let sub = Data::new(
            op,
            data.params.clone(),
            op.agg.tensors_of(Role::Input).zip(&data.inputs).map(|(f, v)| v[..len * op.info.len(f)].to_vec()).collect(),
            len,
        );
        let mut cs = Calls::new(op);
        let reference =
            derive::run(&op.agg, &op.info, domain(), Form::Fold, &sub.params, &sub.inputs, len).expect("reference run");
        let (r, outs, s) = cs.jit_scan(&sub, 0, len, None, WRITE_OUTPUTS);
        assert_eq!(r, 1);
        assert_same(
            &format!("{name}: fold of {len}: final state"),
            &en,
            &ed,
            &s,
            reference.prefixes[len].as_ref().unwrap(),
        );
        for t in 0..len {
            let y: Vec<Vec<f64>> = op
                .agg
                .tensors_of(Role::Output)
                .zip(&reference.outputs)
                .map(|(f, v)| v[t * op.info.len(f)..(t + 1) * op.info.len(f)].to_vec())
                .collect();
            assert_same(&format!("{name}: fold of {len}: output {t}"), &on, &od, &outs.row(op, t), &y);
        }

        // REVERSE: the fold over the reversed steps, outputs at the original rows.
        let reversed: Vec<Vec<f64>> = op
            .agg
            .tensors_of(Role::Input)
            .zip(&sub.inputs)
            .map(|(f, v)| {
                let n = op.info.len(f);
                (0..len).rev().flat_map(|t| v[t * n..(t + 1) * n].to_vec()).collect()
            })
            .collect();
        let reference =
            derive::run(&op.agg, &op.info, domain(), Form::Fold, &sub.params, &reversed, len).expect("reference run");
        let (r, outs, s) = cs.jit_scan(&sub, 0, len, None, WRITE_OUTPUTS | REVERSE);
        assert_eq!(r, 1);
        assert_same(
            &format!("{name}: reversed fold of {len}: final state"),
            &en,
            &ed,
            &s,
            reference.prefixes[len].as_ref().unwrap(),
        );
        for t in 0..len {
            let y: Vec<Vec<f64>> = op
                .agg
                .tensors_of(Role::Output)
                .zip(&reference.outputs)
                .map(|(f, v)| {
                    let n = op.info.len(f);
                    let k = len - 1 - t;
                    v[k * n..(k + 1) * n].to_vec()
                })
                .collect();
            assert_same(&format!("{name}: reversed fold of {len}: output {t}"), &on, &od, &outs.row(op, t), &y);
        }
    }
}

// ------------------------------------------------------------------ special values

pub const SPECIALS: [f64; 14] = [
    f64::NAN,
    -f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    -2.5,
    1e-40,
    -1e-45,
    3.0e38,
    100.0,
];

/// Inputs drawn from the special values (and some random ones), rounded to their type.
pub fn special_data(op: &Op, rng: &mut Rng, steps: usize) -> Data {
    let agg = &op.agg;
    let inputs = agg
        .tensors_of(Role::Input)
        .map(|t| {
            let d = agg.tensors[t].dtype;
            (0..op.info.len(t) * steps)
                .map(|_| match d {
                    Dtype::I32 => {
                        const INTS: [i64; 8] = [i32::MIN as i64, i32::MAX as i64, -1, 0, 1, 65536, -65536, 46341];
                        if rng.below(2) == 0 {
                            INTS[rng.below(INTS.len() as u64) as usize] as f64
                        } else {
                            (rng.next_u64() as i32) as f64
                        }
                    }
                    d if rng.below(4) == 0 => round(d, rng.uniform(-10.0, 10.0)),
                    d => round(d, SPECIALS[rng.below(SPECIALS.len() as u64) as usize]),
                })
                .collect()
        })
        .collect();
    let params = agg.tensors_of(Role::Param).map(|t| random_values(rng, agg, t, op.info.len(t))).collect();
    Data::new(op, params, inputs, steps)
}

/// Lift, combine (of lifted neighbours) and a full scan against the interpreter.
pub fn check_against_interpreter(op: &Op, data: &Data) {
    let mut c = Calls::new(op);
    let (en, ed) = element_names(op);
    let (on, od) = output_names(op);
    let name = &op.agg.name;
    for t in 0..data.steps {
        assert_same(&format!("{name}: lift {t}"), &en, &ed, &c.jit_lift(data, t), &c.interp_lift(data, t));
    }
    for t in 0..data.steps - 1 {
        let (a, b) = (c.interp_lift(data, t), c.interp_lift(data, t + 1));
        assert_same(
            &format!("{name}: combine {t}"),
            &en,
            &ed,
            &c.jit_combine(data, &a, &b),
            &c.interp_combine(data, &a, &b),
        );
    }
    let (r, outs, s) = c.jit_scan(data, 0, data.steps, None, WRITE_OUTPUTS);
    let (ys, p) = c.interp_scan(data, 0, data.steps, None, false);
    assert_eq!(r, 1);
    assert_same(&format!("{name}: scan state"), &en, &ed, &s, p.as_ref().unwrap());
    for (t, y) in &ys {
        assert_same(&format!("{name}: scan output {t}"), &on, &od, &outs.row(op, *t), y);
    }
    // Without the state on exit: the same outputs (dead prefix fields skipped).
    let (r, outs, _) = c.jit_scan(data, 0, data.steps, None, WRITE_OUTPUTS | NO_STATE_OUT);
    assert_eq!(r, 1);
    for (t, y) in &ys {
        assert_same(&format!("{name}: scan output {t} without state"), &on, &od, &outs.row(op, *t), y);
    }
}

/// One accessible page between two inaccessible ones: a generated function that reads
/// or writes outside the buffers it was given faults.
pub struct Guarded {
    base: *mut u8,
    page: usize,
}

impl Guarded {
    pub fn new() -> Guarded {
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let base = libc::mmap(
                std::ptr::null_mut(),
                3 * page,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            let base = base as *mut u8;
            assert_eq!(libc::mprotect(base.add(page) as *mut _, page, libc::PROT_READ | libc::PROT_WRITE), 0);
            Guarded { base, page }
        }
    }
    /// `bytes` at the very start of the accessible page.
    pub fn at_start(&self) -> *mut u8 {
        unsafe { self.base.add(self.page) }
    }
    /// `bytes` ending exactly at the end of the accessible page.
    pub fn at_end(&self, bytes: usize) -> *mut u8 {
        unsafe { self.base.add(2 * self.page - bytes) }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.base as *mut _, 3 * self.page) };
    }
}
