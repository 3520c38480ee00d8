//! The five functions of the CPU ABI (see the crate documentation): signatures and
//! the code around the bodies — loading base pointers, computing a step's rows — and
//! the fused recurrent loop `scan`.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, BlockArg, Function, InstBuilder, Signature, UserFuncName, Value};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use psm_ir::ir::{Body, ReadoutKind, Role, Source};
use target_lexicon::PointerWidth;

use super::index;
use super::layout::{align8, dtype_size};
use super::lower::{flags_ro, flags_rw, BodyIo, Ctx, ElemView, EmptyFlag, Imports, Loc, Lowerer};
use super::{HAS_STATE, REVERSE, WRITE_OUTPUTS};

/// One function of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FnKind {
    Lift,
    Combine,
    Readout,
    Identity,
    Scan,
}

impl FnKind {
    pub fn name(self) -> &'static str {
        match self {
            FnKind::Lift => "lift",
            FnKind::Combine => "combine",
            FnKind::Readout => "readout",
            FnKind::Identity => "identity",
            FnKind::Scan => "scan",
        }
    }

    /// The functions of an aggregator, in the order lift, combine, readout, identity
    /// (when declared), scan.
    pub fn all(has_identity: bool) -> Vec<FnKind> {
        let mut v = vec![FnKind::Lift, FnKind::Combine, FnKind::Readout];
        if has_identity {
            v.push(FnKind::Identity);
        }
        v.push(FnKind::Scan);
        v
    }

    pub fn signature(self, call_conv: CallConv) -> Signature {
        use types::{I32, I64};
        let params: &[_] = match self {
            // params, inputs, step, out, scratch
            FnKind::Lift => &[I64, I64, I64, I64, I64],
            // params, l, r, out, scratch
            FnKind::Combine => &[I64, I64, I64, I64, I64],
            // params, state, inputs, step, outputs, empty, scratch
            FnKind::Readout => &[I64, I64, I64, I64, I64, I32, I64],
            // params, out, scratch
            FnKind::Identity => &[I64, I64, I64],
            // params, inputs, outputs, t0, t1, state, flags, scratch
            FnKind::Scan => &[I64, I64, I64, I64, I64, I64, I32, I64],
        };
        let mut sig = Signature::new(call_conv);
        sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        if self == FnKind::Scan {
            sig.returns.push(AbiParam::new(I32));
        }
        sig
    }
}

