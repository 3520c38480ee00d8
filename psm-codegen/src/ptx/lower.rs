//! Bodies → PTX: statements as row-major loop nests, expressions as virtual
//! registers, in the interpreter's order of evaluation (psm-ir `interp`), as the CPU
//! backend lowers them (clif/lower.rs): integer expressions of indices and dims exact
//! in 64 bits (the shared `index` module), reductions as loops whose accumulator
//! starts at the exact identity of the operation (-0.0 for a float sum, so that
//! `identity ∘ e0 = e0` bit for bit), `if`/`select` as branches that evaluate only the
//! taken side unless both sides are speculatable (`selp`).

use std::collections::BTreeSet;

use psm_ir::arena::Handle;
use psm_ir::ir::{
    Aggregator, BinaryOp, Body, BodyKind, Dtype, Expr, Func, IndexVar, ReduceOp, Scalar, Side, Source, Stmt, Target, UnaryOp,
};
use psm_ir::valid::Info;

use super::emit::{immediate, suffix, Class, Emitter, Reg};
use super::math::{self, MathFn};
use crate::index::{self, Folds};
use crate::layout::{dtype_size, scalar_size, strides, Layout, ScratchPlan};
use crate::reduce::{self, Init, Step};

/// What lowering needs to know about one validated aggregator.
pub(crate) struct Ctx<'a> {
    pub agg: &'a Aggregator,
    pub info: &'a Info,
    pub layout: Layout,
    /// Where each body's `let` tensors of rank ≥ 1 live in the kernel's `.local` array.
    pub plan: ScratchPlan,
    pub positions: Vec<usize>,
    /// The target's compute capability (`PtxOptions::arch`).
    pub arch: u32,
}

impl<'a> Ctx<'a> {
    pub fn new(agg: &'a Aggregator, info: &'a Info, arch: u32) -> Ctx<'a> {
        let layout = Layout::new(agg, info);
        let plan = ScratchPlan::new(agg, info, &layout);
        Ctx { agg, info, layout, plan, positions: crate::layout::positions(agg), arch }
    }
}

/// The state space of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    /// Params, inputs and outputs.
    Global,
    /// Element buffers (global or `.local`) and `let` tensors.
    Generic,
    /// Addresses in the shared window (the look-back kernel's staged rows).
    Shared,
}

impl Space {
    pub fn qualifier(self) -> &'static str {
        match self {
            Space::Global => ".global",
            Space::Generic => "",
            Space::Shared => ".shared",
        }
    }
}

/// Where an element field, a `let` or an output lives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loc {
    /// In memory at `base + offset`, row-major.
    Mem { base: Reg, offset: i64, space: Space },
    /// A rank-0 value in a register.
    Reg(Reg),
    /// Reads as zeros (the exclusive readout's state at step 0 without an identity).
    Zero,
}

/// One element operand or result: a location per field.
#[derive(Debug, Clone)]
pub(crate) struct ElemView(pub Vec<Loc>);

/// What a body reads and writes.
pub(crate) struct BodyIo {
    /// Global base of each param the body reads, by position.
    pub params: Vec<Option<Reg>>,
    /// Global row pointer at the body's step of each input the body reads.
    pub inputs: Vec<Option<Reg>>,
    pub left: Option<ElemView>,
    pub right: Option<ElemView>,
    pub state: Option<ElemView>,
    /// The element a lift, combine or identity writes.
    pub out: Option<ElemView>,
    /// Global row pointer of each output at the readout's step.
    pub outputs: Vec<Option<Reg>>,
    /// The state space of the input and output row pointers (`Global`, or `Shared` for
    /// rows staged in shared memory).
    pub rows_space: Space,
    /// `empty(p)`.
    pub empty: bool,
    /// Generic base of the kernel's `.local` array, where `let` tensors live (present
    /// whenever a body has `let` tensors of rank ≥ 1).
    pub scratch: Option<Reg>,
}

pub(crate) struct Lowerer<'a> {
    pub cx: &'a Ctx<'a>,
    pub e: Emitter,
    /// Current value (b64) of each index variable in scope.
    env: Vec<Option<Reg>>,
    locals: Vec<Option<Loc>>,
    folds: Folds,
    /// The math device functions called.
    pub math: &'a mut BTreeSet<MathFn>,
    /// In a per-entry kernel: the coordinates (b64) of the thread's entry, which the
    /// index variables of every statement writing an element field or an output take
    /// instead of looping.
    pub entry: Option<Vec<Reg>>,
    /// In a block-cooperative kernel (`block`): the threads of the block split the
    /// entries of every statement that writes memory, and every statement ends at a
    /// barrier.
    pub split: Option<Split>,
    /// In a block scan whose element is split across a few blocks per item
    /// (`block::Partition`): the block's part, to which each split statement whose
    /// target has a part axis is restricted.
    pub part: Option<Part>,
}

/// A block's part of a [`Partition`](super::block::Partition): the first coordinate
/// (b64) of its range of each part axis.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub first: Reg,
    pub partition: super::block::Partition,
}

/// Entries of a split statement a thread computes at a time (`split_nest`).
const SPLIT_UNROLL: usize = 4;

/// Terms of a float reduction evaluated at a time, when they divide its extent.
const FOLD_UNROLL: usize = 4;

/// The thread's index in its block and the block's size (b64), by which a
/// block-cooperative kernel splits a statement's entries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Split {
    pub tid: Reg,
    pub ntid: Reg,
}

