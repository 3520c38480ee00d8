//! Validation: for one choice of dims, resolve every size, infer every index extent,
//! type every expression, check every access against its bounds (narrowed by guards)
//! and every body for definedness. The result, [`Info`], is what every consumer of the
//! IR — interpreter, algebra, backends — requires: nothing unvalidated runs.

mod expr;


use crate::arena::Handle;
use crate::front::dsl::MAX_ERRORS;
use crate::ir::*;
use crate::{Diagnostic, Span};

/// Everything validation learned about one aggregator at one choice of dims.
#[derive(Debug, Clone)]
pub struct Info {
    /// Dim values, indexed by dim handle.
    pub dims: Vec<i64>,
    /// Tensor shapes, indexed by tensor handle.
    pub shapes: Vec<Vec<usize>>,
    /// Local shapes and types, indexed by local handle.
    pub local_shapes: Vec<Vec<usize>>,
    pub local_types: Vec<Scalar>,
    /// Index-variable extents, indexed by index-variable handle.
    pub extents: Vec<usize>,
    /// The type of each expression's value, indexed by expression handle.
    pub types: Vec<Scalar>,
    /// Expressions computed from index variables, dims and integer literals alone: the
    /// interpreter evaluates them exactly as integers and converts the result to
    /// `types[e]` (so `rsqrt(D)` is the f32 rsqrt of the f32 value of D).
    pub constant: Vec<bool>,
}

impl Info {
    pub fn shape(&self, t: Handle<Tensor>) -> &[usize] {
        &self.shapes[t.index()]
    }
    pub fn len(&self, t: Handle<Tensor>) -> usize {
        self.shape(t).iter().product()
    }
    pub fn ty(&self, e: Handle<Expr>) -> Scalar {
        self.types[e.index()]
    }
    pub fn extent(&self, v: Handle<IndexVar>) -> usize {
        self.extents[v.index()]
    }
    pub fn dim(&self, d: Handle<Dim>) -> i64 {
        self.dims[d.index()]
    }
    /// `(name, value)` of every dim, in declaration order.
    pub fn dim_values(&self, agg: &Aggregator) -> Vec<(String, i64)> {
        agg.dims.iter().map(|(h, d)| (d.name.clone(), self.dim(h))).collect()
    }
}

/// A dim value given on the command line or by a runtime option (`-D K=128`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimOverride {
    pub name: String,
    pub value: i64,
}

/// Largest dim value and tensor size accepted: beyond them no backend could allocate.
const MAX_DIM: i64 = 1 << 31;
const MAX_ELEMENTS: u128 = 1 << 32;

/// Validates every aggregator of a module. An override must name a dim of at least one
/// aggregator; aggregators without that dim ignore it.
pub fn validate(module: &Module, overrides: &[DimOverride]) -> Result<Vec<Info>, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    for o in overrides {
        if !module.aggregators.iter().any(|a| a.find_dim(&o.name).is_some()) {
            let mut declared: Vec<String> =
                module.aggregators.iter().flat_map(|a| a.dims.iter().map(|(_, d)| d.name.clone())).collect();
            declared.sort();
            declared.dedup();
            let mut d = Diagnostic::error(format!("`-D {}={}` names no dim of this file", o.name, o.value));
            d = match crate::front::dsl::suggest(&o.name, declared.iter().map(String::as_str)) {
                Some(c) => d.help(format!("did you mean `-D {c}={}`?", o.value)),
                None if declared.is_empty() => d.note("no aggregator of this file declares dims"),
                None => d.note(format!("the dims are {}", declared.join(", "))),
            };
            diags.push(d);
        }
    }
    let mut infos = Vec::new();
    for agg in &module.aggregators {
        if diags.len() > MAX_ERRORS {
            break;
        }
        match validate_aggregator(agg, overrides) {
            Ok(info) => infos.push(info),
            Err(mut d) => diags.append(&mut d),
        }
    }
    if diags.is_empty() {
        Ok(infos)
    } else {
        Err(crate::front::dsl::cap(diags))
    }
}

