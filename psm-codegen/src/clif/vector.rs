//! SIMD across independent entries: a statement's innermost index loop in 128-bit
//! vectors (4 lanes of f32/i32, 2 of f64).
//!
//! Every lane computes one entry with exactly the scalar operation sequence of that
//! entry, so the result is bit-identical to the scalar loop (and to the interpreter):
//!
//! * values that do not depend on the lane variable `v` are computed once as scalars
//!   and splat; loads whose byte offset moves by exactly one entry per step of `v` are
//!   vector loads, the target is stored likewise (its innermost stride is one entry);
//! * a reduction over another index variable keeps one accumulator per lane, each the
//!   sequential left fold of its entry (the reduction identity, splat, is exact as in
//!   the scalar loop); a reduction over `v` itself never arises (it would be a rank-0
//!   statement, which stays scalar);
//! * `if`/`select` whose condition does not depend on `v` branch once for all lanes (the
//!   taken branch is the one every lane takes); a condition that depends on `v` is a
//!   lane mask and `bitselect` picks, allowed only where both branches are cheap and
//!   unobservable (`speculatable`: no call but `exp` and the inline ones, every load in
//!   bounds everywhere; an `exp` is then called for every lane);
//! * `exp`, `log`, `tanh`, `pow` (also inside `sigmoid`, `softplus`) call the host
//!   function lane by lane: the same function on the same argument;
//! * anything else (an index used as a number, a condition on `v` over branches that
//!   may fault, i32 division, a strided or gathered load, lanes of mixed widths) keeps
//!   the whole statement scalar; bf16/f16 loads widen four entries at a time
//!   (`uload16x4`, then `storage::widen` lane-wise), and a bf16/f16 target is stored lane by
//!   lane, each rounded as the scalar code rounds it.
//!
//! Several vectors are processed per iteration (`GROUP`, or `GROUP_REDUCE` when a
//! reduction's accumulators would otherwise serialize on the latency of one add); the
//! entries left over after whole groups run as one smaller group, the last
//! `extent % lanes` entries as scalar code.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, BlockArg, Endianness, InstBuilder, MemFlagsData, Type, Value};
use psm_ir::arena::Handle;
use psm_ir::ir::{BinaryOp, Expr, Func, IndexVar, ReduceOp, Scalar, Stmt, UnaryOp};

use crate::index;
use crate::layout::{scalar_size, strides};
use crate::reduce;
use super::lower::{clif_type, flags_rw, int_cc, BodyIo, Loc, Lowerer};
use super::math::MathFn;

// Measured on the GLA scan (K = V = 64, µs/step) as (GROUP, GROUP_REDUCE): (1, 1) 1.53,
// (1, 4) 1.17, (2, 2) 1.14, (2, 4) 1.03, (4, 4) 0.96, (8, 4) 0.99, (4, 8) 1.12 (eight
// accumulators and their operands likely exceed x64's 16 vector registers).

/// Vectors per iteration of a statement loop.
const GROUP: usize = 4;
/// Vectors per iteration when the value holds a reduction: independent accumulators,
/// so that the folds do not serialize on the latency of one add.
const GROUP_REDUCE: usize = 4;
/// Whether a statement calling a host function is vectorized, the calls lane by lane,
/// rather than kept scalar (measured on a lift of `exp(v) * w + w`, D = 1024: 2.00 µs
/// against 2.22 µs; the arithmetic around the calls is vector code).
const LANEWISE_CALLS: bool = true;

/// How one statement is vectorized.
pub(crate) struct Plan {
    var: Handle<IndexVar>,
    lanes: usize,
    group: usize,
    /// Whether each expression of the value mentions `var`.
    varies: HashMap<Handle<Expr>, bool>,
    /// Lane-independent subexpressions evaluated on every entry: computed once per
    /// run of the vector loop, before it.
    hoist: Vec<Handle<Expr>>,
}

impl Plan {
    fn varies(&self, e: Handle<Expr>) -> bool {
        self.varies.get(&e).copied().unwrap_or(false)
    }
}

