//! The chunkwise-parallel form of the linear-attention family, derived from the IR.
//!
//! An operator qualifies when its combine is affine (`algebra::structure`): state
//! fields S with S' = E_r ▶ S_l + S_r, where the transition E is the identity, a scalar
//! or per-key (diagonal) gate composed by multiplication, or the delta rule's
//! α (I − β k bᵀ) composed as a matrix product; every state field's lift is an outer
//! product k vᵀ (any scalar factor goes into v); and the readout reads the state only
//! through contractions `sum(i) q(i) * st.S[i, j]` linear in the state. Then, per
//! chunk of C steps, with Λ the in-chunk cumulative log decay:
//!
//! * intra-chunk: A = (Q ⊙ e^Λ)(K ⊙ e^−Λ)ᵀ masked causally (τ ≤ t, or τ < t for an
//!   exclusive readout), contraction += A V;
//! * inter-chunk: contraction += (Q ⊙ e^Λ) S₀; then S₀ ← e^Λ_L ⊙ S₀ + (K ⊙ e^(Λ_L − Λ))ᵀ V;
//! * delta rule (WY/UT form): V is replaced by the pseudo-values U solving the
//!   unit lower-triangular system (I + L) U = V − diag(β e^Λ) B S₀, with
//!   L_tτ = β_t e^(Λ_t − Λ_τ) b_t·k_τ for τ < t.
//!
//! The pass is IR to IR: it writes two aggregators in the psm language itself, a
//! per-step *feature map* (k, v, log-decays, β, b and the queries q, from the inputs and
//! params through the operator's own lift and readout expressions) and a *readout map*
//! (the operator's readout with each contraction replaced by an input holding it), and
//! validates both. A backend runs the feature map, the chunk computation above over
//! its outputs, then the readout map. When the operator does not qualify, the reason
//! says which part of which body does not have the shape.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write};

use crate::algebra::{self, Structure};
use crate::arena::Handle;
use crate::ir::*;
use crate::valid::Info;

/// The derived chunkwise form of one aggregator at one choice of dims.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunkwise {
    pub aggregator: String,
    /// The readout reads p_t = S_{t−1} (strictly causal intra-chunk mask).
    pub exclusive: bool,
    /// The state fields the readout contracts.
    pub fields: Vec<StateField>,
    pub contractions: Vec<Contraction>,
    /// Features that are one of the operator's inputs as given: (feature, input).
    pub inputs: Vec<(String, String)>,
    /// Source of the feature map aggregator: its outputs are the other per-step vectors
    /// the names in `fields` and `contractions` refer to (none when every one is an input).
    pub features: Option<String>,
    /// Source of the readout map aggregator: the operator's inputs plus one input per
    /// contraction (`Contraction::output`); its outputs are the operator's.
    pub readout: String,
    /// When every output is one contraction as it is (`o[j] = x.cw_c0[j]`): output k
    /// (in declaration order) is contraction `direct[k]`, and a backend may skip the
    /// readout map, a copy.
    pub direct: Option<Vec<usize>>,
}

/// One state field S[keys, values] (a vector field has `values` = 1).
#[derive(Debug, Clone, PartialEq)]
pub struct StateField {
    pub name: String,
    pub keys: usize,
    pub values: usize,
    /// Feature outputs: k_t `[keys]`, v_t `[values]` (scalar when `values` = 1 for a
    /// vector field); the lift adds k_t v_tᵀ.
    pub key: String,
    pub value: String,
    pub decay: Decay,
    /// The element field that holds E (a gate or the dense transition; none for E = I):
    /// a backend that returns the final element composes it alongside S.
    pub transition: Option<String>,
}

/// The transition of one state field, as feature outputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Decay {
    /// E = I.
    None,
    /// E = the gate's decay, a scalar feature.
    Scalar { gate: Gate },
    /// E = Diag(the gate's decays), a `[keys]` feature.
    Diagonal { gate: Gate },
    /// E = exp(log_decay_t) (I − β_t k_t b_tᵀ), with k the field's key.
    DeltaRule { log_decay: Option<String>, beta: String, b: String },
}

/// A per-step decay feature: its natural log (the gate's lift is `exp(a)`: the feature
/// is `a`), or the decay itself, multiplied cumulatively by a backend and taken into
/// log space only where a chunk's products would leave the float range.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Log(String),
    Value(String),
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gate::Log(name) => write!(f, "exp({name})"),
            Gate::Value(name) => f.write_str(name),
        }
    }
}

/// `output_t[j] = Σ_i query_t[i] S[i, j]` for the readout's state (S_t, or S_{t−1} when
/// exclusive); `values` entries per step (a scalar for a vector field).
#[derive(Debug, Clone, PartialEq)]
pub struct Contraction {
    pub field: usize,
    pub query: String,
    pub output: String,
}

/// Why the chunkwise form does not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotApplicable(pub String);

impl fmt::Display for NotApplicable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotApplicable {}

fn no<T>(reason: String) -> Result<T, NotApplicable> {
    Err(NotApplicable(reason))
}

impl Decay {
    /// The transition applied to S_{t−1}; `key` is the field's key feature.
    fn describe(&self, key: &str) -> String {
        match self {
            Decay::None => "S_{t-1}".into(),
            Decay::Scalar { gate } => format!("{gate} S_{{t-1}}"),
            Decay::Diagonal { gate } => format!("Diag({gate}) S_{{t-1}}"),
            Decay::DeltaRule { log_decay, beta, b } => {
                let gate = log_decay.as_ref().map(|l| format!("exp({l}) ")).unwrap_or_default();
                format!("{gate}(I - {beta} {key} {b}^T) S_{{t-1}}")
            }
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Decay::None => "no decay",
            Decay::Scalar { .. } => "scalar decay",
            Decay::Diagonal { .. } => "diagonal decay",
            Decay::DeltaRule { log_decay: None, .. } => "delta rule",
            Decay::DeltaRule { log_decay: Some(_), .. } => "gated delta rule",
        }
    }
}

impl Chunkwise {
    /// One line: the transitions and how the readout reads the state.
    pub fn summary(&self) -> String {
        let fields: Vec<String> =
            self.fields.iter().map(|f| format!("{}[{}, {}] {}", f.name, f.keys, f.values, f.decay.kind())).collect();
        let kind = if self.exclusive { "exclusive" } else { "inclusive" };
        format!("{}; {} {kind} contraction(s)", fields.join(", "), self.contractions.len())
    }
}