impl<'a> Lowerer<'a> {
    pub fn new(cx: &'a Ctx<'a>, math: &'a mut BTreeSet<MathFn>) -> Lowerer<'a> {
        Lowerer {
            cx,
            e: Emitter::new(),
            env: vec![None; cx.agg.index_vars.len()],
            locals: vec![None; cx.agg.locals.len()],
            folds: Folds::new(cx.agg),
            math,
            entry: None,
            split: None,
            part: None,
        }
    }

    // ------------------------------------------------------------ small helpers

    pub fn u64_const(&mut self, v: i64) -> Reg {
        let r = self.e.reg(Class::B64);
        self.e.ins(format!("mov.u64 {r}, {v}"));
        r
    }

    /// A constant of a value type, from the interpreter's f64 representation.
    pub fn imm(&mut self, ty: Scalar, x: f64) -> Reg {
        let r = self.e.reg(Class::of(ty));
        let text = format!("mov.{} {r}, {}", mov_type(ty), immediate(ty, x));
        if ty.is_float() {
            self.e.ins_c(text, format_float(x, ty));
        } else {
            self.e.ins(text);
        }
        r
    }

    /// `dst = src` of one class.
    pub fn mov(&mut self, dst: Reg, src: Reg) {
        let t = match dst.class {
            Class::Pred => "pred",
            Class::B16 => "b16",
            Class::B32 => "b32",
            Class::B64 => "b64",
            Class::F32 => "f32",
            Class::F64 => "f64",
        };
        self.e.ins(format!("mov.{t} {dst}, {src}"));
    }

    /// `(a / d, a % d)` (b64) for a constant `d > 0` and `0 ≤ a < bound`, in the cheapest
    /// exact form: a shift and a mask for a power of two, 32-bit division below 2^32
    /// (which ptxas turns into a multiplication by the reciprocal), else 64-bit
    /// division (a software routine on the GPU, tens of instructions).
    pub fn divmod_const(&mut self, a: Reg, d: i64, bound: i64) -> (Reg, Reg) {
        let (q, r) = (self.e.reg(Class::B64), self.e.reg(Class::B64));
        if d > 0 && d & (d - 1) == 0 {
            self.e.ins(format!("shr.u64 {q}, {a}, {}", d.trailing_zeros()));
            self.e.ins(format!("and.b64 {r}, {a}, {}", d - 1));
        } else if u32::try_from(bound).is_ok() {
            let (a32, q32, r32) = (self.e.reg(Class::B32), self.e.reg(Class::B32), self.e.reg(Class::B32));
            self.e.ins(format!("cvt.u32.u64 {a32}, {a}"));
            self.e.ins(format!("div.u32 {q32}, {a32}, {d}"));
            self.e.ins(format!("rem.u32 {r32}, {a32}, {d}"));
            self.e.ins(format!("cvt.u64.u32 {q}, {q32}"));
            self.e.ins(format!("cvt.u64.u32 {r}, {r32}"));
        } else {
            self.e.ins(format!("div.u64 {q}, {a}, {d}"));
            self.e.ins(format!("rem.u64 {r}, {a}, {d}"));
        }
        (q, r)
    }

    /// `for k in 0..n { f(k) }`, `k` named after `what`; `f(0)` alone for n = 1.
    pub fn counted_loop(&mut self, n: u64, what: &str, f: &mut dyn FnMut(&mut Self, Reg)) {
        if n == 0 {
            return;
        }
        if n == 1 {
            let zero = self.u64_const(0);
            f(self, zero);
            return;
        }
        let k = self.u64_const(0);
        let head = self.e.label(&format!("loop_{what}"));
        self.e.place(&head);
        f(self, k);
        self.e.ins(format!("add.s64 {k}, {k}, 1"));
        let p = self.e.reg(Class::Pred);
        self.e.ins(format!("setp.lt.u64 {p}, {k}, {n}"));
        self.e.ins(format!("@{p} bra {head}"));
    }

    /// Loops over `vars` (outermost first), binding each, then runs `f`.
    fn nest(&mut self, vars: &[Handle<IndexVar>], f: &mut dyn FnMut(&mut Self)) {
        match vars.split_first() {
            None => f(self),
            Some((&v, rest)) => {
                let n = self.cx.info.extent(v) as u64;
                let name = self.cx.agg.index_vars[v].name.clone();
                self.counted_loop(n, &name, &mut |s, k| {
                    s.env[v.index()] = Some(k);
                    s.nest(rest, f);
                });
            }
        }
    }

    /// `base + Σ coeff·value` as a register and an immediate byte offset.
    fn address(&mut self, base: Reg, offset: i64, terms: &[(Reg, i64)]) -> (Reg, i64) {
        let mut addr = base;
        for &(v, c) in terms {
            if c == 0 {
                continue;
            }
            let next = self.e.reg(Class::B64);
            if c == 1 {
                self.e.ins(format!("add.s64 {next}, {addr}, {v}"));
            } else {
                self.e.ins(format!("mad.lo.s64 {next}, {v}, {c}, {addr}"));
            }
            addr = next;
        }
        if i32::try_from(offset).is_ok() {
            (addr, offset)
        } else {
            let next = self.e.reg(Class::B64);
            self.e.ins(format!("add.s64 {next}, {addr}, {offset}"));
            (next, 0)
        }
    }

    /// Byte-offset terms of an access `[indices]` into a tensor of `shape` with
    /// entries of `size` bytes: (constant bytes, (b64 value, byte coefficient)...).
    fn access_terms(&mut self, shape: &[usize], indices: &[Handle<Expr>], size: usize) -> (i64, Vec<(Reg, i64)>) {
        let (form, generic) = index::access_form(self.cx.agg, self.cx.info, shape, indices, size);
        let generic: Vec<(Reg, i64)> = generic.iter().map(|&(i, scale)| (self.int_value(i), scale)).collect();
        let mut terms: Vec<(Reg, i64)> = form.terms.iter().map(|&(v, c)| (self.index_var(v), c)).collect();
        terms.extend(generic);
        (form.constant, terms)
    }

    fn index_var(&mut self, v: Handle<IndexVar>) -> Reg {
        match self.env[v.index()] {
            Some(x) => x,
            // Not bound here: only in code that validation proved unreachable.
            None => self.u64_const(0),
        }
    }

    /// `ld` of a value type at `addr + off`.
    pub fn load_at(&mut self, ty: Scalar, space: Space, addr: Reg, off: i64) -> Reg {
        let q = space.qualifier();
        if ty == Scalar::Bool {
            let b = self.e.reg(Class::B16);
            self.e.ins(format!("ld{q}.u8 {b}, [{addr}+{off}]"));
            let p = self.e.reg(Class::Pred);
            self.e.ins(format!("setp.ne.u16 {p}, {b}, 0"));
            return p;
        }
        let r = self.e.reg(Class::of(ty));
        self.e.ins(format!("ld{q}.{} {r}, [{addr}+{off}]", suffix(ty)));
        r
    }

    /// `st` of a value type at `addr + off` (bools as one byte, 0 or 1).
    pub fn store_at(&mut self, ty: Scalar, space: Space, addr: Reg, off: i64, v: Reg) {
        let q = space.qualifier();
        if ty == Scalar::Bool {
            let b = self.e.reg(Class::B16);
            self.e.ins(format!("selp.u16 {b}, 1, 0, {v}"));
            self.e.ins(format!("st{q}.u8 [{addr}+{off}], {b}"));
            return;
        }
        self.e.ins(format!("st{q}.{} [{addr}+{off}], {v}", suffix(ty)));
    }

    /// `ld.b16` of a bf16/f16 entry at `addr + off`, widened to f32 (exact).
    fn load_half(&mut self, dtype: Dtype, space: Space, addr: Reg, off: i64) -> Reg {
        let q = space.qualifier();
        let b = self.e.reg(Class::B16);
        self.e.ins(format!("ld{q}.b16 {b}, [{addr}+{off}]"));
        let r = self.e.reg(Class::F32);
        self.e.ins(format!("cvt.f32.{} {r}, {b}", dtype.name()));
        r
    }

    /// The f32 `v` rounded to nearest-even bf16/f16 and `st.b16` at `addr + off`.
    fn store_half(&mut self, dtype: Dtype, space: Space, addr: Reg, off: i64, v: Reg) {
        let q = space.qualifier();
        let b = self.e.reg(Class::B16);
        self.e.ins(format!("cvt.rn.{}.f32 {b}, {v}", dtype.name()));
        self.e.ins(format!("st{q}.b16 [{addr}+{off}], {b}"));
    }

    // ------------------------------------------------------------ bodies

    /// Lowers one body at the current position.
    pub fn body(&mut self, body: &Body, io: &BodyIo) {
        let info = self.cx.info;
        for stmt in &body.stmts {
            if let Target::Local(l) = stmt.target {
                let ty = info.local_types[l.index()];
                self.locals[l.index()] = Some(match (self.cx.plan.local_offsets[l.index()], io.scratch) {
                    (Some(off), Some(base)) if !info.local_shapes[l.index()].is_empty() => {
                        Loc::Mem { base, offset: off as i64, space: Space::Generic }
                    }
                    _ => Loc::Reg(self.e.reg(Class::of(ty))),
                });
            }
        }
        for stmt in &body.stmts {
            self.e.comment(format!("{}: {}", body.kind.name(), psm_ir::print::stmt(self.cx.agg, Some(info), stmt)));
            self.stmt(stmt, body.kind, io);
        }
    }

    fn stmt(&mut self, stmt: &Stmt, kind: BodyKind, io: &BodyIo) {
        let (agg, info) = (self.cx.agg, self.cx.info);
        let (loc, shape, size, ty, dtype): (Loc, &[usize], usize, Scalar, Option<Dtype>) = match stmt.target {
            Target::Tensor(t) => {
                let pos = self.cx.positions[t.index()];
                let loc = if kind == BodyKind::Readout {
                    match io.outputs.get(pos).copied().flatten() {
                        Some(base) => Loc::Mem { base, offset: 0, space: io.rows_space },
                        None => return,
                    }
                } else {
                    match io.out.as_ref().and_then(|o| o.0.get(pos)) {
                        Some(&f) => f,
                        None => return,
                    }
                };
                let dtype = agg.tensors[t].dtype;
                (loc, info.shape(t), dtype_size(dtype), dtype.scalar(), Some(dtype))
            }
            Target::Local(l) => match self.locals[l.index()] {
                Some(loc) => {
                    let ty = info.local_types[l.index()];
                    (loc, &info.local_shapes[l.index()], scalar_size(ty), ty, None)
                }
                None => return,
            },
        };
        let st = strides(shape);
        let value = |s: &mut Self| s.value(stmt.value, io);
        let store = |s: &mut Self, v: Reg| match loc {
            Loc::Reg(r) => s.mov(r, v),
            Loc::Mem { base, offset, space } => {
                let terms: Vec<(Reg, i64)> =
                    stmt.indices.iter().zip(&st).map(|(&iv, &stride)| (s.index_var(iv), stride.wrapping_mul(size as i64))).collect();
                let (addr, off) = s.address(base, offset, &terms);
                match dtype {
                    Some(d) if d.is_half() => s.store_half(d, space, addr, off, v),
                    _ => s.store_at(ty, space, addr, off, v),
                }
            }
            Loc::Zero => {}
        };
        let mut run = |s: &mut Self| {
            let v = value(s);
            store(s, v);
        };
        match (&self.entry, self.split, stmt.target) {
            (Some(coords), _, Target::Tensor(_)) => {
                for (&v, &c) in stmt.indices.iter().zip(coords) {
                    self.env[v.index()] = Some(c);
                }
                run(self);
            }
            // A value in a register: every thread of the block computes its own copy.
            (_, Some(split), _) => {
                if matches!(loc, Loc::Mem { .. }) {
                    let axis = self.part.as_ref().and_then(|p| p.partition.axis(stmt.target));
                    self.split_nest(&stmt.indices, split, axis, &value, &store);
                } else {
                    self.nest(&stmt.indices, &mut run);
                }
                // The next statement may read what this one wrote, or overwrite what it read.
                self.e.ins("bar.sync 0");
            }
            _ => self.nest(&stmt.indices, &mut run),
        }
    }

    /// The entries of `vars`' row-major space, entry k by thread `k mod ntid`, each
    /// with the variables bound to k's coordinates: [`SPLIT_UNROLL`] entries of a
    /// thread at a time while that many remain — their `value`s first, so that their
    /// loads are in flight together, then their `store`s — then one at a time. With a
    /// part `axis`, the space is the block's part: that variable ranges over the part's
    /// width, offset by its first coordinate.
    fn split_nest(
        &mut self,
        vars: &[Handle<IndexVar>],
        split: Split,
        axis: Option<usize>,
        value: &dyn Fn(&mut Self) -> Reg,
        store: &dyn Fn(&mut Self, Reg),
    ) {
        let mut extents: Vec<i64> = vars.iter().map(|&v| self.cx.info.extent(v) as i64).collect();
        let part = axis.zip(self.part.as_ref()).map(|(a, p)| (a, p.first));
        if let Some((a, _)) = part {
            extents[a] = self.part.as_ref().map_or(extents[a], |p| p.partition.width as i64);
        }
        let total: i64 = extents.iter().product();
        // Binds the variables to the coordinates of entry `k`; returns them.
        let bind = |s: &mut Self, k: Reg| -> Vec<Reg> {
            let mut rest = k;
            for (n, &v) in vars.iter().enumerate() {
                let inner: i64 = extents[n + 1..].iter().product();
                let coordinate = if n + 1 == vars.len() {
                    rest
                } else {
                    // `rest` < the product of the extents from n on (k < total at n = 0).
                    let (q, r) = s.divmod_const(rest, inner, extents[n..].iter().product());
                    rest = r;
                    q
                };
                let coordinate = match part {
                    Some((a, first)) if a == n => {
                        let c = s.e.reg(Class::B64);
                        s.e.ins_c(format!("add.s64 {c}, {first}, {coordinate}"), "in the block's part");
                        c
                    }
                    _ => coordinate,
                };
                s.env[v.index()] = Some(coordinate);
            }
            vars.iter().map(|v| s.index_var(*v)).collect()
        };
        let gather = |s: &mut Self, k: Reg| (bind(s, k), value(s));
        let scatter = |s: &mut Self, (coordinates, v): (Vec<Reg>, Reg)| {
            for (&var, c) in vars.iter().zip(coordinates) {
                s.env[var.index()] = Some(c);
            }
            store(s, v);
        };
        let single = |s: &mut Self, k: Reg| {
            bind(s, k);
            let v = value(s);
            store(s, v);
        };
        self.unrolled(split, total, SPLIT_UNROLL, ["entries_unrolled", "entry", "entries_done"], gather, scatter, single);
    }

    /// A loop of the block's threads over `k = tid, tid + ntid, … < total`, `unroll` of a
    /// thread's entries at a time while that many remain — `gather(k)` for each, then
    /// `scatter` of each result in the same order, so that their loads are in flight
    /// together — then one at a time by `single(k)`. `labels`: the unrolled loop's, the
    /// single loop's and the end's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn unrolled<T>(
        &mut self,
        split: Split,
        total: i64,
        unroll: usize,
        labels: [&str; 3],
        mut gather: impl FnMut(&mut Self, Reg) -> T,
        mut scatter: impl FnMut(&mut Self, T),
        single: impl FnOnce(&mut Self, Reg),
    ) {
        let [wide, head, done] = labels.map(|name| self.e.label(name));
        let (k, last, p) = (self.e.reg(Class::B64), self.e.reg(Class::B64), self.e.reg(Class::Pred));
        self.e.ins_c(format!("mov.u64 {k}, {}", split.tid), "the thread's first entry");
        self.e.place(&wide);
        self.e.ins(format!("mad.lo.s64 {last}, {}, {}, {k}", split.ntid, unroll - 1));
        self.e.ins(format!("setp.ge.u64 {p}, {last}, {total}"));
        self.e.ins(format!("@{p} bra {head}"));
        let mut gathered = Vec::with_capacity(unroll);
        for u in 0..unroll {
            let at = if u == 0 {
                k
            } else {
                let at = self.e.reg(Class::B64);
                self.e.ins(format!("mad.lo.s64 {at}, {}, {u}, {k}", split.ntid));
                at
            };
            gathered.push(gather(self, at));
        }
        for g in gathered {
            scatter(self, g);
        }
        self.e.ins(format!("mad.lo.s64 {k}, {}, {unroll}, {k}", split.ntid));
        self.e.ins(format!("bra.uni {wide}"));
        self.e.place(&head);
        self.e.ins(format!("setp.ge.u64 {p}, {k}, {total}"));
        self.e.ins(format!("@{p} bra {done}"));
        single(self, k);
        self.e.ins(format!("add.s64 {k}, {k}, {}", split.ntid));
        self.e.ins(format!("bra.uni {head}"));
        self.e.place(&done);
    }