/// A value in vector code: one scalar for every lane, or one vector per group member.
#[derive(Clone)]
enum VVal {
    Uni(Value),
    Vec(Vec<Value>),
}

/// What the lowering of one group needs.
struct VCx<'p> {
    plan: &'p Plan,
    hoisted: &'p HashMap<Handle<Expr>, Value>,
    io: &'p BodyIo,
    /// Vectors in this group.
    g: usize,
}

struct Analysis<'l, 'a, 'f> {
    lw: &'l Lowerer<'a, 'f>,
    var: Handle<IndexVar>,
    lane_bytes: usize,
    varies: HashMap<Handle<Expr>, bool>,
    reduces: bool,
}

impl Analysis<'_, '_, '_> {
    fn mentions(&mut self, e: Handle<Expr>) -> bool {
        if let Some(&m) = self.varies.get(&e) {
            return m;
        }
        let agg = self.lw.cx.agg;
        let mut m = matches!(agg.exprs[e], Expr::Index(w) if w == self.var);
        let mut kids = Vec::new();
        agg.exprs[e].for_each_child(|c| kids.push(c));
        for c in kids {
            // Visit every child, so that the memo covers the whole tree.
            m |= self.mentions(c);
        }
        self.varies.insert(e, m);
        m
    }

    /// Whether `e` can be computed lane-wise: `Some(true)` when it varies along the
    /// lanes, `Some(false)` when it is one scalar for all of them.
    fn check(&mut self, e: Handle<Expr>) -> Option<bool> {
        let (agg, info) = (self.lw.cx.agg, self.lw.cx.info);
        if !self.mentions(e) {
            return Some(false);
        }
        let ty = info.ty(e);
        if ty != Scalar::Bool && scalar_size(ty) != self.lane_bytes {
            return None;
        }
        if info.constant[e.index()] {
            // An integer of the lane index used as a value or a condition.
            return None;
        }
        match &agg.exprs[e] {
            Expr::Load { source, indices } => {
                if ty == Scalar::Bool {
                    return None;
                }
                let shape = self.lw.source_shape(*source);
                if indices.len() != shape.len() {
                    return None;
                }
                let size = scalar_size(ty) as i64;
                let st = strides(shape);
                let mut coefficient = 0i64;
                for (k, &i) in indices.iter().enumerate() {
                    if !self.mentions(i) {
                        continue;
                    }
                    let form = index::affine(agg, info, i)?;
                    let c: i64 = form.terms.iter().filter(|(w, _)| *w == self.var).map(|&(_, c)| c).sum();
                    coefficient = coefficient.wrapping_add(c.wrapping_mul(st[k]).wrapping_mul(size));
                }
                (coefficient == size).then_some(true)
            }
            Expr::Unary { arg, .. } => {
                self.check(*arg)?;
                Some(true)
            }
            Expr::Binary { op, lhs, rhs } => {
                self.check(*lhs)?;
                self.check(*rhs)?;
                let oty = info.ty(*lhs);
                if op.is_comparison() && (oty == Scalar::Bool || scalar_size(oty) != self.lane_bytes) {
                    return None;
                }
                if oty == Scalar::I32 && *op == BinaryOp::Div {
                    return None;
                }
                Some(true)
            }
            Expr::Call { func, args } => {
                for &a in args {
                    self.check(a)?;
                }
                match (info.ty(args[0]), func) {
                    (Scalar::Bool, _) => return None,
                    (Scalar::I32, Func::Min | Func::Max | Func::Abs) => {}
                    (Scalar::I32, _) => return None,
                    (_, Func::Exp | Func::Log | Func::Tanh | Func::Pow | Func::Sigmoid | Func::Softplus)
                        if !LANEWISE_CALLS =>
                    {
                        return None
                    }
                    _ => {}
                }
                Some(true)
            }
            Expr::Select { cond, then, otherwise } => {
                let lanewise = self.check(*cond)?;
                self.check(*then)?;
                self.check(*otherwise)?;
                if lanewise && !(self.lw.speculatable(*then) && self.lw.speculatable(*otherwise)) {
                    return None;
                }
                Some(true)
            }
            Expr::Reduce { body, .. } => {
                self.check(*body)?;
                self.reduces = true;
                Some(true)
            }
            Expr::Float(_) | Expr::Int(_) | Expr::Dim(_) | Expr::Index(_) | Expr::Empty => None,
        }
    }

    /// Lane-independent subexpressions evaluated unconditionally for every entry (not
    /// under a branch or inside a reduction).
    fn hoistable(&self, e: Handle<Expr>, out: &mut Vec<Handle<Expr>>) {
        let agg = self.lw.cx.agg;
        if !self.varies.get(&e).copied().unwrap_or(false) {
            if !matches!(agg.exprs[e], Expr::Float(_) | Expr::Int(_) | Expr::Dim(_)) {
                out.push(e);
            }
            return;
        }
        match &agg.exprs[e] {
            Expr::Unary { arg, .. } => self.hoistable(*arg, out),
            Expr::Binary { lhs, rhs, .. } => {
                self.hoistable(*lhs, out);
                self.hoistable(*rhs, out);
            }
            Expr::Call { args, .. } => args.iter().for_each(|&a| self.hoistable(a, out)),
            Expr::Select { cond, .. } => self.hoistable(*cond, out),
            _ => {}
        }
    }
}