/// Builds one function of the aggregator (not yet compiled).
pub(crate) fn build(
    cx: &Ctx<'_>,
    kind: FnKind,
    name: UserFuncName,
    call_conv: CallConv,
    imports: &mut dyn Imports,
    fctx: &mut FunctionBuilderContext,
) -> Function {
    let mut func = Function::with_name_signature(name, kind.signature(call_conv));
    let mut b = FunctionBuilder::new(&mut func, fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let args = b.block_params(entry).to_vec();
    let mut l = Lowerer::new(cx, b, imports);
    match kind {
        FnKind::Lift => l.lift_fn(&args),
        FnKind::Combine => l.combine_fn(&args),
        FnKind::Readout => l.readout_fn(&args),
        FnKind::Identity => l.identity_fn(&args),
        FnKind::Scan => l.scan_fn(&args),
    }
    l.b.finalize(TargetFrontendConfig {
        default_call_conv: call_conv,
        pointer_width: PointerWidth::U64,
        page_size_align_log2: 12,
    });
    func
}

/// Whether a body reads `empty(p)`.
fn uses_empty(cx: &Ctx<'_>, body: &Body) -> bool {
    fn walk(agg: &psm_ir::ir::Aggregator, e: psm_ir::arena::Handle<psm_ir::ir::Expr>) -> bool {
        let mut found = matches!(agg.exprs[e], psm_ir::ir::Expr::Empty);
        index::children(&agg.exprs[e], |c| found = found || walk(agg, c));
        found
    }
    body.stmts.iter().any(|s| walk(cx.agg, s.value))
}

/// Bases of the used entries only.
fn only(bases: &[Option<Value>], used: &[bool]) -> Vec<Option<Value>> {
    bases.iter().zip(used).map(|(b, &u)| if u { *b } else { None }).collect()
}

/// Which tensors of `role` (by position) the bodies read.
fn used(cx: &Ctx<'_>, bodies: &[&Body], role: Role) -> Vec<bool> {
    let agg = cx.agg;
    let mut used = vec![false; agg.tensors_of(role).count()];
    for body in bodies {
        for stmt in &body.stmts {
            index::sources(agg, stmt.value, &mut |s| {
                if let Source::Param(t) | Source::Input(t) = s {
                    if agg.tensors[t].role == role {
                        used[cx.positions[t.index()]] = true;
                    }
                }
            });
        }
    }
    used
}

impl Lowerer<'_, '_> {
    /// Loads `array[k]` for every used k.
    fn load_ptrs(&mut self, array: Value, used: &[bool]) -> Vec<Option<Value>> {
        let mut out = Vec::with_capacity(used.len());
        for (k, &u) in used.iter().enumerate() {
            out.push(u.then(|| self.b.ins().load(types::I64, flags_ro(false), array, (8 * k) as i32)));
        }
        out
    }

    /// Row pointers of step `step`: `base + step · len · size`.
    fn rows(&mut self, bases: &[Option<Value>], role: Role, step: Value) -> Vec<Option<Value>> {
        let (agg, info) = (self.cx.agg, self.cx.info);
        let tensors: Vec<_> = agg.tensors_of(role).collect();
        let mut out = Vec::with_capacity(bases.len());
        for (k, base) in bases.iter().enumerate() {
            out.push(base.map(|base| {
                let t = tensors[k];
                let bytes = (info.len(t) as i64).wrapping_mul(dtype_size(agg.tensors[t].dtype) as i64);
                let off = self.b.ins().imul_imm_s(step, bytes);
                self.b.ins().iadd(base, off)
            }));
        }
        out
    }

    /// The element at `base`, rank-0 fields in `vars` where given.
    fn view(&self, base: Value, vars: &[Option<Variable>]) -> ElemView {
        ElemView(
            self.cx
                .layout
                .offsets
                .iter()
                .enumerate()
                .map(|(k, &off)| match vars.get(k).copied().flatten() {
                    Some(v) => Loc::Var(v),
                    None => Loc::Mem { base, offset: off as i64 },
                })
                .collect(),
        )
    }

    fn io(&self, scratch: Value) -> BodyIo {
        BodyIo {
            params: Vec::new(),
            inputs: Vec::new(),
            left: None,
            right: None,
            state: None,
            out: None,
            outputs: Vec::new(),
            empty: EmptyFlag::Const(false),
            scratch,
        }
    }

    fn lift_fn(&mut self, args: &[Value]) {
        let &[params, inputs, step, out, scratch] = args else { unreachable!("lift signature") };
        let cx = self.cx;
        let lift = &cx.agg.lift;
        let mut io = self.io(scratch);
        io.params = self.load_ptrs(params, &used(cx, &[lift], Role::Param));
        let bases = self.load_ptrs(inputs, &used(cx, &[lift], Role::Input));
        io.inputs = self.rows(&bases, Role::Input, step);
        io.out = Some(self.view(out, &[]));
        self.body(lift, &io);
        self.b.ins().return_(&[]);
    }

    fn combine_fn(&mut self, args: &[Value]) {
        let &[params, l, r, out, scratch] = args else { unreachable!("combine signature") };
        let cx = self.cx;
        let combine = &cx.agg.combine;
        let mut io = self.io(scratch);
        io.params = self.load_ptrs(params, &used(cx, &[combine], Role::Param));
        io.left = Some(self.view(l, &[]));
        io.right = Some(self.view(r, &[]));
        io.out = Some(self.view(out, &[]));
        self.body(combine, &io);
        self.b.ins().return_(&[]);
    }

    fn readout_fn(&mut self, args: &[Value]) {
        let &[params, state, inputs, step, outputs, empty, scratch] = args else { unreachable!("readout signature") };
        let cx = self.cx;
        let readout = &cx.agg.readout;
        let mut io = self.io(scratch);
        io.params = self.load_ptrs(params, &used(cx, &[readout], Role::Param));
        let bases = self.load_ptrs(inputs, &used(cx, &[readout], Role::Input));
        io.inputs = self.rows(&bases, Role::Input, step);
        let all = vec![true; cx.agg.tensors_of(Role::Output).count()];
        let out_bases = self.load_ptrs(outputs, &all);
        io.outputs = self.rows(&out_bases, Role::Output, step);
        io.state = Some(self.view(state, &[]));
        if uses_empty(cx, readout) {
            io.empty = EmptyFlag::Dyn(self.b.ins().icmp_imm_s(IntCC::NotEqual, empty, 0));
        }
        self.body(readout, &io);
        self.b.ins().return_(&[]);
    }

    fn identity_fn(&mut self, args: &[Value]) {
        let &[params, out, scratch] = args else { unreachable!("identity signature") };
        let cx = self.cx;
        if let Some(identity) = &cx.agg.identity {
            let mut io = self.io(scratch);
            io.params = self.load_ptrs(params, &used(cx, &[identity], Role::Param));
            io.out = Some(self.view(out, &[]));
            self.body(identity, &io);
        }
        self.b.ins().return_(&[]);
    }

    /// The readout of step `t` reading `state`, writing the outputs' rows.
    fn scan_readout(&mut self, base: &ScanBase, t: Value, state: ElemView, empty: bool) {
        let cx = self.cx;
        let mut io = self.io(base.scratch);
        io.params = base.params.clone();
        let bases = only(&base.inputs, &used(cx, &[&cx.agg.readout], Role::Input));
        io.inputs = self.rows(&bases, Role::Input, t);
        let all = vec![true; cx.agg.tensors_of(Role::Output).count()];
        let out_bases = self.load_ptrs(base.outputs, &all);
        io.outputs = self.rows(&out_bases, Role::Output, t);
        io.state = Some(state);
        io.empty = EmptyFlag::Const(empty);
        self.body(&cx.agg.readout, &io);
    }

    /// `scan(params, inputs, outputs, t0, t1, state, flags, scratch) -> u32`.
    ///
    /// Three element buffers rotate: the caller's `state` and scratch regions A and B.
    /// `cur` holds the prefix p; each step lifts into `f1`, combines `cur • f1` into
    /// `f2`, reads out, and rotates `(cur, f1, f2) ← (f2, cur, f1)` — no copies. The
    /// first step without a prefix is peeled: p' = e, and an exclusive readout reads
    /// the identity (computed into B) or zeros with `empty`. Rank-0 fields are SSA
    /// variables across iterations (P: the prefix, E: the element, N: the new prefix,
    /// I: the identity), stored to `state` on exit; on exit the other fields are
    /// copied into `state` unless `cur` is `state` already.
    fn scan_fn(&mut self, args: &[Value]) {
        let &[params, inputs, outputs, t0, t1, state, flags, scratch] = args else { unreachable!("scan signature") };
        let cx = self.cx;
        let agg = cx.agg;
        let exclusive = agg.readout_kind == ReadoutKind::Exclusive;
        let identity = if exclusive { agg.identity.as_ref() } else { None };

        // Rank-0 fields become variables.
        let scalar: Vec<bool> = agg.tensors_of(Role::Element).map(|t| cx.info.shape(t).is_empty()).collect();
        let field_types: Vec<_> = cx.layout.dtypes.iter().map(|d| super::lower::clif_type(d.scalar())).collect();
        let declare = |s: &mut Self| -> Vec<Option<Variable>> {
            scalar.iter().zip(&field_types).map(|(&sc, &ty)| sc.then(|| s.b.declare_var(ty))).collect()
        };
        let (pv, ev, nv, iv) = (declare(self), declare(self), declare(self), declare(self));

        // entry: nothing to do for an empty range.
        let has = self.b.ins().band_imm_u(flags, HAS_STATE as i64);
        let has = self.b.ins().icmp_imm_s(IntCC::NotEqual, has, 0);
        let write = self.b.ins().band_imm_u(flags, WRITE_OUTPUTS as i64);
        let write = self.b.ins().icmp_imm_s(IntCC::NotEqual, write, 0);
        let rev = self.b.ins().band_imm_u(flags, REVERSE as i64);
        let rev = self.b.ins().icmp_imm_s(IntCC::NotEqual, rev, 0);
        let more = self.b.ins().icmp(IntCC::UnsignedGreaterThan, t1, t0);
        let go = self.b.create_block();
        let done_empty = self.b.create_block();
        self.b.ins().brif(more, go, &[], done_empty, &[]);
        self.b.seal_block(go);
        self.b.seal_block(done_empty);

        self.b.switch_to_block(done_empty);
        let ret = self.b.ins().uextend(types::I32, has);
        self.b.ins().return_(&[ret]);

        // go: base pointers, buffers, and the first step or the loaded state.
        self.b.switch_to_block(go);
        let n = self.b.ins().isub(t1, t0);
        let last = self.b.ins().iadd_imm_s(t1, -1);
        let mut bodies: Vec<&Body> = vec![&agg.lift, &agg.combine, &agg.readout];
        bodies.extend(identity);
        let base = ScanBase {
            params: self.load_ptrs(params, &used(cx, &bodies, Role::Param)),
            inputs: self.load_ptrs(inputs, &used(cx, &[&agg.lift, &agg.readout], Role::Input)),
            outputs,
            scratch,
        };
        let a = match cx.plan.elements {
            0 => scratch,
            off => self.b.ins().iadd_imm_s(scratch, off as i64),
        };
        let b = self.b.ins().iadd_imm_s(a, cx.layout.size as i64);

        let load_state = self.b.create_block();
        let peel = self.b.create_block();
        let header = self.b.create_block();
        let cur = self.b.append_block_param(header, types::I64);
        let f1 = self.b.append_block_param(header, types::I64);
        let f2 = self.b.append_block_param(header, types::I64);
        let k = self.b.append_block_param(header, types::I64);
        let exit = self.b.create_block();
        let exit_cur = self.b.append_block_param(exit, types::I64);
        self.b.ins().brif(has, load_state, &[], peel, &[]);
        self.b.seal_block(load_state);
        self.b.seal_block(peel);

        // load_state: p = state.
        self.b.switch_to_block(load_state);
        for (k, v) in pv.iter().enumerate() {
            if let Some(v) = *v {
                let (addr, off) = self.offset_addr(state, cx.layout.offsets[k] as i64);
                let x = self.b.ins().load(field_types[k], flags_rw(), addr, off);
                self.b.def_var(v, x);
            }
        }
        let zero = self.iconst(0);
        self.b.ins().jump(header, &[state, a, b, zero].map(BlockArg::Value));

        // peel: the first step with no prefix held: p' = e.
        self.b.switch_to_block(peel);
        let t = self.b.ins().select(rev, last, t0);
        let e = self.view(a, &ev);
        self.scan_lift(&base, t, e);
        let read_first = self.b.create_block();
        let after_first = self.b.create_block();
        self.b.ins().brif(write, read_first, &[], after_first, &[]);
        self.b.seal_block(read_first);
        self.b.switch_to_block(read_first);
        match (agg.readout_kind, identity) {
            (ReadoutKind::Inclusive, _) => {
                let s = self.view(a, &ev);
                self.scan_readout(&base, t, s, false);
            }
            (ReadoutKind::Exclusive, Some(id)) => {
                let mut io = self.io(scratch);
                io.params = base.params.clone();
                io.out = Some(self.view(b, &iv));
                self.body(id, &io);
                let s = self.view(b, &iv);
                self.scan_readout(&base, t, s, false);
            }
            (ReadoutKind::Exclusive, None) => {
                let zeros = ElemView(vec![Loc::Zero; cx.layout.offsets.len()]);
                self.scan_readout(&base, t, zeros, true);
            }
        }
        self.b.ins().jump(after_first, &[]);
        self.b.seal_block(after_first);
        self.b.switch_to_block(after_first);
        self.copy_vars(&ev, &pv);
        let one = self.iconst(1);
        self.b.ins().jump(header, &[a, b, state, one].map(BlockArg::Value));

        // header: one more step?
        self.b.switch_to_block(header);
        let body_block = self.b.create_block();
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, k, n);
        self.b.ins().brif(more, body_block, &[], exit, &[BlockArg::Value(cur)]);
        self.b.seal_block(body_block);

        // body: e = lift(x_t) in f1; p' = combine(cur, e) in f2; readout; rotate.
        self.b.switch_to_block(body_block);
        let back = self.b.ins().isub(last, k);
        let fwd = self.b.ins().iadd(t0, k);
        let t = self.b.ins().select(rev, back, fwd);
        let e = self.view(f1, &ev);
        self.scan_lift(&base, t, e);
        let mut io = self.io(scratch);
        io.params = base.params.clone();
        io.left = Some(self.view(cur, &pv));
        io.right = Some(self.view(f1, &ev));
        io.out = Some(self.view(f2, &nv));
        self.body(&agg.combine, &io);
        let read = self.b.create_block();
        let after = self.b.create_block();
        self.b.ins().brif(write, read, &[], after, &[]);
        self.b.seal_block(read);
        self.b.switch_to_block(read);
        let st = match agg.readout_kind {
            ReadoutKind::Inclusive => self.view(f2, &nv),
            ReadoutKind::Exclusive => self.view(cur, &pv),
        };
        self.scan_readout(&base, t, st, false);
        self.b.ins().jump(after, &[]);
        self.b.seal_block(after);
        self.b.switch_to_block(after);
        self.copy_vars(&nv, &pv);
        let next = self.b.ins().iadd_imm_s(k, 1);
        self.b.ins().jump(header, &[f2, cur, f1, next].map(BlockArg::Value));
        self.b.seal_block(header);

        // exit: the prefix into `state`.
        self.b.seal_block(exit);
        self.b.switch_to_block(exit);
        for (k, v) in pv.iter().enumerate() {
            if let Some(v) = *v {
                let x = self.b.use_var(v);
                let (addr, off) = self.offset_addr(state, cx.layout.offsets[k] as i64);
                self.b.ins().store(flags_rw(), x, addr, off);
            }
        }
        let spans = self.memory_spans(&scalar);
        if !spans.is_empty() {
            let copy = self.b.create_block();
            let finish = self.b.create_block();
            let moved = self.b.ins().icmp(IntCC::NotEqual, exit_cur, state);
            self.b.ins().brif(moved, copy, &[], finish, &[]);
            self.b.seal_block(copy);
            self.b.switch_to_block(copy);
            for (start, len) in spans {
                self.copy_words(exit_cur, state, start, len / 8);
            }
            self.b.ins().jump(finish, &[]);
            self.b.seal_block(finish);
            self.b.switch_to_block(finish);
        }
        let one = self.b.ins().iconst(types::I32, 1);
        self.b.ins().return_(&[one]);
    }

    fn scan_lift(&mut self, base: &ScanBase, t: Value, out: ElemView) {
        let cx = self.cx;
        let mut io = self.io(base.scratch);
        io.params = base.params.clone();
        let bases = only(&base.inputs, &used(cx, &[&cx.agg.lift], Role::Input));
        io.inputs = self.rows(&bases, Role::Input, t);
        io.out = Some(out);
        self.body(&cx.agg.lift, &io);
    }

    fn copy_vars(&mut self, from: &[Option<Variable>], to: &[Option<Variable>]) {
        for (f, t) in from.iter().zip(to) {
            if let (Some(f), Some(t)) = (f, t) {
                let x = self.b.use_var(*f);
                self.b.def_var(*t, x);
            }
        }
    }

    /// Byte ranges (start, length; multiples of 8) of the fields kept in memory,
    /// adjacent ones merged.
    fn memory_spans(&self, scalar: &[bool]) -> Vec<(usize, usize)> {
        let layout = &self.cx.layout;
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for (k, _) in scalar.iter().enumerate().filter(|(_, &s)| !s) {
            let start = layout.offsets[k];
            let len = align8(layout.field_lens[k].saturating_mul(dtype_size(layout.dtypes[k])));
            match spans.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => spans.push((start, len)),
            }
        }
        spans
    }

    /// Copies `words` 8-byte words from `from + start` to `to + start`.
    fn copy_words(&mut self, from: Value, to: Value, start: usize, words: usize) {
        const UNROLL: usize = 8;
        if words <= UNROLL {
            for w in 0..words {
                let off = (start + 8 * w) as i64;
                let (src, so) = self.offset_addr(from, off);
                let x = self.b.ins().load(types::I64, flags_rw(), src, so);
                let (dst, d_o) = self.offset_addr(to, off);
                self.b.ins().store(flags_rw(), x, dst, d_o);
            }
            return;
        }
        let src0 = self.b.ins().iadd_imm_s(from, start as i64);
        let dst0 = self.b.ins().iadd_imm_s(to, start as i64);
        self.counted_loop(words as u64, &mut |s, k| {
            let off = s.b.ins().imul_imm_s(k, 8);
            let src = s.b.ins().iadd(src0, off);
            let dst = s.b.ins().iadd(dst0, off);
            let x = s.b.ins().load(types::I64, flags_rw(), src, 0);
            s.b.ins().store(flags_rw(), x, dst, 0);
        });
    }

    fn offset_addr(&mut self, base: Value, off: i64) -> (Value, i32) {
        match i32::try_from(off) {
            Ok(o) => (base, o),
            Err(_) => (self.b.ins().iadd_imm_s(base, off), 0),
        }
    }
}

/// What every step of the fused loop shares.
struct ScanBase {
    params: Vec<Option<Value>>,
    inputs: Vec<Option<Value>>,
    outputs: Value,
    scratch: Value,
}