    // ------------------------------------------------------------ integers

    /// The exact i64 value (b64) of an integer or boolean expression of index
    /// variables and dims (booleans as 0/1).
    fn int_value(&mut self, e: Handle<Expr>) -> Reg {
        let (agg, info) = (self.cx.agg, self.cx.info);
        if let Some(k) = index::fold(agg, info, e) {
            return self.u64_const(k);
        }
        if let Some(form) = index::affine(agg, info, e) {
            let terms: Vec<(Reg, i64)> = form.terms.iter().map(|&(v, c)| (self.index_var(v), c)).collect();
            // The first term itself (an index variable reads as its register), the rest
            // multiplied and added onto it, the constant last.
            let Some((&(v, c), rest)) = terms.split_first() else { return self.u64_const(form.constant) };
            let first = if c == 1 {
                v
            } else {
                let t = self.e.reg(Class::B64);
                self.e.ins(format!("mul.lo.s64 {t}, {v}, {c}"));
                t
            };
            let (sum, _) = self.address(first, 0, rest);
            if form.constant == 0 {
                return sum;
            }
            let r = self.e.reg(Class::B64);
            self.e.ins(format!("add.s64 {r}, {sum}, {}", form.constant));
            return r;
        }
        let r = self.e.reg(Class::B64);
        match &agg.exprs[e] {
            Expr::Index(v) => return self.index_var(*v),
            Expr::Unary { op: UnaryOp::Neg, arg } => {
                let a = self.int_value(*arg);
                self.e.ins(format!("neg.s64 {r}, {a}"));
            }
            Expr::Binary { op: op @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div), lhs, rhs } => {
                let (a, b) = (self.int_value(*lhs), self.int_value(*rhs));
                match op {
                    BinaryOp::Add => self.e.ins(format!("add.s64 {r}, {a}, {b}")),
                    BinaryOp::Sub => self.e.ins(format!("sub.s64 {r}, {a}, {b}")),
                    BinaryOp::Mul => self.e.ins(format!("mul.lo.s64 {r}, {a}, {b}")),
                    _ => return self.checked_div("s64", Class::B64, a, b, i64::MIN),
                }
            }
            Expr::Unary { op: UnaryOp::Not, .. } | Expr::Binary { .. } => {
                let c = self.cond_value(e);
                self.e.ins(format!("selp.u64 {r}, 1, 0, {c}"));
            }
            Expr::Select { cond, then, otherwise } => {
                let c = self.cond_value(*cond);
                let (a, b) = (self.int_value(*then), self.int_value(*otherwise));
                self.e.ins(format!("selp.b64 {r}, {a}, {b}, {c}"));
            }
            Expr::Call { func, args } => {
                let a = self.int_value(args[0]);
                match (func, args.get(1)) {
                    (Func::Min, Some(&y)) => {
                        let b = self.int_value(y);
                        self.int_min_max(false, "64", a, b, r);
                    }
                    (Func::Max, Some(&y)) => {
                        let b = self.int_value(y);
                        self.int_min_max(true, "64", a, b, r);
                    }
                    _ => self.wrapping_abs("64", a, r),
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
                let acc = self.u64_const(init);
                let name = agg.index_vars[var].name.clone();
                self.counted_loop(n, &name, &mut |s, k| {
                    s.env[var.index()] = Some(k);
                    let v = s.int_value(body);
                    match op {
                        ReduceOp::Sum => s.e.ins(format!("add.s64 {acc}, {acc}, {v}")),
                        ReduceOp::Prod => s.e.ins(format!("mul.lo.s64 {acc}, {acc}, {v}")),
                        ReduceOp::Max | ReduceOp::Min => {
                            let next = s.e.reg(Class::B64);
                            s.int_min_max(op == ReduceOp::Max, "64", acc, v, next);
                            s.mov(acc, next);
                        }
                    }
                });
                return acc;
            }
            // Not integer expressions: validation never marks them constant.
            Expr::Float(_) | Expr::Load { .. } | Expr::Empty | Expr::Int(_) | Expr::Dim(_) => {
                self.e.ins(format!("mov.u64 {r}, 0"));
            }
        }
        r
    }

