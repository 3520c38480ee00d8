//! Bodies → CLIF: statements as row-major loop nests, expressions as SSA values,
//! reproducing the interpreter (psm-ir `interp`) in `Precision::Declared` bit for bit.
//!
//! * Integer expressions of index variables, dims and literals (`info.constant`) are
//!   computed exactly in i64 (folded at compile time where they involve no index
//!   variable) and converted to their type as the interpreter converts them.
//! * `if`/`select` evaluate only the taken branch (a diamond with a block parameter),
//!   except where both branches are cheap and provably safe to evaluate (no call, no
//!   loop, every load in bounds for every index value): then a `select` instruction
//!   picks one of two values computed without side effects, which is unobservable.
//! * A reduction is a loop whose accumulator starts at the exact identity of its
//!   operation (-0.0 for a float sum, 1 for a product, -inf/+inf for max/min, and the
//!   i32 counterparts): `identity ∘ e0 = e0` bit for bit, so the loop computes the
//!   interpreter's `((e0 ∘ e1) ∘ e2) …` exactly.

use std::collections::BTreeMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, BlockArg, FuncRef, Function, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use psm_ir::arena::Handle;
use psm_ir::ir::{
    Aggregator, BinaryOp, Body, BodyKind, Dtype, Expr, Func, IndexVar, ReduceOp, Scalar, Side, Source, Stmt, Target,
    UnaryOp,
};
use psm_ir::valid::Info;

use crate::index;
use crate::layout::{dtype_size, scalar_size, strides, Layout, ScratchPlan};
use crate::reduce::{self, Init, Step};
use super::math::MathFn;

/// Supplies the callee of a math function in the function being built.
pub(crate) trait Imports {
    fn import(&mut self, func: &mut Function, m: MathFn) -> FuncRef;
}

/// What lowering needs to know about one validated aggregator.
pub(crate) struct Ctx<'a> {
    pub agg: &'a Aggregator,
    pub info: &'a Info,
    pub layout: Layout,
    pub plan: ScratchPlan,
    /// Position of each tensor within its role, indexed by tensor handle.
    pub positions: Vec<usize>,
}

impl<'a> Ctx<'a> {
    pub fn new(agg: &'a Aggregator, info: &'a Info) -> Ctx<'a> {
        let layout = Layout::new(agg, info);
        let plan = ScratchPlan::new(agg, info, &layout);
        Ctx { agg, info, layout, plan, positions: crate::layout::positions(agg) }
    }
}

/// Where an element field, a `let` or an output lives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loc {
    /// In memory at `base + offset`, row-major.
    Mem { base: Value, offset: i64 },
    /// A rank-0 value held in an SSA variable.
    Var(Variable),
    /// Reads as zeros (the exclusive readout's state at step 0 without an identity).
    Zero,
}

/// One element operand or result: a location per field.
#[derive(Debug, Clone)]
pub(crate) struct ElemView(pub Vec<Loc>);

#[derive(Debug, Clone, Copy)]
pub(crate) enum EmptyFlag {
    Const(bool),
    /// An i8 value, 0 or 1.
    Dyn(Value),
}

/// What a body reads and writes.
pub(crate) struct BodyIo {
    /// Base pointer of each param (by position), where the body reads it.
    pub params: Vec<Option<Value>>,
    /// Row pointer of each input at the body's step.
    pub inputs: Vec<Option<Value>>,
    pub left: Option<ElemView>,
    pub right: Option<ElemView>,
    pub state: Option<ElemView>,
    /// The element a lift, combine or identity writes.
    pub out: Option<ElemView>,
    /// Row pointer of each output at the readout's step.
    pub outputs: Vec<Option<Value>>,
    pub empty: EmptyFlag,
    /// Base of the `let` region of scratch.
    pub scratch: Value,
}

/// The CLIF type of a value type (bools are i8, 0 or 1).
pub(crate) fn clif_type(s: Scalar) -> Type {
    match s {
        Scalar::F32 => types::F32,
        Scalar::F64 => types::F64,
        Scalar::I32 => types::I32,
        Scalar::Bool => types::I8,
    }
}