pub fn validate_aggregator(agg: &Aggregator, overrides: &[DimOverride]) -> Result<Info, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut dims = Vec::new();
    for (h, d) in agg.dims.iter() {
        let span = agg.dims.span(h);
        let value = match (overrides.iter().rev().find(|o| o.name == d.name), d.default) {
            (Some(o), default) => {
                if o.value <= 0 || o.value > MAX_DIM {
                    let mut e = Diagnostic::error(format!("`-D {}={}`: dims must be between 1 and {MAX_DIM}", d.name, o.value))
                        .secondary(span, format!("`{}` is declared here", d.name));
                    e = match default {
                        Some(v) if v > 0 && v <= MAX_DIM => e.help(format!("pass a size from 1 to {MAX_DIM}, or leave `{}` at its default {v}", d.name)),
                        _ => e.help(format!("pass a size from 1 to {MAX_DIM}")),
                    };
                    diags.push(e);
                }
                o.value
            }
            (None, Some(v)) => {
                if v <= 0 || v > MAX_DIM {
                    diags.push(
                        Diagnostic::error(format!("dim `{}` has the value {v}", d.name))
                            .primary(span, format!("dims must be between 1 and {MAX_DIM}"))
                            .help(format!("give `{}` a default from 1 to {MAX_DIM} (`{} = 1`)", d.name, d.name)),
                    );
                }
                v
            }
            (None, None) => {
                diags.push(
                    Diagnostic::error(format!("dim `{}` has no value", d.name))
                        .primary(span, "declared without a default")
                        .help(format!("give it a default (`{} = 64`) or pass `-D {}=...`", d.name, d.name)),
                );
                1
            }
        };
        dims.push(value);
    }
    if !diags.is_empty() {
        return Err(diags);
    }

    let mut shapes = Vec::new();
    // The default readout's outputs repeat the element's declarations: report a span once.
    let mut reported: Vec<Span> = Vec::new();
    for (h, t) in agg.tensors.iter() {
        let mut shape = Vec::new();
        for &s in &t.shape {
            match eval_size(agg, &dims, s) {
                Some(v) if v > 0 && v <= MAX_DIM as i128 => shape.push(v as usize),
                value => {
                    let span = agg.sizes.span(s);
                    if !reported.contains(&span) {
                        reported.push(span);
                        let shown = value.map_or("too large to represent".to_string(), |v| v.to_string());
                        let help = if value.is_some_and(|v| v > 0) {
                            format!("sizes must be at most {MAX_DIM}")
                        } else {
                            "sizes must be positive".to_string()
                        };
                        diags.push(
                            Diagnostic::error(format!("`{}` has a dimension of size {shown}", t.name))
                                .primary(span, format!("this size is {shown} with {}", dims_text(agg, &dims)))
                                .help(help),
                        );
                    }
                    shape.push(1);
                }
            }
        }
        let entries = shape.iter().try_fold(1u128, |acc, &v| acc.checked_mul(v as u128));
        let span = agg.tensors.span(h);
        if entries.is_none_or(|n| n > MAX_ELEMENTS) && !reported.contains(&span) {
            reported.push(span);
            diags.push(
                Diagnostic::error(format!("`{}` has more than 2^32 entries", t.name))
                    .primary(span, format!("too large with {}", dims_text(agg, &dims)))
                    .help("use smaller dims"),
            );
        }
        shapes.push(shape);
    }
    if !diags.is_empty() {
        return Err(diags);
    }

    let mut info = Info {
        dims,
        shapes,
        local_shapes: vec![Vec::new(); agg.locals.len()],
        local_types: vec![Scalar::F32; agg.locals.len()],
        extents: vec![0; agg.index_vars.len()],
        types: vec![Scalar::F32; agg.exprs.len()],
        constant: vec![false; agg.exprs.len()],
    };
    for body in agg.bodies() {
        if diags.len() > MAX_ERRORS {
            break;
        }
        check_definedness(agg, body, &mut diags);
        expr::check_body(agg, body, &mut info, &mut diags);
    }
    if diags.is_empty() {
        Ok(info)
    } else {
        Err(crate::front::dsl::cap(diags))
    }
}

fn dims_text(agg: &Aggregator, dims: &[i64]) -> String {
    if dims.is_empty() {
        return "no dims".into();
    }
    agg.dims.iter().map(|(h, d)| format!("{} = {}", d.name, dims[h.index()])).collect::<Vec<_>>().join(", ")
}

/// Evaluates a size; `None` on overflow.
pub(crate) fn eval_size(agg: &Aggregator, dims: &[i64], s: Handle<Size>) -> Option<i128> {
    Some(match agg.sizes[s] {
        Size::Lit(v) => v as i128,
        Size::Dim(d) => dims[d.index()] as i128,
        Size::Add(a, b) => eval_size(agg, dims, a)?.checked_add(eval_size(agg, dims, b)?)?,
        Size::Sub(a, b) => eval_size(agg, dims, a)?.checked_sub(eval_size(agg, dims, b)?)?,
        Size::Mul(a, b) => eval_size(agg, dims, a)?.checked_mul(eval_size(agg, dims, b)?)?,
    })
}

/// Each element field (each output, in the readout) is assigned exactly once.
fn check_definedness(agg: &Aggregator, body: &Body, diags: &mut Vec<Diagnostic>) {
    let role = if body.kind == BodyKind::Readout { Role::Output } else { Role::Element };
    let mut first: Vec<Option<Span>> = vec![None; agg.tensors.len()];
    for stmt in &body.stmts {
        if let Target::Tensor(t) = stmt.target {
            match first[t.index()] {
                Some(prev) => diags.push(
                    Diagnostic::error(format!("`{}` is assigned twice in `{}`", agg.tensors[t].name, body.kind.name()))
                        .primary(stmt.span, "assigned again here")
                        .secondary(prev, "first assigned here")
                        .help("assign each field once; name intermediate values with `let`"),
                ),
                None => first[t.index()] = Some(stmt.span),
            }
        }
    }
    let missing: Vec<Handle<Tensor>> = agg.tensors_of(role).filter(|t| first[t.index()].is_none()).collect();
    if !missing.is_empty() {
        let what = if role == Role::Output { "output" } else { "element field" };
        let s = if missing.len() == 1 { "" } else { "s" };
        let names: Vec<String> = missing.iter().map(|&t| format!("`{}`", agg.tensors[t].name)).collect();
        let statements: Vec<String> = missing.iter().map(|&t| format!("`{} = ...;`", written(agg, t))).collect();
        diags.push(
            Diagnostic::error(format!("`{}` never assigns the {what}{s} {}", body.kind.name(), names.join(", ")))
                .primary(body.span, format!("{} must assign every {what}", body.kind.name()))
                .help(format!("add {}", statements.join(" and "))),
        );
    }
}

/// `s[i, j]`: a tensor as the left side of an assignment.
pub(crate) fn written(agg: &Aggregator, t: Handle<Tensor>) -> String {
    let tensor = &agg.tensors[t];
    if tensor.shape.is_empty() {
        return tensor.name.clone();
    }
    const NAMES: [&str; 6] = ["i", "j", "k", "l", "m", "n"];
    let idx: Vec<String> = (0..tensor.shape.len())
        .map(|k| if k < NAMES.len() { NAMES[k].to_string() } else { format!("i{k}") })
        .collect();
    format!("{}[{}]", tensor.name, idx.join(", "))
}