    /// A predicate for a constant boolean expression.
    fn cond_value(&mut self, e: Handle<Expr>) -> Reg {
        let (agg, info) = (self.cx.agg, self.cx.info);
        if let Some(k) = index::fold(agg, info, e) {
            return self.imm(Scalar::Bool, k as f64);
        }
        let p = self.e.reg(Class::Pred);
        match &agg.exprs[e] {
            Expr::Binary { op, lhs, rhs } if op.is_comparison() => {
                let (a, b) = (self.int_value(*lhs), self.int_value(*rhs));
                self.e.ins(format!("setp.{}.s64 {p}, {a}, {b}", int_cmp(*op)));
            }
            Expr::Binary { op: op @ (BinaryOp::And | BinaryOp::Or), lhs, rhs } => {
                let (a, b) = (self.cond_value(*lhs), self.cond_value(*rhs));
                let ins = if *op == BinaryOp::And { "and" } else { "or" };
                self.e.ins(format!("{ins}.pred {p}, {a}, {b}"));
            }
            Expr::Unary { op: UnaryOp::Not, arg } => {
                let a = self.cond_value(*arg);
                self.e.ins(format!("not.pred {p}, {a}"));
            }
            _ => {
                let v = self.int_value(e);
                self.e.ins(format!("setp.ne.s64 {p}, {v}, 0"));
            }
        }
        p
    }