/// Memory flags: every access of generated code is in bounds and aligned.
pub(crate) fn flags_rw() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Loads of data that no call of a generated function writes (params, inputs and the
/// pointer arrays); `movable` where the address is valid wherever the load is placed
/// (the ABI requires every param pointer to be valid whenever a function runs).
pub(crate) fn flags_ro(movable: bool) -> MemFlagsData {
    let f = MemFlagsData::trusted().with_readonly();
    if movable {
        f.with_can_move()
    } else {
        f
    }
}

pub(crate) struct Lowerer<'a, 'f> {
    pub cx: &'a Ctx<'a>,
    pub b: FunctionBuilder<'f>,
    imports: &'a mut dyn Imports,
    math: BTreeMap<MathFn, FuncRef>,
    /// Current value (i64) of each index variable in scope.
    pub(super) env: Vec<Option<Value>>,
    /// Location of each local of the body being lowered.
    pub(super) locals: Vec<Option<Loc>>,
    /// Values of expressions of literals and dims, folded at compile time.
    folds: index::Folds,
}

impl<'a, 'f> Lowerer<'a, 'f> {
    pub fn new(cx: &'a Ctx<'a>, b: FunctionBuilder<'f>, imports: &'a mut dyn Imports) -> Self {
        Lowerer {
            cx,
            b,
            imports,
            math: BTreeMap::new(),
            env: vec![None; cx.agg.index_vars.len()],
            locals: vec![None; cx.agg.locals.len()],
            folds: index::Folds::new(cx.agg),
        }
    }

    // ------------------------------------------------------------ small helpers

    pub fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// A constant of a value type, from the interpreter's f64 representation.
    pub(super) fn imm(&mut self, ty: Scalar, x: f64) -> Value {
        match ty {
            Scalar::F32 => self.b.ins().f32const(x as f32),
            Scalar::F64 => self.b.ins().f64const(x),
            Scalar::I32 => self.b.ins().iconst(types::I32, (x as i64 as i32) as u32 as i64),
            Scalar::Bool => self.b.ins().iconst(types::I8, (x != 0.0) as i64),
        }
    }

    pub(super) fn math_call(&mut self, m: MathFn, args: &[Value]) -> Value {
        let fr = match self.math.get(&m) {
            Some(&fr) => fr,
            None => {
                let fr = self.imports.import(self.b.func, m);
                self.math.insert(m, fr);
                fr
            }
        };
        let inst = self.b.ins().call(fr, args);
        self.b.inst_results(inst)[0]
    }

    /// `for k in 0..n { f(k) }` as a do-while loop (n ≥ 1), or `f(0)` alone for n = 1.
    pub fn counted_loop(&mut self, n: u64, f: &mut dyn FnMut(&mut Self, Value)) {
        if n == 0 {
            return;
        }
        if n == 1 {
            let zero = self.iconst(0);
            f(self, zero);
            return;
        }
        let header = self.b.create_block();
        let exit = self.b.create_block();
        let k = self.b.append_block_param(header, types::I64);
        let zero = self.iconst(0);
        self.b.ins().jump(header, &[BlockArg::Value(zero)]);
        self.b.switch_to_block(header);
        f(self, k);
        let next = self.b.ins().iadd_imm_s(k, 1);
        let more = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThan, next, n as i64);
        self.b.ins().brif(more, header, &[BlockArg::Value(next)], exit, &[]);
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
    }

    /// Loops over `vars` (outermost first), binding each, then runs `f`.
    pub(super) fn nest(&mut self, vars: &[Handle<IndexVar>], f: &mut dyn FnMut(&mut Self)) {
        match vars.split_first() {
            None => f(self),
            Some((&v, rest)) => {
                let n = self.cx.info.extent(v) as u64;
                self.counted_loop(n, &mut |s, k| {
                    s.env[v.index()] = Some(k);
                    s.nest(rest, f);
                });
            }
        }
    }

    /// `base + Σ coeff·value + offset` as an address and a load/store immediate.
    pub(super) fn address(&mut self, base: Value, offset: i64, terms: &[(Value, i64)]) -> (Value, i32) {
        let mut sum: Option<Value> = None;
        for &(v, c) in terms {
            if c == 0 {
                continue;
            }
            let t = if c == 1 { v } else { self.b.ins().imul_imm_s(v, c) };
            sum = Some(match sum {
                Some(s) => self.b.ins().iadd(s, t),
                None => t,
            });
        }
        let mut addr = match sum {
            Some(s) => self.b.ins().iadd(base, s),
            None => base,
        };
        match i32::try_from(offset) {
            Ok(off) => (addr, off),
            Err(_) => {
                addr = self.b.ins().iadd_imm_s(addr, offset);
                (addr, 0)
            }
        }
    }

    /// Byte-offset terms of an access `[indices]` into a tensor of `shape` with
    /// entries of `size` bytes: (constant bytes, (i64 value, byte coefficient)...).
    pub(super) fn access_terms(
        &mut self,
        shape: &[usize],
        indices: &[Handle<Expr>],
        size: usize,
    ) -> (i64, Vec<(Value, i64)>) {
        let (form, generic) = index::access_form(self.cx.agg, self.cx.info, shape, indices, size);
        let generic: Vec<(Value, i64)> = generic.iter().map(|&(i, scale)| (self.int_value(i), scale)).collect();
        let mut terms: Vec<(Value, i64)> = form.terms.iter().map(|&(v, c)| (self.index_var(v), c)).collect();
        terms.extend(generic);
        (form.constant, terms)
    }

    pub(super) fn index_var(&mut self, v: Handle<IndexVar>) -> Value {
        match self.env[v.index()] {
            Some(x) => x,
            // Not bound here: only in code that validation proved unreachable.
            None => self.iconst(0),
        }
    }

    /// Whether every index of an access lies in bounds for every value of its index
    /// variables (not only under the guards around it).
    pub(super) fn in_bounds(&self, shape: &[usize], indices: &[Handle<Expr>]) -> bool {
        index::in_bounds(self.cx.agg, self.cx.info, shape, indices)
    }

    // ------------------------------------------------------------ bodies

    /// Lowers one body at the current position.
    pub fn body(&mut self, body: &Body, io: &BodyIo) {
        self.body_masked(body, io, None);
    }

    /// Lowers the statements of a body that `mask` selects (all with `None`).
    pub fn body_masked(&mut self, body: &Body, io: &BodyIo, mask: Option<&[bool]>) {
        let info = self.cx.info;
        for stmt in &body.stmts {
            if let Target::Local(l) = stmt.target {
                let ty = info.local_types[l.index()];
                self.locals[l.index()] = Some(match self.cx.plan.local_offsets[l.index()] {
                    Some(off) if !info.local_shapes[l.index()].is_empty() => {
                        Loc::Mem { base: io.scratch, offset: off as i64 }
                    }
                    _ => Loc::Var(self.b.declare_var(clif_type(ty))),
                });
            }
        }
        for (k, stmt) in body.stmts.iter().enumerate() {
            if mask.is_none_or(|m| m[k]) {
                self.stmt(stmt, body.kind, io);
            }
        }
    }

    fn stmt(&mut self, stmt: &Stmt, kind: BodyKind, io: &BodyIo) {
        let (agg, info) = (self.cx.agg, self.cx.info);
        let (loc, shape, size, ty): (Loc, &[usize], usize, Scalar) = match stmt.target {
            Target::Tensor(t) => {
                let pos = self.cx.positions[t.index()];
                let loc = if kind == BodyKind::Readout {
                    match io.outputs.get(pos).copied().flatten() {
                        Some(base) => Loc::Mem { base, offset: 0 },
                        None => return,
                    }
                } else {
                    match io.out.as_ref().and_then(|o| o.0.get(pos)) {
                        Some(&f) => f,
                        None => return,
                    }
                };
                let dtype = agg.tensors[t].dtype;
                (loc, info.shape(t), dtype_size(dtype), dtype.scalar())
            }
            Target::Local(l) => match self.locals[l.index()] {
                Some(loc) => {
                    let ty = info.local_types[l.index()];
                    (loc, &info.local_shapes[l.index()], scalar_size(ty), ty)
                }
                None => return,
            },
        };
        let st = strides(shape);
        if let (Loc::Mem { .. }, Some((_, outer))) = (loc, stmt.indices.split_last()) {
            if let Some(plan) = self.vector_plan(stmt, ty) {
                self.nest(outer, &mut |s| s.vector_stmt(stmt, &plan, loc, &st, size, io));
                return;
            }
        }
        self.nest(&stmt.indices, &mut |s| s.entry(stmt, loc, &st, size, io));
    }

    /// One entry of a statement, at the current values of its index variables.
    pub(super) fn entry(&mut self, stmt: &Stmt, loc: Loc, st: &[i64], size: usize, io: &BodyIo) {
        let v = self.value(stmt.value, io);
        match loc {
            Loc::Var(var) => self.b.def_var(var, v),
            Loc::Mem { base, offset } => {
                let terms = self.target_terms(stmt, st, size);
                let (addr, off) = self.address(base, offset, &terms);
                match self.half_target(stmt) {
                    Some(dtype) => {
                        let bits = super::storage::narrow(&mut self.b, dtype, v);
                        self.b.ins().istore16(flags_rw(), bits, addr, off);
                    }
                    None => {
                        self.b.ins().store(flags_rw(), v, addr, off);
                    }
                }
            }
            Loc::Zero => {}
        }
    }

    /// The 16-bit storage dtype of a statement's target tensor, if it has one.
    pub(super) fn half_target(&self, stmt: &Stmt) -> Option<Dtype> {
        match stmt.target {
            Target::Tensor(t) => Some(self.cx.agg.tensors[t].dtype).filter(|d| d.is_half()),
            Target::Local(_) => None,
        }
    }

    /// The 16-bit storage dtype of a load's source tensor, if it has one.
    pub(super) fn half_source(&self, source: Source) -> Option<Dtype> {
        match source {
            Source::Input(t) | Source::Param(t) | Source::Element(_, t) => {
                Some(self.cx.agg.tensors[t].dtype).filter(|d| d.is_half())
            }
            Source::Local(_) => None,
        }
    }

    /// Byte-offset terms of a statement's target entry.
    pub(super) fn target_terms(&mut self, stmt: &Stmt, st: &[i64], size: usize) -> Vec<(Value, i64)> {
        stmt.indices
            .iter()
            .zip(st)
            .map(|(&iv, &stride)| (self.index_var(iv), stride.wrapping_mul(size as i64)))
            .collect()
    }

    // ------------------------------------------------------------ integers

    /// The exact i64 value of an integer or boolean expression of index variables and
    /// dims (booleans as 0/1).
    fn int_value(&mut self, e: Handle<Expr>) -> Value {
        let (agg, info) = (self.cx.agg, self.cx.info);
        if let Some(k) = index::fold(agg, info, e) {
            return self.iconst(k);
        }
        if let Some(form) = index::affine(agg, info, e) {
            let terms: Vec<(Value, i64)> = form.terms.iter().map(|&(v, c)| (self.index_var(v), c)).collect();
            let mut acc: Option<Value> = None;
            for (v, c) in terms {
                let t = if c == 1 { v } else { self.b.ins().imul_imm_s(v, c) };
                acc = Some(match acc {
                    Some(a) => self.b.ins().iadd(a, t),
                    None => t,
                });
            }
            return match acc {
                Some(a) if form.constant != 0 => self.b.ins().iadd_imm_s(a, form.constant),
                Some(a) => a,
                None => self.iconst(form.constant),
            };
        }
        match &agg.exprs[e] {
            Expr::Index(v) => self.index_var(*v),
            Expr::Unary { op: UnaryOp::Neg, arg } => {
                let a = self.int_value(*arg);
                self.b.ins().ineg(a)
            }
            Expr::Binary { op: op @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div), lhs, rhs } => {
                let (a, b) = (self.int_value(*lhs), self.int_value(*rhs));
                match op {
                    BinaryOp::Add => self.b.ins().iadd(a, b),
                    BinaryOp::Sub => self.b.ins().isub(a, b),
                    BinaryOp::Mul => self.b.ins().imul(a, b),
                    _ => self.checked_div(types::I64, a, b, i64::MIN),
                }
            }
            Expr::Unary { op: UnaryOp::Not, .. } | Expr::Binary { .. } => {
                let c = self.cond_value(e);
                self.b.ins().uextend(types::I64, c)
            }
            Expr::Select { cond, then, otherwise } => {
                let c = self.cond_value(*cond);
                let (a, b) = (self.int_value(*then), self.int_value(*otherwise));
                self.b.ins().select(c, a, b)
            }
            Expr::Call { func, args } => {
                let a = self.int_value(args[0]);
                match (func, args.get(1)) {
                    (Func::Min, Some(&y)) => {
                        let b = self.int_value(y);
                        self.b.ins().smin(a, b)
                    }
                    (Func::Max, Some(&y)) => {
                        let b = self.int_value(y);
                        self.b.ins().smax(a, b)
                    }
                    _ => self.b.ins().iabs(a),
                }
            }
            Expr::Reduce { op, var, body } => {
                let (op, var, body) = (*op, *var, *body);
                let init = match op {
                    ReduceOp::Sum => 0,
                    ReduceOp::Prod => 1,
                    ReduceOp::Max => i64::MIN,
                    ReduceOp::Min => i64::MAX,
                };
                let n = info.extent(var) as u64;
                self.reduce_loop(n, var, types::I64, Init::Int(init), &mut |s| s.int_value(body), &mut |s, acc, v| {
                    match op {
                        ReduceOp::Sum => s.b.ins().iadd(acc, v),
                        ReduceOp::Prod => s.b.ins().imul(acc, v),
                        ReduceOp::Max => s.b.ins().smax(acc, v),
                        ReduceOp::Min => s.b.ins().smin(acc, v),
                    }
                })
            }
            // Not integer expressions: validation never marks them constant.
            Expr::Float(_) | Expr::Load { .. } | Expr::Empty | Expr::Int(_) | Expr::Dim(_) => self.iconst(0),
        }
    }

    /// An i8 (0/1) for a constant boolean expression.
    fn cond_value(&mut self, e: Handle<Expr>) -> Value {
        let (agg, info) = (self.cx.agg, self.cx.info);
        if let Some(k) = index::fold(agg, info, e) {
            return self.b.ins().iconst(types::I8, (k != 0) as i64);
        }
        match &agg.exprs[e] {
            Expr::Binary { op, lhs, rhs } if op.is_comparison() => {
                let (a, b) = (self.int_value(*lhs), self.int_value(*rhs));
                self.b.ins().icmp(int_cc(*op), a, b)
            }
            Expr::Binary { op: op @ (BinaryOp::And | BinaryOp::Or), lhs, rhs } => {
                let (a, b) = (self.cond_value(*lhs), self.cond_value(*rhs));
                if *op == BinaryOp::And {
                    self.b.ins().band(a, b)
                } else {
                    self.b.ins().bor(a, b)
                }
            }
            Expr::Unary { op: UnaryOp::Not, arg } => {
                let a = self.cond_value(*arg);
                self.b.ins().bxor_imm_u(a, 1)
            }
            _ => {
                let v = self.int_value(e);
                self.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0)
            }
        }
    }

    /// `a / b`, or 0 where the interpreter's `checked_div` fails (b = 0, MIN / -1).
    fn checked_div(&mut self, ty: Type, a: Value, b: Value, min: i64) -> Value {
        let zero = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
        let a_min = self.b.ins().icmp_imm_s(IntCC::Equal, a, min);
        let b_m1 = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
        let ovf = self.b.ins().band(a_min, b_m1);
        let bad = self.b.ins().bor(zero, ovf);
        let one = self.b.ins().iconst(ty, 1);
        let safe = self.b.ins().select(bad, one, b);
        let q = self.b.ins().sdiv(a, safe);
        let z = self.b.ins().iconst(ty, 0);
        self.b.ins().select(bad, z, q)
    }

    /// A constant expression (`info.constant`) as a value of its type, converted from
    /// the exact integer as the interpreter converts it: `(v as f64) as f32`,
    /// `v as f64`, `(v as f64) as i64 as i32`, `v != 0`.
    fn constant(&mut self, e: Handle<Expr>, ty: Scalar) -> Value {
        let (agg, info) = (self.cx.agg, self.cx.info);
        if let Some(k) = index::fold(agg, info, e) {
            return self.imm(ty, k as f64);
        }
        if ty == Scalar::Bool {
            return self.cond_value(e);
        }
        let v = self.int_value(e);
        // Within ±2^53 the detour through f64 is exact and can be skipped.
        let exact = index::range(agg, info, e).is_some_and(|(lo, hi)| lo.abs() <= 1 << 53 && hi.abs() <= 1 << 53);
        match ty {
            Scalar::F64 => self.b.ins().fcvt_from_sint(types::F64, v),
            Scalar::F32 if exact => self.b.ins().fcvt_from_sint(types::F32, v),
            Scalar::F32 => {
                let d = self.b.ins().fcvt_from_sint(types::F64, v);
                self.b.ins().fdemote(types::F32, d)
            }
            Scalar::I32 if exact => self.b.ins().ireduce(types::I32, v),
            _ => {
                let d = self.b.ins().fcvt_from_sint(types::F64, v);
                let s = self.b.ins().fcvt_to_sint_sat(types::I64, d);
                self.b.ins().ireduce(types::I32, s)
            }
        }
    }

    // ------------------------------------------------------------ values

    /// The value of an expression of literals and dims alone, computed at compile time
    /// by the interpreter's own arithmetic ([`index::Folds`]).
    fn folded(&mut self, e: Handle<Expr>) -> Option<f64> {
        self.folds.get(self.cx.agg, self.cx.info, e)
    }

    /// The value of an expression, of CLIF type `clif_type(info.types[e])`.
    pub(super) fn value(&mut self, e: Handle<Expr>, io: &BodyIo) -> Value {
        let (agg, info) = (self.cx.agg, self.cx.info);
        let ty = info.ty(e);
        if let Some(x) = self.folded(e) {
            return self.imm(ty, x);
        }
        if info.constant[e.index()] {
            return self.constant(e, ty);
        }
        match &agg.exprs[e] {
            Expr::Float(x) => self.imm(ty, *x),
            Expr::Int(_) | Expr::Dim(_) | Expr::Index(_) => self.constant(e, ty),
            Expr::Empty => match io.empty {
                EmptyFlag::Const(b) => self.b.ins().iconst(types::I8, b as i64),
                EmptyFlag::Dyn(v) => v,
            },
            Expr::Load { source, indices } => self.load(*source, indices, io, ty),
            Expr::Unary { op, arg } => {
                let a = self.value(*arg, io);
                match (op, info.ty(*arg)) {
                    (UnaryOp::Not, _) => self.b.ins().icmp_imm_s(IntCC::Equal, a, 0),
                    (UnaryOp::Neg, Scalar::F32 | Scalar::F64) => self.b.ins().fneg(a),
                    (UnaryOp::Neg, _) => self.b.ins().ineg(a),
                }
            }
            Expr::Binary { op, lhs, rhs } => {
                let a = self.value(*lhs, io);
                let b = self.value(*rhs, io);
                self.binary(*op, info.ty(*lhs), a, b)
            }
            Expr::Call { func, args } => {
                let vals: Vec<Value> = args.iter().map(|&a| self.value(a, io)).collect();
                self.call(*func, info.ty(args[0]), &vals)
            }
            Expr::Select { cond, then, otherwise } => self.select(*cond, *then, *otherwise, ty, io),
            Expr::Reduce { op, var, body } => {
                let (op, var, body) = (*op, *var, *body);
                let n = info.extent(var) as u64;
                let (init, step) = (reduce::init(op, ty), reduce::step(op));
                self.reduce_loop(
                    n,
                    var,
                    clif_type(ty),
                    init,
                    &mut |s| s.value(body, io),
                    &mut |s, acc, v| match step {
                        Step::Bin(op) => s.binary(op, ty, acc, v),
                        Step::Call(f) => s.call(f, ty, &[acc, v]),
                    },
                )
            }
        }
    }

    /// A reduction loop: `acc = init; for k in 0..n { acc = step(acc, body(k)) }`.
    /// With n = 1 the body alone (`init ∘ x = x` exactly).
    fn reduce_loop(
        &mut self,
        n: u64,
        var: Handle<IndexVar>,
        ty: Type,
        init: Init,
        body: &mut dyn FnMut(&mut Self) -> Value,
        step: &mut dyn FnMut(&mut Self, Value, Value) -> Value,
    ) -> Value {
        if n <= 1 {
            let zero = self.iconst(0);
            self.env[var.index()] = Some(zero);
            if n == 1 {
                return body(self);
            }
            return self.init_value(ty, init);
        }
        let init = self.init_value(ty, init);
        let header = self.b.create_block();
        let exit = self.b.create_block();
        let k = self.b.append_block_param(header, types::I64);
        let acc = self.b.append_block_param(header, ty);
        let result = self.b.append_block_param(exit, ty);
        let zero = self.iconst(0);
        self.b.ins().jump(header, &[BlockArg::Value(zero), BlockArg::Value(init)]);
        self.b.switch_to_block(header);
        self.env[var.index()] = Some(k);
        let v = body(self);
        let acc2 = step(self, acc, v);
        let next = self.b.ins().iadd_imm_s(k, 1);
        let more = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThan, next, n as i64);
        self.b.ins().brif(
            more,
            header,
            &[BlockArg::Value(next), BlockArg::Value(acc2)],
            exit,
            &[BlockArg::Value(acc2)],
        );
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
        result
    }

    pub(super) fn init_value(&mut self, ty: Type, init: Init) -> Value {
        match init {
            // iconst takes an i32's bits zero-extended.
            Init::Int(v) if ty == types::I32 => self.b.ins().iconst(ty, v as i32 as u32 as i64),
            Init::Int(v) => self.b.ins().iconst(ty, v),
            Init::Float(x) if ty == types::F32 => self.b.ins().f32const(x as f32),
            Init::Float(x) => self.b.ins().f64const(x),
        }
    }

    fn binary(&mut self, op: BinaryOp, ty: Scalar, a: Value, b: Value) -> Value {
        let float = ty.is_float();
        if op.is_comparison() {
            return if float {
                let cc = match op {
                    BinaryOp::Lt => FloatCC::LessThan,
                    BinaryOp::Le => FloatCC::LessThanOrEqual,
                    BinaryOp::Gt => FloatCC::GreaterThan,
                    BinaryOp::Ge => FloatCC::GreaterThanOrEqual,
                    BinaryOp::Eq => FloatCC::Equal,
                    // Unordered or not equal: NaN != x is true, as in the interpreter.
                    _ => FloatCC::NotEqual,
                };
                self.b.ins().fcmp(cc, a, b)
            } else {
                self.b.ins().icmp(int_cc(op), a, b)
            };
        }
        match (op, float) {
            (BinaryOp::And, _) => self.b.ins().band(a, b),
            (BinaryOp::Or, _) => self.b.ins().bor(a, b),
            (BinaryOp::Add, true) => self.b.ins().fadd(a, b),
            (BinaryOp::Sub, true) => self.b.ins().fsub(a, b),
            (BinaryOp::Mul, true) => self.b.ins().fmul(a, b),
            (BinaryOp::Div, true) => self.b.ins().fdiv(a, b),
            (BinaryOp::Add, false) => self.b.ins().iadd(a, b),
            (BinaryOp::Sub, false) => self.b.ins().isub(a, b),
            (BinaryOp::Mul, false) => self.b.ins().imul(a, b),
            (_, false) => {
                let t = clif_type(ty);
                self.checked_div(t, a, b, if t == types::I32 { i32::MIN as i64 } else { i64::MIN })
            }
            _ => unreachable!("comparisons handled above"),
        }
    }

    fn call(&mut self, func: Func, ty: Scalar, args: &[Value]) -> Value {
        let a = args[0];
        if !ty.is_float() {
            return match func {
                Func::Min if args.len() > 1 => self.b.ins().smin(a, args[1]),
                Func::Max if args.len() > 1 => self.b.ins().smax(a, args[1]),
                _ => self.b.ins().iabs(a),
            };
        }
        let f32 = ty == Scalar::F32;
        let pick = |s: MathFn, d: MathFn| if f32 { s } else { d };
        let (exp, log) = (pick(MathFn::ExpF32, MathFn::ExpF64), pick(MathFn::LogF32, MathFn::LogF64));
        match func {
            Func::Exp => self.math_call(exp, &[a]),
            Func::Log => self.math_call(log, &[a]),
            Func::Tanh => self.math_call(pick(MathFn::TanhF32, MathFn::TanhF64), &[a]),
            Func::Pow => self.math_call(pick(MathFn::PowF32, MathFn::PowF64), &[a, args[1]]),
            Func::Sqrt => self.b.ins().sqrt(a),
            Func::Rsqrt => {
                let one = self.imm(ty, 1.0);
                let s = self.b.ins().sqrt(a);
                self.b.ins().fdiv(one, s)
            }
            Func::Sigmoid => {
                // 1 / (1 + exp(-a))
                let one = self.imm(ty, 1.0);
                let n = self.b.ins().fneg(a);
                let e = self.math_call(exp, &[n]);
                let d = self.b.ins().fadd(one, e);
                self.b.ins().fdiv(one, d)
            }
            Func::Softplus => {
                // (a > 0 ? a : 0) + log(1 + exp(-|a|))
                let zero = self.imm(ty, 0.0);
                let one = self.imm(ty, 1.0);
                let pos = self.b.ins().fcmp(FloatCC::GreaterThan, a, zero);
                let head = self.b.ins().select(pos, a, zero);
                let m = self.b.ins().fabs(a);
                let m = self.b.ins().fneg(m);
                let e = self.math_call(exp, &[m]);
                let s = self.b.ins().fadd(one, e);
                let l = self.math_call(log, &[s]);
                self.b.ins().fadd(head, l)
            }
            Func::Abs => self.b.ins().fabs(a),
            // IEEE 754-2019 minimum/maximum: NaN propagates, -0 < +0.
            Func::Min => self.b.ins().fmin(a, args[1]),
            Func::Max => self.b.ins().fmax(a, args[1]),
        }
    }

    fn select(
        &mut self,
        cond: Handle<Expr>,
        then: Handle<Expr>,
        otherwise: Handle<Expr>,
        ty: Scalar,
        io: &BodyIo,
    ) -> Value {
        let (agg, info) = (self.cx.agg, self.cx.info);
        if info.constant[cond.index()] {
            if let Some(k) = index::fold(agg, info, cond) {
                return self.value(if k != 0 { then } else { otherwise }, io);
            }
        }
        let c = self.value(cond, io);
        if self.speculatable(then) && self.speculatable(otherwise) {
            let a = self.value(then, io);
            let b = self.value(otherwise, io);
            return self.b.ins().select(c, a, b);
        }
        let then_block = self.b.create_block();
        let else_block = self.b.create_block();
        let merge = self.b.create_block();
        let result = self.b.append_block_param(merge, clif_type(ty));
        self.b.ins().brif(c, then_block, &[], else_block, &[]);
        self.b.seal_block(then_block);
        self.b.seal_block(else_block);
        self.b.switch_to_block(then_block);
        let a = self.value(then, io);
        self.b.ins().jump(merge, &[BlockArg::Value(a)]);
        self.b.switch_to_block(else_block);
        let b = self.value(otherwise, io);
        self.b.ins().jump(merge, &[BlockArg::Value(b)]);
        self.b.seal_block(merge);
        self.b.switch_to_block(merge);
        result
    }

    /// Whether evaluating `e` when its branch is not taken is cheap and unobservable.
    pub(super) fn speculatable(&self, e: Handle<Expr>) -> bool {
        index::speculatable(self.cx.agg, self.cx.info, e, index::Calls::Exp)
    }

    pub(super) fn source_shape(&self, source: Source) -> &'a [usize] {
        index::source_shape(self.cx.info, source)
    }

    /// Where a load's source lives, its shape, entry size and the flags of its loads.
    pub(super) fn source_loc(
        &self,
        source: Source,
        indices: &[Handle<Expr>],
        io: &BodyIo,
    ) -> (Option<Loc>, &'a [usize], usize, MemFlagsData) {
        let (agg, info) = (self.cx.agg, self.cx.info);
        match source {
            Source::Input(t) | Source::Param(t) => {
                let pos = self.cx.positions[t.index()];
                let bases = if matches!(source, Source::Input(_)) { &io.inputs } else { &io.params };
                let shape = info.shape(t);
                // Params may move (out of loops) where in bounds everywhere; inputs stay
                // where they are read.
                let movable = matches!(source, Source::Param(_)) && self.in_bounds(shape, indices);
                let loc = bases.get(pos).copied().flatten().map(|base| Loc::Mem { base, offset: 0 });
                (loc, shape, dtype_size(agg.tensors[t].dtype), flags_ro(movable))
            }
            Source::Element(side, t) => {
                let pos = self.cx.positions[t.index()];
                let view = match side {
                    Side::Left => &io.left,
                    Side::Right => &io.right,
                    Side::State => &io.state,
                };
                let loc = view.as_ref().and_then(|v| v.0.get(pos)).copied();
                (loc, info.shape(t), dtype_size(agg.tensors[t].dtype), flags_rw())
            }
            Source::Local(l) => (
                self.locals[l.index()],
                &info.local_shapes[l.index()][..],
                scalar_size(info.local_types[l.index()]),
                flags_rw(),
            ),
        }
    }

    fn load(&mut self, source: Source, indices: &[Handle<Expr>], io: &BodyIo, ty: Scalar) -> Value {
        let (loc, shape, size, flags) = self.source_loc(source, indices, io);
        match loc {
            Some(Loc::Var(v)) => self.b.use_var(v),
            Some(Loc::Mem { base, offset }) => {
                let (k, terms) = self.access_terms(shape, indices, size);
                let (addr, off) = self.address(base, offset.wrapping_add(k), &terms);
                match self.half_source(source) {
                    Some(dtype) => {
                        let raw = self.b.ins().uload16(types::I32, flags, addr, off);
                        super::storage::widen(&mut self.b, dtype, raw)
                    }
                    None => self.b.ins().load(clif_type(ty), flags, addr, off),
                }
            }
            // Zeros, or (never for a validated body) an operand the body does not have.
            Some(Loc::Zero) | None => self.imm(ty, 0.0),
        }
    }
}

pub(super) fn int_cc(op: BinaryOp) -> IntCC {
    match op {
        BinaryOp::Lt => IntCC::SignedLessThan,
        BinaryOp::Le => IntCC::SignedLessThanOrEqual,
        BinaryOp::Gt => IntCC::SignedGreaterThan,
        BinaryOp::Ge => IntCC::SignedGreaterThanOrEqual,
        BinaryOp::Eq => IntCC::Equal,
        _ => IntCC::NotEqual,
    }
}
