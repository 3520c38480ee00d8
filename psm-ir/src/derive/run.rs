//! The reference driver: lift every step, compute the prefixes with one form, read out
//! every step. This is what every backend's run of a form is compared against.

use super::{chunked, fold, tree, Stream};
use crate::interp::{Domain, Evaluator, Fields, FloatDomain};
use crate::ir::{Aggregator, ReadoutKind, Role};
use crate::valid::Info;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The sequential left fold (recurrent form).
    Fold,
    /// The 3-phase chunked scan with chunks of this many steps.
    Chunked(usize),
    /// The fixed Blelloch tree.
    Tree,
    /// The binary counter with cached partial folds.
    Stream,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Fold => "recurrent",
            Form::Chunked(_) => "chunked",
            Form::Tree => "tree",
            Form::Stream => "stream",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormError {
    /// A tensor's data has the wrong number of values.
    Length { role: Role, name: String, expected: usize, found: usize },
    /// A different number of tensors than the aggregator declares.
    Count { role: Role, expected: usize, found: usize },
}

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormError::Length { role, name, expected, found } => {
                write!(f, "{} `{name}` has {found} values, expected {expected}", role.keyword())
            }
            FormError::Count { role, expected, found } => {
                write!(f, "{found} {} tensors given, the aggregator declares {expected}", role.keyword())
            }
        }
    }
}

impl std::error::Error for FormError {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub combines: u64,
    pub peak_elements: usize,
}

#[derive(Debug, Clone)]
pub struct Outputs {
    /// One buffer per output, `[steps, output dims...]` row-major.
    pub outputs: Vec<Vec<f64>>,
    /// The exclusive prefixes p_0..p_n (`None` = the flagged identity).
    pub prefixes: Vec<Option<Fields<f64>>>,
    pub stats: RunStats,
}

/// Runs `steps` steps of an aggregator with one form. `inputs` holds one buffer per
/// input field, `[steps, field dims...]` row-major; `params` one per param. The data are
/// first converted to their declared types in `domain` (in Declared precision an f32
/// input given as 0.1 reads f32(0.1), as it would from a backend's f32 buffer; a bf16
/// or f16 input reads the value rounded to its format in either precision).
pub fn run(
    agg: &Aggregator,
    info: &Info,
    domain: FloatDomain,
    form: Form,
    params: &[Vec<f64>],
    inputs: &[Vec<f64>],
    steps: usize,
) -> Result<Outputs, FormError> {
    let eval = Evaluator::new(agg, info);
    check(&eval, Role::Param, params, 1)?;
    check(&eval, Role::Input, inputs, steps)?;
    let mut d = domain;
    // The data as a backend holds it: each value in its declared type (an f32 input
    // given as the f64 0.1 is f32(0.1) in Declared precision; i32 values wrap).
    let params = &convert(&eval, &mut d, Role::Param, params);
    let inputs = &convert(&eval, &mut d, Role::Input, inputs);
    let input_fields = eval.fields(Role::Input);
    let step_input = |t: usize| -> Fields<f64> {
        input_fields.iter().zip(inputs).map(|(&f, buf)| {
            let n = info.len(f);
            buf[t * n..(t + 1) * n].to_vec()
        }).collect()
    };
    let never = |r: Result<Fields<f64>, std::convert::Infallible>| match r {
        Ok(v) => v,
        Err(e) => match e {},
    };
    let elements: Vec<Fields<f64>> = (0..steps).map(|t| never(eval.lift(&mut d, params, &step_input(t)))).collect();
    let mut combines = 0u64;
    let mut combine = |l: &Fields<f64>, r: &Fields<f64>| {
        combines += 1;
        eval.combine(&mut FloatDomain::new(domain.precision), params, l, r)
    };
    let (prefixes, peak) = match form {
        Form::Fold => (fold(&elements, &mut combine), 1),
        Form::Chunked(c) => (chunked(&elements, c, &mut combine), 1),
        // The reference tree keeps every level of the up-sweep: 2·size − 1 slots.
        Form::Tree => (tree(&elements, &mut combine), 2 * steps.max(1).next_power_of_two() - 1),
        Form::Stream => {
            let r = Stream::prefixes(&elements, &mut combine);
            let peak = r.as_ref().map_or(0, |(_, s)| s.peak_elements);
            (r.map(|(p, _)| p), peak)
        }
    };
    let prefixes = match prefixes {
        Ok(p) => p,
        Err(e) => match e {},
    };
    let identity = eval.identity(&mut d, params).map(never);
    let zeros = eval.zeros(&mut d);
    let output_fields = eval.fields(Role::Output);
    let mut outputs: Vec<Vec<f64>> = output_fields.iter().map(|&f| Vec::with_capacity(steps * info.len(f))).collect();
    for t in 0..steps {
        let x = step_input(t);
        let (state, empty) = match agg.readout_kind {
            ReadoutKind::Inclusive => (prefixes[t + 1].as_ref().expect("a state after a step"), false),
            ReadoutKind::Exclusive => match (&prefixes[t], &identity) {
                (Some(p), _) => (p, false),
                (None, Some(id)) => (id, false),
                (None, None) => (&zeros, true),
            },
        };
        let ys = never(eval.readout(&mut d, params, state, &x, empty));
        for (buf, y) in outputs.iter_mut().zip(ys) {
            buf.extend(y);
        }
    }
    Ok(Outputs { outputs, prefixes, stats: RunStats { combines, peak_elements: peak } })
}

fn convert(eval: &Evaluator, d: &mut FloatDomain, role: Role, data: &[Vec<f64>]) -> Vec<Vec<f64>> {
    eval.fields(role)
        .iter()
        .zip(data)
        .map(|(&f, buf)| {
            let dtype = eval.agg.tensors[f].dtype;
            let ty = dtype.scalar();
            // A 16-bit tensor holds values of its format in either precision.
            buf.iter().map(|&v| d.constant(dtype.round_to_storage(v), ty)).collect()
        })
        .collect()
}

fn check(eval: &Evaluator, role: Role, data: &[Vec<f64>], steps: usize) -> Result<(), FormError> {
    let fields = eval.fields(role);
    if fields.len() != data.len() {
        return Err(FormError::Count { role, expected: fields.len(), found: data.len() });
    }
    for (&f, buf) in fields.iter().zip(data) {
        let expected = eval.info.len(f) * steps;
        if buf.len() != expected {
            return Err(FormError::Length { role, name: eval.agg.tensors[f].name.clone(), expected, found: buf.len() });
        }
    }
    Ok(())
}