    /// `a / b`, or 0 where the interpreter's `checked_div` fails (b = 0, MIN / -1);
    /// PTX leaves both unspecified.
    fn checked_div(&mut self, ty: &str, class: Class, a: Reg, b: Reg, min: i64) -> Reg {
        let (zero, a_min, b_m1, bad) =
            (self.e.reg(Class::Pred), self.e.reg(Class::Pred), self.e.reg(Class::Pred), self.e.reg(Class::Pred));
        self.e.ins(format!("setp.eq.{ty} {zero}, {b}, 0"));
        self.e.ins(format!("setp.eq.{ty} {a_min}, {a}, {min}"));
        self.e.ins(format!("setp.eq.{ty} {b_m1}, {b}, -1"));
        self.e.ins(format!("and.pred {a_min}, {a_min}, {b_m1}"));
        self.e.ins_c(format!("or.pred {bad}, {zero}, {a_min}"), "b = 0 or MIN / -1: the quotient is 0");
        let (safe, q, r) = (self.e.reg(class), self.e.reg(class), self.e.reg(class));
        let bits = if class == Class::B64 { "b64" } else { "b32" };
        self.e.ins(format!("selp.{bits} {safe}, 1, {b}, {bad}"));
        self.e.ins(format!("div.{ty} {q}, {a}, {safe}"));
        self.e.ins(format!("selp.{bits} {r}, 0, {q}, {bad}"));
        r
    }

    /// A constant expression (`info.constant`) as a value of its type, converted from
    /// the exact integer as the interpreter converts it: `(v as f64) as f32`,
    /// `v as f64`, `(v as f64) as i64 as i32`, `v != 0`.
    fn constant(&mut self, e: Handle<Expr>, ty: Scalar) -> Reg {
        let (agg, info) = (self.cx.agg, self.cx.info);
        if let Some(k) = index::fold(agg, info, e) {
            let mut d = psm_ir::interp::FloatDomain::new(psm_ir::interp::Precision::Declared);
            return self.imm(ty, psm_ir::interp::Domain::constant(&mut d, k as f64, ty));
        }
        if ty == Scalar::Bool {
            return self.cond_value(e);
        }
        let v = self.int_value(e);
        // Within ±2^53 the detour through f64 is exact and can be skipped.
        let exact = index::range(agg, info, e).is_some_and(|(lo, hi)| lo.abs() <= 1 << 53 && hi.abs() <= 1 << 53);
        let r = self.e.reg(Class::of(ty));
        match ty {
            Scalar::F64 => self.e.ins(format!("cvt.rn.f64.s64 {r}, {v}")),
            Scalar::F32 if exact => self.e.ins(format!("cvt.rn.f32.s64 {r}, {v}")),
            Scalar::F32 => {
                let d = self.e.reg(Class::F64);
                self.e.ins(format!("cvt.rn.f64.s64 {d}, {v}"));
                self.e.ins(format!("cvt.rn.f32.f64 {r}, {d}"));
            }
            Scalar::I32 if exact => self.e.ins(format!("cvt.u32.u64 {r}, {v}")),
            _ => {
                let d = self.e.reg(Class::F64);
                let s = self.e.reg(Class::B64);
                self.e.ins(format!("cvt.rn.f64.s64 {d}, {v}"));
                self.e.ins_c(format!("cvt.rzi.s64.f64 {s}, {d}"), "saturating, as Rust's `as i64`");
                self.e.ins(format!("cvt.u32.u64 {r}, {s}"));
            }
        }
        r
    }

    // ------------------------------------------------------------ values