impl fmt::Display for Chunkwise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "chunkwise form of {}", self.aggregator)?;
        for s in &self.fields {
            writeln!(f, "  state {}[{}, {}]: S_t = {} + {} {}^T", s.name, s.keys, s.values, s.decay.describe(&s.key), s.key, s.value)?;
        }
        let state = if self.exclusive { "S_{t-1}" } else { "S_t" };
        for c in &self.contractions {
            writeln!(f, "  {}_t = {}^T {}_t  (state {})", c.output, state, c.query, self.fields[c.field].name)?;
        }
        for (feature, input) in &self.inputs {
            writeln!(f, "  {feature} = x.{input}")?;
        }
        if let Some(src) = &self.features {
            writeln!(f, "features:")?;
            f.write_str(src)?;
        }
        writeln!(f, "readout:")?;
        f.write_str(&self.readout)
    }
}

/// Derives the chunkwise form, or says why the operator does not have its shape.
pub fn chunkwise(agg: &Aggregator, info: &Info) -> Result<Chunkwise, NotApplicable> {
    let Some(Structure::Affine { state, .. }) = algebra::affine(agg) else {
        return no(
            "combine is not affine (S' = E ▶ l.S + r.S) in any split of the element's fields into transition and state"
                .into(),
        );
    };
    let element = |name: &String| agg.find_tensor(Role::Element, name).expect("structure names element fields");
    let state: Vec<Handle<Tensor>> = state.iter().map(element).collect();
    let d = Deriver::new(agg, info, &state);
    d.derive()
}

struct Deriver<'a> {
    agg: &'a Aggregator,
    info: &'a Info,
    state: &'a [Handle<Tensor>],
    /// The statement defining each local (any body).
    defs: Vec<Option<&'a Stmt>>,
    /// The name each local gets in the derived sources.
    local_names: HashMap<Handle<Local>, String>,
}

/// A statement's value split into the factors of a product.
struct Product {
    negative: bool,
    factors: Vec<Handle<Expr>>,
}

impl<'a> Deriver<'a> {
    fn new(agg: &'a Aggregator, info: &'a Info, state: &'a [Handle<Tensor>]) -> Self {
        let mut defs = vec![None; agg.locals.len()];
        let mut local_names = HashMap::new();
        for (body, prefix) in [(&agg.lift, "lift_"), (&agg.readout, "read_")] {
            for s in &body.stmts {
                if let Target::Local(l) = s.target {
                    defs[l.index()] = Some(s);
                    local_names.insert(l, format!("{prefix}{}", agg.locals[l].name));
                }
            }
        }
        Deriver { agg, info, state, defs, local_names }
    }

    fn name(&self, t: Handle<Tensor>) -> &str {
        &self.agg.tensors[t].name
    }

    fn derive(&self) -> Result<Chunkwise, NotApplicable> {
        let agg = self.agg;
        for &f in self.state {
            let rank = self.info.shape(f).len();
            if rank == 0 || rank > 2 {
                return no(format!(
                    "state field `{}` has rank {rank}; the chunkwise form needs matrix states s[K, V] (or vectors s[K]) that the readout contracts over K",
                    self.name(f)
                ));
            }
            if agg.tensors[f].dtype != Dtype::F32 {
                return no(format!("state field `{}` is {}; the chunkwise form computes in f32", self.name(f), agg.tensors[f].dtype.name()));
            }
        }
        if let Some(id) = &agg.identity {
            for s in &id.stmts {
                let Target::Tensor(f) = s.target else { continue };
                if self.state.contains(&f) && !matches!(agg.exprs[s.value], Expr::Float(v) if v == 0.0) && agg.exprs[s.value] != Expr::Int(0) {
                    return no(format!("the identity of state field `{}` is not 0", self.name(f)));
                }
            }
        }
        let (raw, subst) = self.contractions()?;
        if raw.is_empty() {
            return no("the readout contracts no state field: there is no product to compute chunkwise".into());
        }
        // Fields in element order, only those the readout reads.
        let read: Vec<Handle<Tensor>> = self.state.iter().copied().filter(|f| raw.iter().any(|c| c.field == *f)).collect();
        let mut outputs: Vec<FeatureOut> = Vec::new();
        let mut fields = Vec::new();
        for &f in &read {
            let shape = self.info.shape(f);
            let (keys, values) = (shape[0], shape.get(1).copied().unwrap_or(1));
            let (key, value, decay, transition) = self.field(f, &mut outputs)?;
            let transition = transition.map(|t| self.name(t).to_string());
            fields.push(StateField { name: self.name(f).to_string(), keys, values, key, value, decay, transition });
        }
        let mut contractions = Vec::new();
        for (m, c) in raw.iter().enumerate() {
            let query = format!("cw_q{m}");
            let keys = self.info.shape(c.field)[0];
            outputs.push((query.clone(), vec![keys], format!("{query}[{}] = {};", self.var(c.var), c.query), c.query_roots.clone()));
            let field = read.iter().position(|&f| f == c.field).expect("read holds every contracted field");
            contractions.push(Contraction { field, query, output: format!("cw_c{m}") });
        }
        let outputs = self.merge_equal(outputs, &mut fields, &mut contractions);
        // Features that are an input as given are read from it: no map computes them.
        let (inputs, computed): (Vec<_>, Vec<_>) = outputs.into_iter().partition(|o| self.passthrough(o).is_some());
        let inputs = inputs.iter().map(|o| (o.0.clone(), self.passthrough(o).expect("partitioned on it"))).collect();
        let features = (!computed.is_empty()).then(|| self.features_source(&computed));
        let readout = self.readout_source(&raw, &subst);
        let direct = self.direct_outputs(&raw, &subst);
        if let Some(src) = &features {
            check_source("feature map", src)?;
        }
        check_source("readout map", &readout)?;
        let exclusive = agg.readout_kind == ReadoutKind::Exclusive;
        Ok(Chunkwise { aggregator: agg.name.clone(), exclusive, fields, contractions, inputs, features, readout, direct })
    }

    /// One feature for outputs computed by the same statement (linear attention's keys
    /// of s and z, mLSTM's queries of c and n), the fields and contractions renamed to
    /// it: the map computes it once, and a backend sees by the names which fields share
    /// their keys and which contractions their queries.
    fn merge_equal(&self, outputs: Vec<FeatureOut>, fields: &mut [StateField], contractions: &mut [Contraction]) -> Vec<FeatureOut> {
        let mut renamed: HashMap<String, String> = HashMap::new();
        let mut unique: Vec<FeatureOut> = Vec::new();
        // The statement after the output's name: `[i] = x.q[i];`.
        let rhs = |o: &FeatureOut| o.2[o.0.len()..].to_string();
        for o in outputs {
            match unique.iter().find(|u| u.1 == o.1 && rhs(u) == rhs(&o)) {
                Some(u) => {
                    renamed.insert(o.0, u.0.clone());
                }
                None => unique.push(o),
            }
        }
        let rename = |name: &mut String| {
            if let Some(to) = renamed.get(name) {
                *name = to.clone();
            }
        };
        for f in fields.iter_mut() {
            rename(&mut f.key);
            rename(&mut f.value);
            match &mut f.decay {
                Decay::None => {}
                Decay::Scalar { gate: Gate::Log(g) | Gate::Value(g) } | Decay::Diagonal { gate: Gate::Log(g) | Gate::Value(g) } => rename(g),
                Decay::DeltaRule { log_decay, beta, b } => {
                    log_decay.iter_mut().for_each(rename);
                    rename(beta);
                    rename(b);
                }
            }
        }
        contractions.iter_mut().for_each(|c| rename(&mut c.query));
        unique
    }