impl Lowerer<'_, '_> {
    /// How to vectorize `stmt` (its target of value type `ty` in memory), if it can be.
    pub(super) fn vector_plan(&self, stmt: &Stmt, ty: Scalar) -> Option<Plan> {
        let &var = stmt.indices.last()?;
        let lane_bytes = match ty {
            Scalar::F32 | Scalar::I32 => 4,
            Scalar::F64 => 8,
            Scalar::Bool => return None,
        };
        let lanes = 16 / lane_bytes;
        let n = self.cx.info.extent(var);
        if n < lanes {
            return None;
        }
        let mut a = Analysis { lw: self, var, lane_bytes, varies: HashMap::new(), reduces: false };
        a.check(stmt.value)?;
        let mut hoist = Vec::new();
        a.hoistable(stmt.value, &mut hoist);
        let group = if a.reduces { GROUP_REDUCE } else { GROUP };
        Some(Plan { var, lanes, group: group.clamp(1, n / lanes), varies: a.varies, hoist })
    }

    /// The vector loop of `stmt` over its innermost index, at the current values of
    /// the outer ones: whole groups, then one smaller group, then scalar entries.
    pub(super) fn vector_stmt(&mut self, stmt: &Stmt, plan: &Plan, loc: Loc, st: &[i64], size: usize, io: &BodyIo) {
        let Loc::Mem { base, offset } = loc else { return };
        let v = plan.var;
        let n = self.cx.info.extent(v);
        let mut hoisted = HashMap::new();
        for &e in &plan.hoist {
            let x = self.value(e, io);
            hoisted.insert(e, x);
        }
        let per = plan.group * plan.lanes;
        let groups = n / per;
        let mut done = 0;
        if groups > 0 {
            let cx = VCx { plan, hoisted: &hoisted, io, g: plan.group };
            self.strided_loop(groups as u64, per as i64, &mut |s, k| {
                s.env[v.index()] = Some(k);
                s.vector_group(&cx, stmt, base, offset, st, size);
            });
            done = groups * per;
        }
        let rest = (n - done) / plan.lanes;
        if rest > 0 {
            let k = self.iconst(done as i64);
            self.env[v.index()] = Some(k);
            let cx = VCx { plan, hoisted: &hoisted, io, g: rest };
            self.vector_group(&cx, stmt, base, offset, st, size);
            done += rest * plan.lanes;
        }
        let tail = n - done;
        self.counted_loop(tail as u64, &mut |s, k| {
            let at = s.b.ins().iadd_imm_s(k, done as i64);
            s.env[v.index()] = Some(at);
            s.entry(stmt, loc, st, size, io);
        });
    }