    /// The value of an expression, in a register of `Class::of(info.types[e])`.
    pub fn value(&mut self, e: Handle<Expr>, io: &BodyIo) -> Reg {
        let (agg, info) = (self.cx.agg, self.cx.info);
        let ty = info.ty(e);
        if let Some(x) = self.folds.get(agg, info, e) {
            return self.imm(ty, x);
        }
        if info.constant[e.index()] {
            return self.constant(e, ty);
        }
        match &agg.exprs[e] {
            Expr::Float(x) => self.imm(ty, *x),
            Expr::Int(_) | Expr::Dim(_) | Expr::Index(_) => self.constant(e, ty),
            Expr::Empty => self.imm(Scalar::Bool, io.empty as i32 as f64),
            Expr::Load { source, indices } => self.load(*source, indices, io, ty),
            Expr::Unary { op, arg } => {
                let a = self.value(*arg, io);
                let r = self.e.reg(Class::of(ty));
                match (op, info.ty(*arg)) {
                    (UnaryOp::Not, _) => self.e.ins(format!("not.pred {r}, {a}")),
                    (UnaryOp::Neg, t) => self.e.ins(format!("neg.{} {r}, {a}", suffix(t))),
                }
                r
            }
            Expr::Binary { op, lhs, rhs } => {
                let a = self.value(*lhs, io);
                let b = self.value(*rhs, io);
                self.binary(*op, info.ty(*lhs), a, b)
            }
            Expr::Call { func, args } => {
                let vals: Vec<Reg> = args.iter().map(|&a| self.value(a, io)).collect();
                self.call(*func, info.ty(args[0]), &vals)
            }
            Expr::Select { cond, then, otherwise } => self.select(*cond, *then, *otherwise, ty, io),
            Expr::Reduce { op, var, body } => {
                let (op, var, body) = (*op, *var, *body);
                let init = match reduce::init(op, ty) {
                    Init::Int(v) => v as f64,
                    Init::Float(x) => x,
                };
                let step = reduce::step(op);
                let n = info.extent(var) as u64;
                let acc = self.e.reg(Class::of(ty));
                if n != 1 {
                    let init = self.imm(ty, init);
                    self.mov(acc, init);
                }
                let name = agg.index_vars[var].name.clone();
                self.e.comment(format!("{}({name}) as a left fold", op.name()));
                let fold = |s: &mut Self, v: Reg| {
                    let next = match step {
                        Step::Bin(op) => s.binary(op, ty, acc, v),
                        Step::Call(f) => s.call(f, ty, &[acc, v]),
                    };
                    s.mov(acc, next);
                };
                if n > FOLD_UNROLL as u64 && n.is_multiple_of(FOLD_UNROLL as u64) {
                    // FOLD_UNROLL terms at a time: their values first (their loads in
                    // flight together), then folded in order, the same left fold.
                    self.counted_loop(n / FOLD_UNROLL as u64, &name, &mut |s, group| {
                        let first = s.e.reg(Class::B64);
                        s.e.ins(format!("mul.lo.s64 {first}, {group}, {FOLD_UNROLL}"));
                        let terms: Vec<Reg> = (0..FOLD_UNROLL)
                            .map(|u| {
                                let k = if u == 0 {
                                    first
                                } else {
                                    let k = s.e.reg(Class::B64);
                                    s.e.ins(format!("add.s64 {k}, {first}, {u}"));
                                    k
                                };
                                s.env[var.index()] = Some(k);
                                s.value(body, io)
                            })
                            .collect();
                        for v in terms {
                            fold(s, v);
                        }
                    });
                    return acc;
                }
                self.counted_loop(n, &name, &mut |s, k| {
                    s.env[var.index()] = Some(k);
                    let v = s.value(body, io);
                    if n == 1 {
                        s.mov(acc, v);
                        return;
                    }
                    fold(s, v);
                });
                acc
            }
        }
    }

    fn binary(&mut self, op: BinaryOp, ty: Scalar, a: Reg, b: Reg) -> Reg {
        let t = suffix(ty);
        if op.is_comparison() && ty == Scalar::Bool {
            // Booleans compare as 0 < 1; only == and != occur in practice.
            let p = self.e.reg(Class::Pred);
            let (na, nb) = (self.e.reg(Class::Pred), self.e.reg(Class::Pred));
            self.e.ins(format!("not.pred {na}, {a}"));
            self.e.ins(format!("not.pred {nb}, {b}"));
            match op {
                BinaryOp::Eq => self.e.ins(format!("xor.pred {p}, {a}, {nb}")),
                BinaryOp::Ne => self.e.ins(format!("xor.pred {p}, {a}, {b}")),
                BinaryOp::Lt => self.e.ins(format!("and.pred {p}, {na}, {b}")),
                BinaryOp::Gt => self.e.ins(format!("and.pred {p}, {a}, {nb}")),
                BinaryOp::Le => self.e.ins(format!("or.pred {p}, {na}, {b}")),
                _ => self.e.ins(format!("or.pred {p}, {a}, {nb}")),
            }
            return p;
        }
        if op.is_comparison() {
            let p = self.e.reg(Class::Pred);
            let cmp = if ty.is_float() { float_cmp(op) } else { int_cmp(op) };
            self.e.ins(format!("setp.{cmp}.{t} {p}, {a}, {b}"));
            return p;
        }
        if op.is_logic() {
            let p = self.e.reg(Class::Pred);
            let ins = if op == BinaryOp::And { "and" } else { "or" };
            self.e.ins(format!("{ins}.pred {p}, {a}, {b}"));
            return p;
        }
        let r = self.e.reg(Class::of(ty));
        match (op, ty.is_float()) {
            (BinaryOp::Add, true) => self.e.ins(format!("add.rn.{t} {r}, {a}, {b}")),
            (BinaryOp::Sub, true) => self.e.ins(format!("sub.rn.{t} {r}, {a}, {b}")),
            (BinaryOp::Mul, true) => self.e.ins(format!("mul.rn.{t} {r}, {a}, {b}")),
            (_, true) => self.e.ins(format!("div.rn.{t} {r}, {a}, {b}")),
            (BinaryOp::Add, false) => self.e.ins(format!("add.s32 {r}, {a}, {b}")),
            (BinaryOp::Sub, false) => self.e.ins(format!("sub.s32 {r}, {a}, {b}")),
            (BinaryOp::Mul, false) => self.e.ins(format!("mul.lo.s32 {r}, {a}, {b}")),
            (_, false) => return self.checked_div("s32", Class::B32, a, b, i32::MIN as i64),
        }
        r
    }