    /// The input a feature output copies unchanged (`cw_k_s[i] = x.k[i];` of an f32
    /// input of the same shape), if it is one.
    fn passthrough(&self, (name, shape, stmt, roots): &FeatureOut) -> Option<String> {
        let [root] = roots[..] else { return None };
        let Some((Source::Input(t), idx)) = self.load(root) else { return None };
        let binders: Vec<String> = idx.iter().map(|&i| self.print(i)).collect();
        let lhs = if binders.is_empty() { name.clone() } else { format!("{name}[{}]", binders.join(", ")) };
        let whole = idx.iter().all(|&i| matches!(self.agg.exprs[i], Expr::Index(_)));
        let same = self.info.shape(t) == &shape[..] && self.agg.tensors[t].dtype == Dtype::F32;
        (whole && same && *stmt == format!("{lhs} = {};", self.print(root))).then(|| self.name(t).to_string())
    }

    // ---- combine and lift -------------------------------------------------------------

    fn stmt_of(&self, body: &'a Body, t: Handle<Tensor>) -> &'a Stmt {
        body.stmts.iter().find(|s| s.target == Target::Tensor(t)).expect("validation: every field assigned")
    }

    fn load(&self, e: Handle<Expr>) -> Option<(Source, &'a [Handle<Expr>])> {
        match &self.agg.exprs[e] {
            Expr::Load { source, indices } => Some((*source, indices)),
            _ => None,
        }
    }

    fn is_var(&self, e: Handle<Expr>, v: Handle<IndexVar>) -> bool {
        self.agg.exprs[e] == Expr::Index(v)
    }

    fn at(&self, indices: &[Handle<Expr>], vars: &[Handle<IndexVar>]) -> bool {
        indices.len() == vars.len() && indices.iter().zip(vars).all(|(&i, &v)| self.is_var(i, v))
    }

    /// `l.T[vars] * r.T[vars]` (either order) for a scalar or diagonal transition field.
    fn composes_by_product(&self, g: Handle<Tensor>) -> bool {
        let s = self.stmt_of(&self.agg.combine, g);
        let Expr::Binary { op: BinaryOp::Mul, lhs, rhs } = self.agg.exprs[s.value] else { return false };
        let side = |e| match self.load(e) {
            Some((Source::Element(side, t), idx)) if t == g && self.at(idx, &s.indices) => Some(side),
            _ => None,
        };
        matches!((side(lhs), side(rhs)), (Some(Side::Left), Some(Side::Right)) | (Some(Side::Right), Some(Side::Left)))
    }

    /// `sum(p) r.A[i, p] * l.X[p, rest]`: the dense product of A with X; returns whether it is one.
    fn dense_product(&self, e: Handle<Expr>, a: Handle<Tensor>, x: Handle<Tensor>, vars: &[Handle<IndexVar>]) -> bool {
        let Expr::Reduce { op: ReduceOp::Sum, var: p, body } = self.agg.exprs[e] else { return false };
        let Expr::Binary { op: BinaryOp::Mul, lhs, rhs } = self.agg.exprs[body] else { return false };
        let ok_a = matches!(self.load(lhs), Some((Source::Element(Side::Right, t), idx)) if t == a && idx.len() == 2 && self.is_var(idx[0], vars[0]) && self.is_var(idx[1], p));
        let ok_x = matches!(self.load(rhs), Some((Source::Element(Side::Left, t), idx)) if t == x && !idx.is_empty() && self.is_var(idx[0], p) && self.at(&idx[1..], &vars[1..]));
        ok_a && ok_x
    }

    /// The key, value, transition and transition field of one state field, pushing its
    /// feature outputs.
    fn field(
        &self,
        f: Handle<Tensor>,
        outputs: &mut Vec<FeatureOut>,
    ) -> Result<FieldParts, NotApplicable> {
        let agg = self.agg;
        let fname = self.name(f).to_string();
        let s = self.stmt_of(&agg.combine, f);
        let vars = &s.indices;
        let not_affine = || NotApplicable(format!("combine's `{fname}` is not `E ▶ l.{fname} + r.{fname}` with E a scalar or per-key gate or a dense matrix product"));
        let Expr::Binary { op: BinaryOp::Add, lhs, rhs } = agg.exprs[s.value] else { return Err(not_affine()) };
        let is_later = |e| matches!(self.load(e), Some((Source::Element(Side::Right, t), idx)) if t == f && self.at(idx, vars));
        let transition = if is_later(rhs) {
            lhs
        } else if is_later(lhs) {
            rhs
        } else {
            return Err(not_affine());
        };
        let is_earlier = |e| matches!(self.load(e), Some((Source::Element(Side::Left, t), idx)) if t == f && self.at(idx, vars));
        // The transition: None, a gate field and its index, or a dense field.
        enum Found {
            None,
            Gated(Handle<Tensor>, usize),
            Dense(Handle<Tensor>),
        }
        let gate = if is_earlier(transition) {
            Found::None
        } else if let Expr::Binary { op: BinaryOp::Mul, lhs: a, rhs: b } = agg.exprs[transition] {
            let g = if is_earlier(b) { a } else if is_earlier(a) { b } else { return Err(not_affine()) };
            match self.load(g) {
                Some((Source::Element(Side::Right, t), idx)) if !self.state.contains(&t) => {
                    if idx.is_empty() {
                        Found::Gated(t, 0)
                    } else if idx.len() == 1 && self.is_var(idx[0], vars[0]) {
                        Found::Gated(t, 1)
                    } else {
                        return no(format!(
                            "the decay r.{}[..] of state field `{fname}` varies along its value index; the chunkwise form needs one decay per step or per key (row)",
                            self.name(t)
                        ));
                    }
                }
                _ => return Err(not_affine()),
            }
        } else if let Some(a) = agg.element().into_iter().find(|&a| !self.state.contains(&a) && self.dense_product(transition, a, f, vars)) {
            Found::Dense(a)
        } else {
            return Err(not_affine());
        };
        let lift = self.stmt_of(&agg.lift, f);
        let product = self.product(lift.value);
        let (row, col) = (lift.indices[0], lift.indices.get(1).copied());
        let (mut keys, mut values, mut scalars) = (Vec::new(), Vec::new(), Vec::new());
        for &x in &product.factors {
            let free = self.free_vars(x);
            if free.is_empty() {
                scalars.push(x);
            } else if free.iter().all(|&v| v == row) {
                keys.push(x);
            } else if free.iter().all(|&v| Some(v) == col) {
                values.push(x);
            } else {
                return no(format!(
                    "the lift of state field `{fname}` is not an outer product k[i] v[j]: its factor `{}` depends on both indices",
                    self.print(x)
                ));
            }
        }
        let key = format!("cw_k_{fname}");
        let value = format!("cw_v_{fname}");
        let shape = self.info.shape(f);
        outputs.push((key.clone(), vec![shape[0]], format!("{key}[{}] = {};", self.var(row), self.product_text(false, &keys)), keys.clone()));
        let mut v_factors = scalars.clone();
        v_factors.extend(&values);
        match col {
            Some(c) => outputs.push((
                value.clone(),
                vec![shape[1]],
                format!("{value}[{}] = {};", self.var(c), self.product_text(product.negative, &v_factors)),
                v_factors,
            )),
            None => outputs.push((value.clone(), vec![], format!("{value} = {};", self.product_text(product.negative, &v_factors)), v_factors)),
        }
        let transition = match &gate {
            Found::None => None,
            Found::Gated(g, _) | Found::Dense(g) => Some(*g),
        };
        let decay = match gate {
            Found::None => Decay::None,
            Found::Gated(g, rank) => {
                if !self.composes_by_product(g) {
                    return no(format!("the transition field `{}` does not compose by multiplication (l.{0} * r.{0})", self.name(g)));
                }
                let gl = self.stmt_of(&agg.lift, g);
                let (gate, root) = match self.exp_arg(gl.value) {
                    Some(a) => (Gate::Log(format!("cw_logdecay_{}", self.name(g))), a),
                    None => (Gate::Value(format!("cw_decay_{}", self.name(g))), gl.value),
                };
                let (Gate::Log(name) | Gate::Value(name)) = &gate;
                if !outputs.iter().any(|o| &o.0 == name) {
                    let lhs = if rank == 0 { name.clone() } else { format!("{name}[{}]", self.var(gl.indices[0])) };
                    let shape = self.info.shape(g).to_vec();
                    outputs.push((name.clone(), shape, format!("{lhs} = {};", self.print(root)), vec![root]));
                }
                if rank == 0 {
                    Decay::Scalar { gate }
                } else {
                    Decay::Diagonal { gate }
                }
            }
            Found::Dense(a) => self.delta_rule(a, f, &keys, outputs)?,
        };
        Ok((key, value, decay, transition))
    }

    /// A dense transition α (I − β k bᵀ) whose k is the field's key.
    fn delta_rule(
        &self,
        a: Handle<Tensor>,
        f: Handle<Tensor>,
        field_keys: &[Handle<Expr>],
        outputs: &mut Vec<FeatureOut>,
    ) -> Result<Decay, NotApplicable> {
        let agg = self.agg;
        let aname = self.name(a).to_string();
        let not_delta = || {
            NotApplicable(format!(
                "the transition `{aname}` is dense but its lift is not the delta rule's α (I − β k bᵀ) with k the key of `{}`; a general dense transition has no chunkwise form",
                self.name(f)
            ))
        };
        let c = self.stmt_of(&agg.combine, a);
        if !self.dense_product(c.value, a, a, &c.indices) {
            return no(format!("the transition `{aname}` does not compose as the matrix product r.{aname} l.{aname}"));
        }
        let lift = self.stmt_of(&agg.lift, a);
        let (i, j) = (lift.indices[0], lift.indices[1]);
        let outer = self.product(lift.value);
        let (alphas, rest): (Vec<_>, Vec<_>) = outer.factors.iter().partition(|&&x| self.free_vars(x).is_empty());
        let [projector] = rest[..] else { return Err(not_delta()) };
        let Expr::Binary { op: BinaryOp::Sub, lhs: delta, rhs: update } = agg.exprs[projector] else { return Err(not_delta()) };
        if !self.is_kronecker(delta, i, j) {
            return Err(not_delta());
        }
        let update = self.product(update);
        let (mut keys, mut bs, mut betas) = (Vec::new(), Vec::new(), Vec::new());
        for &x in &update.factors {
            let free = self.free_vars(x);
            if free.is_empty() {
                betas.push(x);
            } else if free.iter().all(|&v| v == i) {
                keys.push(x);
            } else if free.iter().all(|&v| v == j) {
                bs.push(x);
            } else {
                return Err(not_delta());
            }
        }
        let field_row = self.stmt_of(&agg.lift, f).indices[0];
        if !self.same_factors(&keys, i, field_keys, field_row) {
            return Err(not_delta());
        }
        // α (I − s β k bᵀ): the sign of the projector's product goes into β (negated twice).
        let beta = format!("cw_beta_{aname}");
        let b = format!("cw_b_{aname}");
        let negative = outer.negative ^ update.negative;
        outputs.push((beta.clone(), vec![], format!("{beta} = {};", self.product_text(negative, &betas)), betas.clone()));
        outputs.push((b.clone(), vec![self.info.extent(j)], format!("{b}[{}] = {};", self.var(j), self.product_text(false, &bs)), bs.clone()));
        let log_decay = if alphas.is_empty() {
            None
        } else {
            let name = format!("cw_logdecay_{aname}");
            let (text, roots) = self.log_of(&alphas);
            outputs.push((name.clone(), vec![], format!("{name} = {text};"), roots));
            Some(name)
        };
        Ok(Decay::DeltaRule { log_decay, beta, b })
    }

    /// `if i == j { 1 } else { 0 }` (or `select`), in either order of i and j.
    fn is_kronecker(&self, e: Handle<Expr>, i: Handle<IndexVar>, j: Handle<IndexVar>) -> bool {
        let exprs = &self.agg.exprs;
        let Expr::Select { cond, then, otherwise } = exprs[e] else { return false };
        let Expr::Binary { op: BinaryOp::Eq, lhs, rhs } = exprs[cond] else { return false };
        let pair = (self.is_var(lhs, i) && self.is_var(rhs, j)) || (self.is_var(lhs, j) && self.is_var(rhs, i));
        let lit = |e: Handle<Expr>, v: f64| matches!(exprs[e], Expr::Float(x) if x == v) || exprs[e] == Expr::Int(v as i64);
        pair && lit(then, 1.0) && lit(otherwise, 0.0)
    }

    fn product(&self, e: Handle<Expr>) -> Product {
        let mut p = Product { negative: false, factors: Vec::new() };
        self.flatten(e, &mut p);
        p
    }

    fn flatten(&self, e: Handle<Expr>, p: &mut Product) {
        match self.agg.exprs[e] {
            Expr::Binary { op: BinaryOp::Mul, lhs, rhs } => {
                self.flatten(lhs, p);
                self.flatten(rhs, p);
            }
            Expr::Unary { op: UnaryOp::Neg, arg } => {
                p.negative = !p.negative;
                self.flatten(arg, p);
            }
            _ => p.factors.push(e),
        }
    }

    /// Index variables read by `e` and not bound by a reduction inside it.
    fn free_vars(&self, e: Handle<Expr>) -> Vec<Handle<IndexVar>> {
        let mut out = Vec::new();
        self.collect_free(e, &mut Vec::new(), &mut out);
        out
    }

    fn collect_free(&self, e: Handle<Expr>, bound: &mut Vec<Handle<IndexVar>>, out: &mut Vec<Handle<IndexVar>>) {
        match &self.agg.exprs[e] {
            Expr::Index(v) if !bound.contains(v) && !out.contains(v) => out.push(*v),
            Expr::Reduce { var, body, .. } => {
                bound.push(*var);
                self.collect_free(*body, bound, out);
                bound.pop();
            }
            x => x.for_each_child(|c| self.collect_free(c, bound, out)),
        }
    }

    /// The same factors (as a multiset), `va` in `a` standing for `vb` in `b`.
    fn same_factors(&self, a: &[Handle<Expr>], va: Handle<IndexVar>, b: &[Handle<Expr>], vb: Handle<IndexVar>) -> bool {
        let mut unused: Vec<Handle<Expr>> = b.to_vec();
        a.len() == b.len()
            && a.iter().all(|&x| match unused.iter().position(|&y| self.same_expr(x, va, y, vb)) {
                Some(k) => {
                    unused.swap_remove(k);
                    true
                }
                None => false,
            })
    }

    fn same_expr(&self, x: Handle<Expr>, va: Handle<IndexVar>, y: Handle<Expr>, vb: Handle<IndexVar>) -> bool {
        let exprs = &self.agg.exprs;
        let children = |e: Handle<Expr>| {
            let mut c = Vec::new();
            exprs[e].for_each_child(|h| c.push(h));
            c
        };
        let same_node = match (&exprs[x], &exprs[y]) {
            (Expr::Index(a), Expr::Index(b)) => a == b || (*a == va && *b == vb),
            (Expr::Load { source: a, .. }, Expr::Load { source: b, .. }) => a == b,
            (Expr::Unary { op: a, .. }, Expr::Unary { op: b, .. }) => a == b,
            (Expr::Binary { op: a, .. }, Expr::Binary { op: b, .. }) => a == b,
            (Expr::Call { func: a, .. }, Expr::Call { func: b, .. }) => a == b,
            (Expr::Select { .. }, Expr::Select { .. }) => true,
            (Expr::Reduce { op: a, var: u, .. }, Expr::Reduce { op: b, var: w, .. }) => a == b && u == w,
            (a, b) => a == b,
        };
        let (cx, cy) = (children(x), children(y));
        same_node && cx.len() == cy.len() && cx.iter().zip(&cy).all(|(&a, &b)| self.same_expr(a, va, b, vb))
    }

    // ---- readout ------------------------------------------------------------------------

    /// Every `sum(i) ... st.S[i, j] ...` of the readout, linear in the state, and the
    /// text each is replaced by in the readout map.
    fn contractions(&self) -> Result<(Vec<RawContraction>, Substitutions), NotApplicable> {
        let mut found = Vec::new();
        let mut subst = HashMap::new();
        for s in &self.agg.readout.stmts {
            self.scan_readout(s.value, &mut found, &mut subst)?;
        }
        Ok((found, subst))
    }

    fn reads_state(&self, e: Handle<Expr>) -> bool {
        match &self.agg.exprs[e] {
            Expr::Load { source: Source::Element(..), .. } => true,
            Expr::Load { source: Source::Local(l), indices } => {
                self.defs[l.index()].is_some_and(|d| self.reads_state(d.value)) || indices.iter().any(|&i| self.reads_state(i))
            }
            x => {
                let mut any = false;
                x.for_each_child(|c| any |= self.reads_state(c));
                any
            }
        }
    }

    fn scan_readout(
        &self,
        e: Handle<Expr>,
        found: &mut Vec<RawContraction>,
        subst: &mut HashMap<Handle<Expr>, String>,
    ) -> Result<(), NotApplicable> {
        match &self.agg.exprs[e] {
            Expr::Empty => no("the readout asks `empty(p)`; the chunkwise form reads the state only through contractions".into()),
            Expr::Load { source: Source::Element(_, f), .. } => {
                let f = *f;
                if self.state.contains(&f) {
                    no(format!("the readout reads state field `{}` outside a sum over its key (first) index", self.name(f)))
                } else {
                    no(format!("the readout reads transition field `{}`; the chunkwise form reads only the state it contracts", self.name(f)))
                }
            }
            Expr::Reduce { op: ReduceOp::Sum, var, body } if self.reads_state(*body) => {
                let c = self.contraction(e, *var, *body, found.len())?;
                subst.insert(e, c.replacement.clone());
                found.push(c);
                Ok(())
            }
            x => {
                let mut result = Ok(());
                x.for_each_child(|c| {
                    if result.is_ok() {
                        result = self.scan_readout(c, found, subst);
                    }
                });
                result
            }
        }
    }

    fn contraction(&self, node: Handle<Expr>, var: Handle<IndexVar>, body: Handle<Expr>, m: usize) -> Result<RawContraction, NotApplicable> {
        let mut loads = Vec::new();
        self.state_loads(body, &mut loads)?;
        let nonlinear = || NotApplicable(format!("the readout's sum over `{}` is not linear in one state field", self.agg.index_vars[var].name));
        let [load] = loads[..] else { return Err(nonlinear()) };
        let Some((Source::Element(_, f), idx)) = self.load(load) else { return Err(nonlinear()) };
        if !self.state.contains(&f) {
            return no(format!("the readout reads transition field `{}`; the chunkwise form reads only the state it contracts", self.name(f)));
        }
        if !self.is_var(idx[0], var) || idx[1..].iter().any(|&x| self.free_vars(x).contains(&var)) {
            return no(format!(
                "the readout's sum over `{}` does not contract state field `{}` over its key (first) index alone",
                self.agg.index_vars[var].name,
                self.name(f)
            ));
        }
        let (coef, roots) = self.derivative(body, load).ok_or_else(nonlinear)?;
        let query = coef.unwrap_or_else(|| "1.0".into());
        if roots.iter().any(|&r| self.free_vars(r).iter().any(|&v| v != var)) {
            return no(format!(
                "the coefficient of state field `{}` in the readout's sum depends on the output index; it must be a query q[{}] of the step",
                self.name(f),
                self.agg.index_vars[var].name
            ));
        }
        let at = if idx.len() > 1 { format!("[{}]", self.print(idx[1])) } else { String::new() };
        let pure = self.pure_product(body, load);
        let sum_var = &self.agg.index_vars[var].name;
        let (replacement, hoisted) = if pure {
            (format!("x.cw_c{m}{at}"), None)
        } else if let Some((outer, inner)) = self.split_residual(body, load, var) {
            // Σ_i a_i (S_ij + b_i c_j) = (QᵀS)_j + c_j Σ_i a_i b_i: the sum once per step,
            // not once per output entry (RWKV-6's bonus).
            let name = format!("cw_sum{m}");
            let hoisted = format!("let {name} = (sum({sum_var}) {});", self.product_text(false, &inner));
            let term = if outer.factors.is_empty() { name } else { format!("({} * {name})", self.product_text(false, &outer.factors)) };
            let sign = if outer.negative { "-" } else { "+" };
            (format!("(x.cw_c{m}{at} {sign} {term})"), Some(hoisted))
        } else {
            let rest = self.print_with(body, Some(load));
            (format!("(x.cw_c{m}{at} + (sum({sum_var}) {rest}))"), None)
        };
        Ok(RawContraction { node, pure, field: f, var, query, query_roots: roots, replacement, hoisted })
    }

    fn state_loads(&self, e: Handle<Expr>, out: &mut Vec<Handle<Expr>>) -> Result<(), NotApplicable> {
        match &self.agg.exprs[e] {
            Expr::Load { source: Source::Element(..), .. } => out.push(e),
            Expr::Load { source: Source::Local(l), .. } if self.defs[l.index()].is_some_and(|d| self.reads_state(d.value)) => {
                return no(format!("the readout's `{}` holds the state and is read inside a sum over it", self.agg.locals[*l].name));
            }
            x => {
                let mut result = Ok(());
                x.for_each_child(|c| {
                    if result.is_ok() {
                        result = self.state_loads(c, out);
                    }
                });
                return result;
            }
        }
        Ok(())
    }

    fn contains(&self, e: Handle<Expr>, target: Handle<Expr>) -> bool {
        e == target || {
            let mut any = false;
            self.agg.exprs[e].for_each_child(|c| any |= self.contains(c, target));
            any
        }
    }

    /// The coefficient of `load` in `e` when `e` is linear in it (`None` text: 1), and
    /// the expressions it is built from.
    fn derivative(&self, e: Handle<Expr>, load: Handle<Expr>) -> Option<(Option<String>, Vec<Handle<Expr>>)> {
        if e == load {
            return Some((None, Vec::new()));
        }
        let times = |d: Option<String>, other: String| Some(d.map_or(other.clone(), |d| format!("({d} * {other})")));
        match self.agg.exprs[e] {
            Expr::Binary { op: op @ (BinaryOp::Add | BinaryOp::Sub), lhs, rhs } => {
                if self.contains(lhs, load) {
                    self.derivative(lhs, load)
                } else {
                    let (d, roots) = self.derivative(rhs, load)?;
                    let d = if op == BinaryOp::Sub { Some(format!("(-{})", d.unwrap_or_else(|| "1.0".into()))) } else { d };
                    Some((d, roots))
                }
            }
            Expr::Binary { op: BinaryOp::Mul, lhs, rhs } => {
                let (inner, other) = if self.contains(lhs, load) { (lhs, rhs) } else { (rhs, lhs) };
                let (d, mut roots) = self.derivative(inner, load)?;
                roots.push(other);
                Some((times(d, self.print(other)), roots))
            }
            Expr::Binary { op: BinaryOp::Div, lhs, rhs } if self.contains(lhs, load) => {
                let (d, mut roots) = self.derivative(lhs, load)?;
                roots.push(rhs);
                Some((Some(format!("({} / {})", d.unwrap_or_else(|| "1.0".into()), self.print(rhs))), roots))
            }
            Expr::Unary { op: UnaryOp::Neg, arg } => {
                let (d, roots) = self.derivative(arg, load)?;
                Some((Some(format!("(-{})", d.unwrap_or_else(|| "1.0".into()))), roots))
            }
            _ => None,
        }
    }

    /// What remains of `e` when the state `load` is 0, as a product (`r[i] * (S[i, j] +
    /// u[i] * k[i] * v[j])` leaves `r[i] * u[i] * k[i] * v[j]`), when `e` is a product
    /// whose one non-factor is `load ± term`.
    fn residual(&self, e: Handle<Expr>, load: Handle<Expr>) -> Option<Product> {
        match self.agg.exprs[e] {
            Expr::Binary { op: op @ (BinaryOp::Add | BinaryOp::Sub), lhs, rhs } if lhs == load || rhs == load => {
                let mut p = Product { negative: false, factors: Vec::new() };
                if lhs == load {
                    self.flatten(rhs, &mut p);
                    p.negative ^= op == BinaryOp::Sub;
                } else {
                    self.flatten(lhs, &mut p);
                }
                Some(p)
            }
            Expr::Binary { op: BinaryOp::Mul, lhs, rhs } => {
                let (inner, other) = if self.contains(lhs, load) { (lhs, rhs) } else { (rhs, lhs) };
                let mut p = self.residual(inner, load)?;
                self.flatten(other, &mut p);
                Some(p)
            }
            Expr::Unary { op: UnaryOp::Neg, arg } => {
                let mut p = self.residual(arg, load)?;
                p.negative = !p.negative;
                Some(p)
            }
            _ => None,
        }
    }

    /// The residual of `e` (see [`Self::residual`]) split into the factors free of the
    /// summed `var` (with the sign) and those that depend on `var` alone, if it splits so.
    fn split_residual(&self, e: Handle<Expr>, load: Handle<Expr>, var: Handle<IndexVar>) -> Option<(Product, Vec<Handle<Expr>>)> {
        let p = self.residual(e, load)?;
        let (inner, outer): (Vec<_>, Vec<_>) = p.factors.into_iter().partition(|&x| self.free_vars(x).contains(&var));
        let alone = inner.iter().all(|&x| self.free_vars(x) == [var]);
        (alone && !inner.is_empty()).then_some((Product { negative: p.negative, factors: outer }, inner))
    }

    /// `e` is `load` times other factors: nothing remains when the state is zero.
    fn pure_product(&self, e: Handle<Expr>, load: Handle<Expr>) -> bool {
        e == load
            || match self.agg.exprs[e] {
                Expr::Binary { op: BinaryOp::Mul, lhs, rhs } => self.pure_product(lhs, load) || self.pure_product(rhs, load),
                Expr::Binary { op: BinaryOp::Div, lhs, .. } => self.pure_product(lhs, load),
                Expr::Unary { op: UnaryOp::Neg, arg } => self.pure_product(arg, load),
                _ => false,
            }
    }

    // ---- printing the derived sources --------------------------------------------------

    fn var(&self, v: Handle<IndexVar>) -> &str {
        &self.agg.index_vars[v].name
    }

    fn print(&self, e: Handle<Expr>) -> String {
        self.print_with(e, None)
    }

    /// Source text of `e`, fully parenthesized; `zero` (a state load) prints as 0.
    fn print_with(&self, e: Handle<Expr>, zero: Option<Handle<Expr>>) -> String {
        self.text(e, zero, &HashMap::new())
    }

    fn text(&self, e: Handle<Expr>, zero: Option<Handle<Expr>>, subst: &HashMap<Handle<Expr>, String>) -> String {
        if Some(e) == zero {
            return "0.0".into();
        }
        if let Some(s) = subst.get(&e) {
            return s.clone();
        }
        let agg = self.agg;
        let t = |x: Handle<Expr>| self.text(x, zero, subst);
        match &agg.exprs[e] {
            Expr::Float(v) if v.is_infinite() => (if *v > 0.0 { "inf" } else { "(-inf)" }).into(),
            Expr::Float(v) if *v < 0.0 => format!("(-{:?})", -v),
            Expr::Float(v) => format!("{v:?}"),
            Expr::Int(v) if *v < 0 => format!("(-{})", v.unsigned_abs()),
            Expr::Int(v) => v.to_string(),
            Expr::Dim(d) => agg.dims[*d].name.clone(),
            Expr::Index(v) => agg.index_vars[*v].name.clone(),
            Expr::Empty => "empty(st)".into(),
            Expr::Load { source, indices } => {
                let base = match source {
                    Source::Input(t) => format!("x.{}", agg.tensors[*t].name),
                    Source::Param(t) => agg.tensors[*t].name.clone(),
                    Source::Element(_, t) => format!("st.{}", agg.tensors[*t].name),
                    Source::Local(l) => self.local_names.get(l).cloned().unwrap_or_else(|| agg.locals[*l].name.clone()),
                };
                if indices.is_empty() {
                    base
                } else {
                    format!("{base}[{}]", indices.iter().map(|&i| t(i)).collect::<Vec<_>>().join(", "))
                }
            }
            Expr::Unary { op, arg } => format!("({}{})", if *op == UnaryOp::Neg { "-" } else { "!" }, t(*arg)),
            Expr::Binary { op, lhs, rhs } => format!("({} {} {})", t(*lhs), op.symbol(), t(*rhs)),
            Expr::Call { func, args } => format!("{}({})", func.name(), args.iter().map(|&a| t(a)).collect::<Vec<_>>().join(", ")),
            Expr::Select { cond, then, otherwise } => format!("(if {} {{ {} }} else {{ {} }})", t(*cond), t(*then), t(*otherwise)),
            Expr::Reduce { op, var, body } => format!("({}({}) {})", op.name(), agg.index_vars[*var].name, t(*body)),
        }
    }

    fn product_text(&self, negative: bool, factors: &[Handle<Expr>]) -> String {
        let body = if factors.is_empty() { "1.0".to_string() } else { factors.iter().map(|&x| self.print(x)).collect::<Vec<_>>().join(" * ") };
        if negative {
            format!("-({body})")
        } else {
            body
        }
    }

    /// The log of a product of factors: `exp(a)` (or a scalar `let` of one) contributes
    /// `a` itself (log space).
    /// Returns the text and the expressions it reads.
    fn log_of(&self, factors: &[Handle<Expr>]) -> (String, Vec<Handle<Expr>>) {
        let (terms, roots): (Vec<String>, Vec<Handle<Expr>>) = factors
            .iter()
            .map(|&x| match self.exp_arg(x) {
                Some(a) => (self.print(a), a),
                None => (format!("log({})", self.print(x)), x),
            })
            .unzip();
        (terms.join(" + "), roots)
    }

    /// `a` when `x` is `exp(a)` or a scalar `let` of one.
    fn exp_arg(&self, x: Handle<Expr>) -> Option<Handle<Expr>> {
        let x = match &self.agg.exprs[x] {
            Expr::Load { source: Source::Local(l), indices } if indices.is_empty() => self.defs[l.index()].map_or(x, |d| d.value),
            _ => x,
        };
        match &self.agg.exprs[x] {
            Expr::Call { func: Func::Exp, args } => Some(args[0]),
            _ => None,
        }
    }

    fn dims_text(&self) -> String {
        let dims: Vec<String> = self.info.dim_values(self.agg).into_iter().map(|(n, v)| format!("{n} = {v}")).collect();
        if dims.is_empty() {
            String::new()
        } else {
            format!("<{}>", dims.join(", "))
        }
    }

    fn decl(&self, name: &str, shape: &[usize], dtype: Dtype) -> String {
        let mut s = name.to_string();
        if !shape.is_empty() {
            let _ = write!(s, "[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
        }
        if dtype != Dtype::F32 {
            let _ = write!(s, ": {}", dtype.name());
        }
        s
    }

    fn decls(&self, role: Role) -> Vec<String> {
        self.agg.tensors_of(role).map(|t| self.decl(self.name(t), self.info.shape(t), self.agg.tensors[t].dtype)).collect()
    }

    /// The head of a derived aggregator: dims, params, inputs and a one-field element
    /// that nothing reads (the derived aggregators are per-step maps).
    fn head(&self, out: &mut String, suffix: &str, extra_inputs: &[String]) {
        let _ = writeln!(out, "aggregator {}_chunkwise_{suffix}{} {{", self.agg.name, self.dims_text());
        let params = self.decls(Role::Param);
        if !params.is_empty() {
            let _ = writeln!(out, "    param {{ {} }}", params.join(", "));
        }
        let mut inputs = self.decls(Role::Input);
        inputs.extend(extra_inputs.iter().cloned());
        let _ = writeln!(out, "    input {{ {} }}", inputs.join(", "));
        out.push_str("    element { cw_unused }\n    identity { cw_unused = 0.0; }\n    lift(x) { cw_unused = 0.0; }\n");
        out.push_str("    combine(l, r) { cw_unused = l.cw_unused + r.cw_unused; }\n");
    }

    fn let_text(&self, s: &Stmt, subst: &HashMap<Handle<Expr>, String>) -> String {
        let Target::Local(l) = s.target else { unreachable!("let_text is called on lets") };
        let binders: Vec<String> = s.indices.iter().map(|&v| format!("{}: {}", self.var(v), self.info.extent(v))).collect();
        let binders = if binders.is_empty() { String::new() } else { format!("[{}]", binders.join(", ")) };
        format!("let {}{binders} = {};", self.local_names[&l], self.text(s.value, None, subst))
    }

    /// The lets the roots read, transitively, in definition order; `skip` are
    /// expressions replaced by text that reads no let.
    fn lets_for(&self, roots: &[Handle<Expr>], skip: &HashSet<Handle<Expr>>) -> Vec<&'a Stmt> {
        let mut needed = HashSet::new();
        let mut stack: Vec<Handle<Expr>> = roots.to_vec();
        while let Some(e) = stack.pop() {
            if skip.contains(&e) {
                continue;
            }
            if let Expr::Load { source: Source::Local(l), .. } = self.agg.exprs[e] {
                if needed.insert(l) {
                    if let Some(d) = self.defs[l.index()] {
                        stack.push(d.value);
                    }
                }
            }
            self.agg.exprs[e].for_each_child(|c| stack.push(c));
        }
        [&self.agg.lift, &self.agg.readout]
            .into_iter()
            .flat_map(|b| &b.stmts)
            .filter(|s| matches!(s.target, Target::Local(l) if needed.contains(&l)))
            .collect()
    }

    fn features_source(&self, outputs: &[FeatureOut]) -> String {
        let mut out = String::new();
        self.head(&mut out, "features", &[]);
        let decls: Vec<String> = outputs.iter().map(|(n, shape, _, _)| self.decl(n, shape, Dtype::F32)).collect();
        let _ = writeln!(out, "    readout inclusive(st, x) -> ({}) {{", decls.join(", "));
        let roots: Vec<Handle<Expr>> = outputs.iter().flat_map(|o| o.3.iter().copied()).collect();
        for s in self.lets_for(&roots, &HashSet::new()) {
            let _ = writeln!(out, "        {}", self.let_text(s, &HashMap::new()));
        }
        for (_, _, stmt, _) in outputs {
            let _ = writeln!(out, "        {stmt}");
        }
        out.push_str("    }\n}\n");
        out
    }

    /// Output k's contraction, for every output that is an f32 contraction read as it is
    /// (the readout map's statement is `o[j] = x.cw_cM[j];`); `None` if any is not.
    fn direct_outputs(&self, raw: &[RawContraction], subst: &Substitutions) -> Option<Vec<usize>> {
        self.agg
            .tensors_of(Role::Output)
            .map(|t| {
                let s = self.agg.readout.stmts.iter().find(|s| s.target == Target::Tensor(t))?;
                let vars: Vec<&str> = s.indices.iter().map(|&v| self.var(v)).collect();
                let vars = if vars.is_empty() { String::new() } else { format!("[{}]", vars.join(", ")) };
                let text = self.text(s.value, None, subst);
                let m = (0..raw.len()).find(|m| text == format!("x.cw_c{m}{vars}"))?;
                let same_shape = self.info.shape(t) == &self.info.shape(raw[m].field)[1..];
                (same_shape && self.agg.tensors[t].dtype == Dtype::F32).then_some(m)
            })
            .collect()
    }

    fn readout_source(&self, raw: &[RawContraction], subst: &HashMap<Handle<Expr>, String>) -> String {
        let extra: Vec<String> = raw
            .iter()
            .enumerate()
            .map(|(m, c)| {
                let shape = self.info.shape(c.field);
                self.decl(&format!("cw_c{m}"), &shape[1..], Dtype::F32)
            })
            .collect();
        let mut out = String::new();
        self.head(&mut out, "readout", &extra);
        let _ = writeln!(out, "    readout inclusive(st, x) -> ({}) {{", self.decls(Role::Output).join(", "));
        // The lets the outputs still read once each contraction is an input.
        let pure: HashSet<Handle<Expr>> = raw.iter().filter(|c| c.pure).map(|c| c.node).collect();
        let roots: Vec<Handle<Expr>> =
            self.agg.readout.stmts.iter().filter(|s| matches!(s.target, Target::Tensor(_))).map(|s| s.value).collect();
        let lets = self.lets_for(&roots, &pure);
        for s in &self.agg.readout.stmts {
            let written = match s.target {
                Target::Local(_) => lets.iter().any(|l| std::ptr::eq(*l, s)),
                Target::Tensor(_) => true,
            };
            if written {
                for c in raw.iter().filter(|c| self.contains(s.value, c.node)) {
                    if let Some(hoisted) = &c.hoisted {
                        let _ = writeln!(out, "        {hoisted}");
                    }
                }
            }
            match s.target {
                Target::Local(_) if written => {
                    let _ = writeln!(out, "        {}", self.let_text(s, subst));
                }
                Target::Local(_) => {}
                Target::Tensor(t) => {
                    let vars: Vec<&str> = s.indices.iter().map(|&v| self.var(v)).collect();
                    let vars = if vars.is_empty() { String::new() } else { format!("[{}]", vars.join(", ")) };
                    let _ = writeln!(out, "        {}{vars} = {};", self.name(t), self.text(s.value, None, subst));
                }
            }
        }
        out.push_str("    }\n}\n");
        out
    }
}

/// A state field's key and value feature names, its transition, and the element field
/// holding the transition.
type FieldParts = (String, String, Decay, Option<Handle<Tensor>>);

/// A feature map output: name, shape, its statement, and the expressions it reads.
type FeatureOut = (String, Vec<usize>, String, Vec<Handle<Expr>>);

/// The text each contraction of the readout is replaced by, keyed by its `sum`.
type Substitutions = HashMap<Handle<Expr>, String>;

struct RawContraction {
    /// The `sum` it replaces, and whether nothing of it remains (no state-free term).
    node: Handle<Expr>,
    pure: bool,
    field: Handle<Tensor>,
    var: Handle<IndexVar>,
    query: String,
    query_roots: Vec<Handle<Expr>>,
    replacement: String,
    /// The `let` of a state-free sum the replacement reads, written before the readout
    /// statement that holds the contraction.
    hoisted: Option<String>,
}

/// The derived sources must parse and validate; a failure is a defect of this pass.
fn check_source(what: &str, src: &str) -> Result<(), NotApplicable> {
    let module = crate::front::dsl::parse(src).map_err(|d| internal(what, &d))?;
    crate::valid::validate(&module, &[]).map_err(|d| internal(what, &d))?;
    Ok(())
}

fn internal(what: &str, diags: &[crate::Diagnostic]) -> NotApplicable {
    let msgs: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    NotApplicable(format!("internal error: the derived {what} does not validate: {}", msgs.join("; ")))
}