    /// `for k in (0..n).map(|i| i * step) { f(k) }`, n ≥ 1.
    fn strided_loop(&mut self, n: u64, step: i64, f: &mut dyn FnMut(&mut Self, Value)) {
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
        let next = self.b.ins().iadd_imm_s(k, step);
        let more = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, next, (n as i64).wrapping_mul(step));
        self.b.ins().brif(more, header, &[BlockArg::Value(next)], exit, &[]);
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
    }

    /// One group: `cx.g` vectors of the value, stored to consecutive entries.
    fn vector_group(&mut self, cx: &VCx<'_>, stmt: &Stmt, base: Value, offset: i64, st: &[i64], size: usize) {
        let ty = self.cx.info.ty(stmt.value);
        let value = self.vexpr(cx, stmt.value);
        let vals = self.vecs(cx, value, ty);
        let terms = self.target_terms(stmt, st, size);
        let (addr, off) = self.address(base, offset, &terms);
        let half = self.half_target(stmt);
        for (j, x) in vals.into_iter().enumerate() {
            let (a, o) = self.offset_by(addr, off, (j * cx.plan.lanes * size) as i64);
            match half {
                // bf16/f16: each lane rounded and stored as the scalar code does.
                Some(dtype) => {
                    for lane in 0..cx.plan.lanes {
                        let v = self.b.ins().extractlane(x, lane as u8);
                        let bits = super::storage::narrow(&mut self.b, dtype, v);
                        let (a, o) = self.offset_by(a, o, (lane * size) as i64);
                        self.b.ins().istore16(flags_rw(), bits, a, o);
                    }
                }
                None => {
                    self.b.ins().store(vector_flags(MemFlagsData::new()), x, a, o);
                }
            }
        }
    }

    fn offset_by(&mut self, addr: Value, off: i32, extra: i64) -> (Value, i32) {
        match i32::try_from((off as i64).wrapping_add(extra)) {
            Ok(o) => (addr, o),
            Err(_) => (self.b.ins().iadd_imm_s(addr, (off as i64).wrapping_add(extra)), 0),
        }
    }

    /// The vector type of lanes of `ty` (masks for bools).
    fn vty(lanes: usize, ty: Scalar) -> Type {
        match (ty, lanes) {
            (Scalar::F32, _) => types::F32X4,
            (Scalar::I32, _) => types::I32X4,
            (Scalar::F64, _) => types::F64X2,
            (Scalar::Bool, 4) => types::I32X4,
            (Scalar::Bool, _) => types::I64X2,
        }
    }

    /// The vectors of a value, splatting a lane-independent one.
    fn vecs(&mut self, cx: &VCx<'_>, v: VVal, ty: Scalar) -> Vec<Value> {
        match v {
            VVal::Vec(x) => x,
            VVal::Uni(u) => {
                let vt = Self::vty(cx.plan.lanes, ty);
                let s = if ty == Scalar::Bool {
                    let m = self.b.ins().bmask(vt.lane_type(), u);
                    self.b.ins().splat(vt, m)
                } else {
                    self.b.ins().splat(vt, u)
                };
                vec![s; cx.g]
            }
        }
    }

    fn vexpr(&mut self, cx: &VCx<'_>, e: Handle<Expr>) -> VVal {
        let (agg, info) = (self.cx.agg, self.cx.info);
        if !cx.plan.varies(e) {
            return VVal::Uni(match cx.hoisted.get(&e) {
                Some(&x) => x,
                None => self.value(e, cx.io),
            });
        }
        let ty = info.ty(e);
        let lanes = cx.plan.lanes;
        let vals = match &agg.exprs[e] {
            Expr::Load { source, indices } => {
                let (loc, shape, size, flags) = self.source_loc(*source, indices, cx.io);
                let vt = Self::vty(lanes, ty);
                match loc {
                    Some(Loc::Mem { base, offset }) => {
                        let (k, terms) = self.access_terms(shape, indices, size);
                        let (addr, off) = self.address(base, offset.wrapping_add(k), &terms);
                        let flags = vector_flags(flags);
                        let half = self.half_source(*source);
                        (0..cx.g)
                            .map(|j| {
                                let (a, o) = self.offset_by(addr, off, (j * lanes * size) as i64);
                                match half {
                                    // Four 16-bit entries zero-extended to 32 bits, widened.
                                    Some(dtype) => {
                                        let raw = self.b.ins().uload16x4(flags, a, o);
                                        super::storage::widen(&mut self.b, dtype, raw)
                                    }
                                    None => self.b.ins().load(vt, flags, a, o),
                                }
                            })
                            .collect()
                    }
                    Some(Loc::Var(var)) => {
                        let x = self.b.use_var(var);
                        return VVal::Uni(x);
                    }
                    Some(Loc::Zero) | None => {
                        let z = self.imm(ty, 0.0);
                        return VVal::Uni(z);
                    }
                }
            }
            Expr::Unary { op, arg } => {
                let aty = info.ty(*arg);
                let a = self.vexpr(cx, *arg);
                let a = self.vecs(cx, a, aty);
                a.into_iter()
                    .map(|x| match (op, aty) {
                        (UnaryOp::Not, _) => self.b.ins().bnot(x),
                        (UnaryOp::Neg, Scalar::F32 | Scalar::F64) => self.b.ins().fneg(x),
                        (UnaryOp::Neg, _) => self.b.ins().ineg(x),
                    })
                    .collect()
            }
            Expr::Binary { op, lhs, rhs } => {
                let oty = info.ty(*lhs);
                let a = self.vexpr(cx, *lhs);
                let b = self.vexpr(cx, *rhs);
                let (a, b) = (self.vecs(cx, a, oty), self.vecs(cx, b, oty));
                a.into_iter().zip(b).map(|(x, y)| self.vbinary(*op, oty, x, y)).collect()
            }
            Expr::Call { func, args } => {
                let aty = info.ty(args[0]);
                let mut vals = Vec::with_capacity(args.len());
                for &a in args {
                    let x = self.vexpr(cx, a);
                    vals.push(self.vecs(cx, x, aty));
                }
                (0..cx.g)
                    .map(|j| {
                        let xs: Vec<Value> = vals.iter().map(|v| v[j]).collect();
                        self.vcall(*func, aty, lanes, &xs)
                    })
                    .collect()
            }
            Expr::Select { cond, then, otherwise } => return self.vselect(cx, *cond, *then, *otherwise, ty),
            Expr::Reduce { op, var, body } => self.vreduce(cx, *op, *var, *body, ty),
            // `vector_plan` admits no other expression that varies along the lanes.
            Expr::Float(_) | Expr::Int(_) | Expr::Dim(_) | Expr::Index(_) | Expr::Empty => {
                unreachable!("not a lane-varying expression")
            }
        };
        VVal::Vec(vals)
    }

    fn vbinary(&mut self, op: BinaryOp, ty: Scalar, a: Value, b: Value) -> Value {
        let float = ty.is_float();
        if op.is_comparison() {
            return if float {
                let cc = match op {
                    BinaryOp::Lt => FloatCC::LessThan,
                    BinaryOp::Le => FloatCC::LessThanOrEqual,
                    BinaryOp::Gt => FloatCC::GreaterThan,
                    BinaryOp::Ge => FloatCC::GreaterThanOrEqual,
                    BinaryOp::Eq => FloatCC::Equal,
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
            _ => unreachable!("i32 division and comparisons are handled elsewhere"),
        }
    }

    /// A host function lane by lane: the very call the scalar code makes per entry.
    fn lanewise(&mut self, m: MathFn, args: &[Value], lanes: usize) -> Value {
        let mut out = args[0];
        for lane in 0..lanes as u8 {
            let xs: Vec<Value> = args.iter().map(|&a| self.b.ins().extractlane(a, lane)).collect();
            let r = self.math_call(m, &xs);
            out = self.b.ins().insertlane(out, r, lane);
        }
        out
    }

    fn vcall(&mut self, func: Func, ty: Scalar, lanes: usize, args: &[Value]) -> Value {
        let a = args[0];
        if ty == Scalar::I32 {
            return match func {
                Func::Min => self.b.ins().smin(a, args[1]),
                Func::Max => self.b.ins().smax(a, args[1]),
                _ => self.b.ins().iabs(a),
            };
        }
        let vt = Self::vty(lanes, ty);
        let f32 = ty == Scalar::F32;
        let pick = |s: MathFn, d: MathFn| if f32 { s } else { d };
        let (exp, log) = (pick(MathFn::ExpF32, MathFn::ExpF64), pick(MathFn::LogF32, MathFn::LogF64));
        let splat = |s: &mut Self, x: f64| {
            let c = s.imm(ty, x);
            s.b.ins().splat(vt, c)
        };
        match func {
            Func::Exp => self.lanewise(exp, &[a], lanes),
            Func::Log => self.lanewise(log, &[a], lanes),
            Func::Tanh => self.lanewise(pick(MathFn::TanhF32, MathFn::TanhF64), &[a], lanes),
            Func::Pow => self.lanewise(pick(MathFn::PowF32, MathFn::PowF64), &[a, args[1]], lanes),
            Func::Sqrt => self.b.ins().sqrt(a),
            Func::Rsqrt => {
                let one = splat(self, 1.0);
                let s = self.b.ins().sqrt(a);
                self.b.ins().fdiv(one, s)
            }
            Func::Sigmoid => {
                let one = splat(self, 1.0);
                let n = self.b.ins().fneg(a);
                let e = self.lanewise(exp, &[n], lanes);
                let d = self.b.ins().fadd(one, e);
                self.b.ins().fdiv(one, d)
            }
            Func::Softplus => {
                // (a > 0 ? a : 0) + log(1 + exp(-|a|)), as the scalar code.
                let zero = splat(self, 0.0);
                let one = splat(self, 1.0);
                let pos = self.b.ins().fcmp(FloatCC::GreaterThan, a, zero);
                let pos = self.mask_as(pos, vt);
                let head = self.b.ins().bitselect(pos, a, zero);
                let m = self.b.ins().fabs(a);
                let m = self.b.ins().fneg(m);
                let e = self.lanewise(exp, &[m], lanes);
                let s = self.b.ins().fadd(one, e);
                let l = self.lanewise(log, &[s], lanes);
                self.b.ins().fadd(head, l)
            }
            Func::Abs => self.b.ins().fabs(a),
            Func::Min => self.b.ins().fmin(a, args[1]),
            Func::Max => self.b.ins().fmax(a, args[1]),
        }
    }

    /// A lane mask as a value of vector type `vt` (same lane width).
    fn mask_as(&mut self, mask: Value, vt: Type) -> Value {
        if self.b.func.dfg.value_type(mask) == vt {
            mask
        } else {
            self.b.ins().bitcast(vt, MemFlagsData::new().with_endianness(Endianness::Little), mask)
        }
    }

    fn vselect(
        &mut self,
        cx: &VCx<'_>,
        cond: Handle<Expr>,
        then: Handle<Expr>,
        otherwise: Handle<Expr>,
        ty: Scalar,
    ) -> VVal {
        let (agg, info) = (self.cx.agg, self.cx.info);
        let vt = Self::vty(cx.plan.lanes, ty);
        if cx.plan.varies(cond) {
            // Both branches are speculatable (`vector_plan`): compute both, pick per lane.
            let m = self.vexpr(cx, cond);
            let m = self.vecs(cx, m, Scalar::Bool);
            let a = self.vexpr(cx, then);
            let a = self.vecs(cx, a, ty);
            let b = self.vexpr(cx, otherwise);
            let b = self.vecs(cx, b, ty);
            let out = (0..cx.g)
                .map(|j| {
                    let mj = self.mask_as(m[j], vt);
                    self.b.ins().bitselect(mj, a[j], b[j])
                })
                .collect();
            return VVal::Vec(out);
        }
        if info.constant[cond.index()] {
            if let Some(k) = index::fold(agg, info, cond) {
                return self.vexpr(cx, if k != 0 { then } else { otherwise });
            }
        }
        // One condition for every lane: only the taken branch runs, as in scalar code.
        let c = match cx.hoisted.get(&cond) {
            Some(&c) => c,
            None => self.value(cond, cx.io),
        };
        let then_block = self.b.create_block();
        let else_block = self.b.create_block();
        let merge = self.b.create_block();
        let results: Vec<Value> = (0..cx.g).map(|_| self.b.append_block_param(merge, vt)).collect();
        self.b.ins().brif(c, then_block, &[], else_block, &[]);
        self.b.seal_block(then_block);
        self.b.seal_block(else_block);
        for (block, branch) in [(then_block, then), (else_block, otherwise)] {
            self.b.switch_to_block(block);
            let x = self.vexpr(cx, branch);
            let x = self.vecs(cx, x, ty);
            let args: Vec<BlockArg> = x.into_iter().map(BlockArg::Value).collect();
            self.b.ins().jump(merge, &args);
        }
        self.b.seal_block(merge);
        self.b.switch_to_block(merge);
        VVal::Vec(results)
    }

    /// A reduction over another index variable: one accumulator per lane, each the
    /// sequential left fold of its entry from the exact identity.
    fn vreduce(
        &mut self,
        cx: &VCx<'_>,
        op: ReduceOp,
        var: Handle<IndexVar>,
        body: Handle<Expr>,
        ty: Scalar,
    ) -> Vec<Value> {
        let n = self.cx.info.extent(var) as u64;
        let vt = Self::vty(cx.plan.lanes, ty);
        let init = reduce::init(op, ty);
        if n <= 1 {
            let zero = self.iconst(0);
            self.env[var.index()] = Some(zero);
            if n == 1 {
                let x = self.vexpr(cx, body);
                return self.vecs(cx, x, ty);
            }
            let i = self.init_value(clif_type(ty), init);
            let s = self.b.ins().splat(vt, i);
            return vec![s; cx.g];
        }
        let i = self.init_value(clif_type(ty), init);
        let init = self.b.ins().splat(vt, i);
        let header = self.b.create_block();
        let exit = self.b.create_block();
        let k = self.b.append_block_param(header, types::I64);
        let accs: Vec<Value> = (0..cx.g).map(|_| self.b.append_block_param(header, vt)).collect();
        let results: Vec<Value> = (0..cx.g).map(|_| self.b.append_block_param(exit, vt)).collect();
        let zero = self.iconst(0);
        let mut args = vec![BlockArg::Value(zero)];
        args.extend((0..cx.g).map(|_| BlockArg::Value(init)));
        self.b.ins().jump(header, &args);
        self.b.switch_to_block(header);
        self.env[var.index()] = Some(k);
        let x = self.vexpr(cx, body);
        let x = self.vecs(cx, x, ty);
        let next: Vec<Value> = accs
            .iter()
            .zip(x)
            .map(|(&acc, v)| match (op, ty) {
                (ReduceOp::Sum, Scalar::I32) => self.b.ins().iadd(acc, v),
                (ReduceOp::Prod, Scalar::I32) => self.b.ins().imul(acc, v),
                (ReduceOp::Max, Scalar::I32) => self.b.ins().smax(acc, v),
                (ReduceOp::Min, Scalar::I32) => self.b.ins().smin(acc, v),
                (ReduceOp::Sum, _) => self.b.ins().fadd(acc, v),
                (ReduceOp::Prod, _) => self.b.ins().fmul(acc, v),
                (ReduceOp::Max, _) => self.b.ins().fmax(acc, v),
                (ReduceOp::Min, _) => self.b.ins().fmin(acc, v),
            })
            .collect();
        let kn = self.b.ins().iadd_imm_s(k, 1);
        let more = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThan, kn, n as i64);
        let mut again = vec![BlockArg::Value(kn)];
        again.extend(next.iter().map(|&v| BlockArg::Value(v)));
        let out: Vec<BlockArg> = next.iter().map(|&v| BlockArg::Value(v)).collect();
        self.b.ins().brif(more, header, &again, exit, &out);
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
        results
    }
}

/// Vector accesses are aligned only to their lanes: never claim 16-byte alignment
/// (Cranelift would fold such a load into an SSE operand that requires it).
fn vector_flags(scalar: MemFlagsData) -> MemFlagsData {
    let mut f = MemFlagsData::new().with_notrap();
    if scalar.readonly() {
        f = f.with_readonly();
    }
    if scalar.can_move() {
        f = f.with_can_move();
    }
    f
}