    fn call(&mut self, func: Func, ty: Scalar, args: &[Reg]) -> Reg {
        let a = args[0];
        let t = suffix(ty);
        let r = self.e.reg(Class::of(ty));
        if !ty.is_float() {
            match func {
                Func::Min if args.len() > 1 => self.int_min_max(false, "32", a, args[1], r),
                Func::Max if args.len() > 1 => self.int_min_max(true, "32", a, args[1], r),
                _ => self.wrapping_abs("32", a, r),
            }
            return r;
        }
        match func {
            Func::Exp => return self.math_call(MathFn::Exp, ty, args),
            Func::Log => return self.math_call(MathFn::Log, ty, args),
            Func::Tanh => return self.math_call(MathFn::Tanh, ty, args),
            Func::Pow => return self.math_call(MathFn::Pow, ty, args),
            Func::Sqrt => self.e.ins(format!("sqrt.rn.{t} {r}, {a}")),
            Func::Rsqrt => {
                // 1 / sqrt(a), both correctly rounded (not rsqrt.approx).
                let one = self.imm(ty, 1.0);
                let s = self.e.reg(Class::of(ty));
                self.e.ins(format!("sqrt.rn.{t} {s}, {a}"));
                self.e.ins(format!("div.rn.{t} {r}, {one}, {s}"));
            }
            Func::Sigmoid => {
                // 1 / (1 + exp(-a))
                let one = self.imm(ty, 1.0);
                let n = self.e.reg(Class::of(ty));
                self.e.ins(format!("neg.{t} {n}, {a}"));
                let ex = self.math_call(MathFn::Exp, ty, &[n]);
                let d = self.e.reg(Class::of(ty));
                self.e.ins(format!("add.rn.{t} {d}, {one}, {ex}"));
                self.e.ins(format!("div.rn.{t} {r}, {one}, {d}"));
            }
            Func::Softplus => {
                // (a > 0 ? a : 0) + log(1 + exp(-|a|))
                let zero = self.imm(ty, 0.0);
                let one = self.imm(ty, 1.0);
                let pos = self.e.reg(Class::Pred);
                self.e.ins(format!("setp.gt.{t} {pos}, {a}, {zero}"));
                let head = self.e.reg(Class::of(ty));
                self.e.ins(format!("selp.{t} {head}, {a}, {zero}, {pos}"));
                let m = self.e.reg(Class::of(ty));
                self.e.ins(format!("abs.{t} {m}, {a}"));
                self.e.ins(format!("neg.{t} {m}, {m}"));
                let ex = self.math_call(MathFn::Exp, ty, &[m]);
                let s = self.e.reg(Class::of(ty));
                self.e.ins(format!("add.rn.{t} {s}, {one}, {ex}"));
                let l = self.math_call(MathFn::Log, ty, &[s]);
                self.e.ins(format!("add.rn.{t} {r}, {head}, {l}"));
            }
            Func::Abs => self.e.ins(format!("abs.{t} {r}, {a}")),
            Func::Min | Func::Max => self.min_max(func == Func::Max, ty, a, args[1], r),
        }
        r
    }

    /// `r = max(a, b)` (or min) of signed integers of `bits` = "32" or "64", as a compare
    /// and a select: ptxas 13.0 (sm_90) fuses nested `max.s32`/`min.s32` into one
    /// three-operand VIMNMX3 and drops the negation of a negated operand
    /// (`max(max(a, -b), c)` computed as `max(a, b, c)`).
    fn int_min_max(&mut self, max: bool, bits: &str, a: Reg, b: Reg, r: Reg) {
        let p = self.e.reg(Class::Pred);
        self.e.ins(format!("setp.{}.s{bits} {p}, {a}, {b}", if max { "gt" } else { "lt" }));
        self.e.ins(format!("selp.b{bits} {r}, {a}, {b}, {p}"));
    }

    /// `r = wrapping_abs(a)` for `bits` = "32" or "64": `(a ^ s) - s` with `s = a >> (bits - 1)`
    /// (arithmetic), so MIN stays MIN. Not `max(a, -a)`: ptxas 13.0 fuses that with a
    /// following `max` into one three-operand VIMNMX3 for sm_90 and drops the negation.
    fn wrapping_abs(&mut self, bits: &str, a: Reg, r: Reg) {
        let class = if bits == "64" { Class::B64 } else { Class::B32 };
        let (sign, flipped) = (self.e.reg(class), self.e.reg(class));
        let shift = if bits == "64" { 63 } else { 31 };
        self.e.ins(format!("shr.s{bits} {sign}, {a}, {shift}"));
        self.e.ins(format!("xor.b{bits} {flipped}, {a}, {sign}"));
        self.e.ins_c(format!("sub.s{bits} {r}, {flipped}, {sign}"), "wrapping abs");
    }

    /// IEEE 754-2019 maximum/minimum into `r`: NaN if either operand is NaN, else the
    /// larger (smaller) one, +0 over -0 (-0 over +0). In f32 from sm_80 on, PTX's
    /// `max.NaN` / `min.NaN` (one FMNMX.NAN on sm_90; ptx_gpu
    /// `f32_min_max_special_values` checks the signed zeros and NaNs); elsewhere (f64 has
    /// no `.NaN` form) of two equal values the AND (OR) of their bits, which picks +0
    /// over -0 (-0 over +0) and is the value itself otherwise.
    fn min_max(&mut self, max: bool, ty: Scalar, a: Reg, b: Reg, r: Reg) {
        let t = suffix(ty);
        let name = if max { "max" } else { "min" };
        if ty == Scalar::F32 && self.cx.arch >= 80 {
            self.e.ins_c(format!("{name}.NaN.f32 {r}, {a}, {b}"), "IEEE 754-2019");
            return;
        }
        let (bits, int) = if ty == Scalar::F32 { ("b32", Class::B32) } else { ("b64", Class::B64) };
        let (pick, eq, nan) = (self.e.reg(Class::Pred), self.e.reg(Class::Pred), self.e.reg(Class::Pred));
        let (ia, ib, ic) = (self.e.reg(int), self.e.reg(int), self.e.reg(int));
        let tie = self.e.reg(Class::of(ty));
        self.e.comment(format!("{name}imum({a}, {b}), IEEE 754-2019"));
        self.e.ins(format!("setp.{}.{t} {pick}, {a}, {b}", if max { "gt" } else { "lt" }));
        self.e.ins(format!("selp.{t} {r}, {a}, {b}, {pick}"));
        self.e.ins(format!("mov.{bits} {ia}, {a}"));
        self.e.ins(format!("mov.{bits} {ib}, {b}"));
        self.e.ins(format!("{}.{bits} {ic}, {ia}, {ib}", if max { "and" } else { "or" }));
        self.e.ins(format!("mov.{bits} {tie}, {ic}"));
        self.e.ins(format!("setp.eq.{t} {eq}, {a}, {b}"));
        self.e.ins(format!("selp.{t} {r}, {tie}, {r}, {eq}"));
        self.e.ins(format!("setp.nan.{t} {nan}, {a}, {b}"));
        let qnan = self.imm(ty, f64::NAN);
        self.e.ins(format!("selp.{t} {r}, {qnan}, {r}, {nan}"));
    }

    /// A call of a math device function, or f32 `exp` and `log` inline; the other f32
    /// functions run the f64 one on the exactly widened argument and round its result
    /// once.
    fn math_call(&mut self, m: MathFn, ty: Scalar, args: &[Reg]) -> Reg {
        match (m, ty) {
            (MathFn::Exp, Scalar::F32) => return math::exp_f32(&mut self.e, args[0]),
            (MathFn::Log, Scalar::F32) => return math::log_f32(&mut self.e, args[0]),
            _ => {}
        }
        self.math.insert(m);
        let wide: Vec<Reg> = if ty == Scalar::F32 {
            args.iter()
                .map(|&a| {
                    let d = self.e.reg(Class::F64);
                    self.e.ins(format!("cvt.f64.f32 {d}, {a}"));
                    d
                })
                .collect()
        } else {
            args.to_vec()
        };
        let res = self.e.reg(Class::F64);
        let list: Vec<String> = wide.iter().map(|r| r.to_string()).collect();
        self.e.ins(format!("call.uni ({res}), {}, ({})", m.name(), list.join(", ")));
        if ty == Scalar::F32 {
            let r = self.e.reg(Class::F32);
            self.e.ins(format!("cvt.rn.f32.f64 {r}, {res}"));
            r
        } else {
            res
        }
    }

    fn select(&mut self, cond: Handle<Expr>, then: Handle<Expr>, otherwise: Handle<Expr>, ty: Scalar, io: &BodyIo) -> Reg {
        let (agg, info) = (self.cx.agg, self.cx.info);
        if info.constant[cond.index()] {
            if let Some(k) = index::fold(agg, info, cond) {
                return self.value(if k != 0 { then } else { otherwise }, io);
            }
        }
        let c = self.value(cond, io);
        let r = self.e.reg(Class::of(ty));
        let sel = match ty {
            Scalar::Bool => None,
            t => Some(suffix(t)),
        };
        if index::speculatable(agg, info, then, index::Calls::Inline) && index::speculatable(agg, info, otherwise, index::Calls::Inline) {
            let a = self.value(then, io);
            let b = self.value(otherwise, io);
            match sel {
                Some(t) => self.e.ins(format!("selp.{t} {r}, {a}, {b}, {c}")),
                None => {
                    // r = c ? a : b on predicates.
                    let (x, y) = (self.e.reg(Class::Pred), self.e.reg(Class::Pred));
                    self.e.ins(format!("and.pred {x}, {c}, {a}"));
                    self.e.ins(format!("not.pred {y}, {c}"));
                    self.e.ins(format!("and.pred {y}, {y}, {b}"));
                    self.e.ins(format!("or.pred {r}, {x}, {y}"));
                }
            }
            return r;
        }
        let (else_l, end_l) = (self.e.label("else"), self.e.label("endif"));
        self.e.ins(format!("@!{c} bra {else_l}"));
        let a = self.value(then, io);
        self.mov(r, a);
        self.e.ins(format!("bra.uni {end_l}"));
        self.e.place(&else_l);
        let b = self.value(otherwise, io);
        self.mov(r, b);
        self.e.place(&end_l);
        r
    }

    fn load(&mut self, source: Source, indices: &[Handle<Expr>], io: &BodyIo, ty: Scalar) -> Reg {
        let (agg, info) = (self.cx.agg, self.cx.info);
        let mut half = None;
        let (loc, shape, size): (Option<Loc>, &[usize], usize) = match source {
            Source::Input(t) | Source::Param(t) => {
                let pos = self.cx.positions[t.index()];
                let bases = if matches!(source, Source::Input(_)) { &io.inputs } else { &io.params };
                let space = if matches!(source, Source::Input(_)) { io.rows_space } else { Space::Global };
                let loc = bases.get(pos).copied().flatten().map(|base| Loc::Mem { base, offset: 0, space });
                half = Some(agg.tensors[t].dtype).filter(|d| d.is_half());
                (loc, info.shape(t), dtype_size(agg.tensors[t].dtype))
            }
            Source::Element(side, t) => {
                let pos = self.cx.positions[t.index()];
                let view = match side {
                    Side::Left => &io.left,
                    Side::Right => &io.right,
                    Side::State => &io.state,
                };
                (view.as_ref().and_then(|v| v.0.get(pos)).copied(), info.shape(t), dtype_size(agg.tensors[t].dtype))
            }
            Source::Local(l) => (
                self.locals[l.index()],
                &info.local_shapes[l.index()][..],
                scalar_size(info.local_types[l.index()]),
            ),
        };
        match loc {
            Some(Loc::Reg(r)) => r,
            Some(Loc::Mem { base, offset, space }) => {
                let (k, terms) = self.access_terms(shape, indices, size);
                let (addr, off) = self.address(base, offset.wrapping_add(k), &terms);
                match half {
                    Some(d) => self.load_half(d, space, addr, off),
                    None => self.load_at(ty, space, addr, off),
                }
            }
            // Zeros, or (never for a validated body) an operand the body does not have.
            Some(Loc::Zero) | None => self.imm(ty, 0.0),
        }
    }
}

fn mov_type(s: Scalar) -> &'static str {
    match s {
        Scalar::F32 => "f32",
        Scalar::F64 => "f64",
        Scalar::I32 => "s32",
        Scalar::Bool => "pred",
    }
}

/// A float constant for a comment: the value as the interpreter holds it.
fn format_float(x: f64, ty: Scalar) -> String {
    if ty == Scalar::F32 {
        format!("{:?}", x as f32)
    } else {
        format!("{x:?}")
    }
}

fn int_cmp(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Lt => "lt",
        BinaryOp::Le => "le",
        BinaryOp::Gt => "gt",
        BinaryOp::Ge => "ge",
        BinaryOp::Eq => "eq",
        _ => "ne",
    }
}

/// Ordered comparisons (false with a NaN operand), except `!=`, which is true for NaN
/// as in the interpreter (`neu`: unordered or not equal).
fn float_cmp(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Lt => "lt",
        BinaryOp::Le => "le",
        BinaryOp::Gt => "gt",
        BinaryOp::Ge => "ge",
        BinaryOp::Eq => "eq",
        _ => "neu",
    }
}
