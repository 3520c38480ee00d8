//! The five functions of the CPU ABI (see the crate documentation): signatures and
//! the code around the bodies — loading base pointers, computing a step's rows — and
//! the fused recurrent loop `scan`.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Block, BlockArg, Function, InstBuilder, MemFlagsData, Signature, UserFuncName, Value,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use psm_ir::arena::Handle;
use psm_ir::ir::{Body, Expr, ReadoutKind, Role, Side, Source, Target, Tensor};
use target_lexicon::PointerWidth;

use crate::index;
use crate::layout::{align8, dtype_size};
use super::lower::{flags_ro, flags_rw, BodyIo, Ctx, ElemView, EmptyFlag, Imports, Loc, Lowerer};
use super::{HAS_STATE, NO_STATE_OUT, REVERSE, WRITE_OUTPUTS};

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
        agg.exprs[e].for_each_child(|c| found = found || walk(agg, c));
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
    index::used(cx.agg, &cx.positions, bodies, role)
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

    /// The readout of the step whose rows are `rows`, reading `state`.
    fn scan_readout(&mut self, base: &ScanBase, rows: &Rows, state: ElemView, empty: bool, mask: Option<&[bool]>) {
        let cx = self.cx;
        let mut io = self.io(base.scratch);
        io.params = base.params.clone();
        io.inputs = only(&rows.inputs, &base.readout_inputs);
        io.outputs = rows.outputs.iter().map(|&r| Some(r)).collect();
        io.state = Some(state);
        io.empty = EmptyFlag::Const(empty);
        self.body_masked(&cx.agg.readout, &io, mask);
    }

    /// The lift of the step whose rows are `rows` into `out`, only the statements of
    /// `mask` (all when `None`).
    fn scan_lift(&mut self, base: &ScanBase, rows: &Rows, out: ElemView, mask: Option<&[bool]>) {
        let cx = self.cx;
        let mut io = self.io(base.scratch);
        io.params = base.params.clone();
        io.inputs = only(&rows.inputs, &base.lift_inputs);
        io.out = Some(out);
        self.body_masked(&cx.agg.lift, &io, mask);
    }

    /// `scan(params, inputs, outputs, t0, t1, state, flags, scratch) -> u32`.
    ///
    /// Three element buffers rotate: the caller's `state` and scratch regions A and B.
    /// `cur` holds the prefix p; each step lifts into `f1`, combines `cur • f1` into
    /// `f2`, reads out, and rotates `(cur, f1, f2) ← (f2, cur, f1)` — no copies. Rank-0
    /// fields are SSA variables across iterations (P: the prefix, E: the element, N:
    /// the new prefix, I: the identity) and take no part in the rotation. The rows of
    /// the inputs and outputs are pointers advanced by one row per step (backwards with
    /// `REVERSE`).
    ///
    /// The first step without a prefix is peeled: p' = e, and an exclusive readout
    /// reads the identity (computed into B) or zeros with `empty`. The steps after it
    /// run in one of up to three loops chosen once by the flags, so that no flag is
    /// tested per step: with outputs, without, and — when some prefix fields are never
    /// read (`NO_STATE_OUT` with `WRITE_OUTPUTS`) — with outputs computing only the
    /// prefix fields the readout reads, directly or through the combine. Each loop is a
    /// do-while behind one test (one branch per step).
    ///
    /// Two copies are avoided, bit for bit the same values: in every loop an element
    /// field that the lift copies from an input (`f[..] = x.f[..]`, rank ≥ 1) is read
    /// by the combine straight from the input row (a *view*); in the loops with outputs
    /// and an inclusive readout, a prefix field that the readout copies (`y[..] =
    /// s.f[..]`, rank ≥ 1) is written by the combine straight into y's row and read by
    /// the next step from there (its *home*), and the copy is not run.
    ///
    /// On exit the rank-0 fields are stored to `state` and the other fields copied into
    /// it from where they are (`cur`, or a home: exactly the row's bytes) unless they
    /// are there already; nothing is stored with `NO_STATE_OUT`.
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
        let vars = ScanVars { p: declare(self), e: declare(self), n: declare(self) };
        let iv = declare(self);
        let rotate = scalar.iter().any(|&s| !s);

        // What the loops compute.
        let every = vec![true; scalar.len()];
        let write_plan = LoopPlan::new(cx, &every, true);
        let read_plan = LoopPlan::new(cx, &every, false);
        let live_fields = live_prefix(cx);
        let live = (live_fields != every).then(|| LoopPlan::new(cx, &live_fields, true));
        // Fields some loop keeps in the output rows: where they are on exit is a
        // parameter of `exit`.
        let homed: Vec<bool> = (0..scalar.len())
            .map(|k| write_plan.homes[k].is_some() || live.as_ref().is_some_and(|l| l.homes[k].is_some()))
            .collect();

        // entry: nothing to do for an empty range.
        let flag = |s: &mut Self, bit: u32| {
            let x = s.b.ins().band_imm_u(flags, bit as i64);
            s.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
        };
        let has = flag(self, HAS_STATE);
        let write = flag(self, WRITE_OUTPUTS);
        let rev = flag(self, REVERSE);
        let no_state = flag(self, NO_STATE_OUT);
        let more = self.b.ins().icmp(IntCC::UnsignedGreaterThan, t1, t0);
        let go = self.b.create_block();
        let done_empty = self.b.create_block();
        self.b.ins().brif(more, go, &[], done_empty, &[]);
        self.b.seal_block(go);
        self.b.seal_block(done_empty);

        self.b.switch_to_block(done_empty);
        let ret = self.b.ins().uextend(types::I32, has);
        self.b.ins().return_(&[ret]);

        // go: base pointers, the first step's rows and the step between rows.
        self.b.switch_to_block(go);
        let n = self.b.ins().isub(t1, t0);
        let last = self.b.ins().iadd_imm_s(t1, -1);
        let first = self.b.ins().select(rev, last, t0);
        let mut bodies: Vec<&Body> = vec![&agg.lift, &agg.combine, &agg.readout];
        bodies.extend(identity);
        let lift_inputs = used(cx, &[&agg.lift], Role::Input);
        let readout_inputs = used(cx, &[&agg.readout], Role::Input);
        let any_inputs: Vec<bool> = lift_inputs.iter().zip(&readout_inputs).map(|(a, b)| *a || *b).collect();
        let input_bases = self.load_ptrs(inputs, &any_inputs);
        let base = ScanBase {
            params: self.load_ptrs(params, &used(cx, &bodies, Role::Param)),
            lift_inputs,
            readout_inputs,
            scratch,
        };
        let input_bytes = self.row_bytes(Role::Input);
        let output_bytes = self.row_bytes(Role::Output);
        let rows0 = Rows {
            inputs: self.first_rows(&input_bases, &input_bytes, first),
            outputs: self.first_output_rows(outputs, &output_bytes, first, write),
        };
        let mut steps = Vec::new();
        for &bytes in input_bytes.iter().zip(&any_inputs).filter(|(_, &u)| u).map(|(b, _)| b) {
            steps.push(self.row_step(rev, bytes));
        }
        for &bytes in &output_bytes {
            steps.push(self.row_step(rev, bytes));
        }
        let a = match cx.plan.elements {
            0 => scratch,
            off => self.b.ins().iadd_imm_s(scratch, off as i64),
        };
        let b = self.b.ins().iadd_imm_s(a, cx.layout.size as i64);

        let load_state = self.b.create_block();
        let peel = self.b.create_block();
        let dispatch = self.b.create_block();
        let d_params = self.loop_params(dispatch, &rows0, 0);
        let exit = self.b.create_block();
        let exit_cur = self.b.append_block_param(exit, types::I64);
        let exit_homes: Vec<Option<Value>> =
            homed.iter().map(|&h| h.then(|| self.b.append_block_param(exit, types::I64))).collect();
        self.b.ins().brif(has, load_state, &[], peel, &[]);
        self.b.seal_block(load_state);
        self.b.seal_block(peel);

        // load_state: p = state.
        self.b.switch_to_block(load_state);
        for (k, v) in vars.p.iter().enumerate() {
            if let Some(v) = *v {
                let (addr, off) = self.offset_addr(state, cx.layout.offsets[k] as i64);
                let x = self.b.ins().load(field_types[k], flags_rw(), addr, off);
                self.b.def_var(v, x);
            }
        }
        let zero = self.iconst(0);
        let args = LoopArgs { cur: state, f1: a, f2: b, k: zero, homes: Vec::new(), rows: rows0.clone() };
        self.b.ins().jump(dispatch, &args.block_args());

        // peel: the first step with no prefix held: p' = e.
        self.b.switch_to_block(peel);
        let e = self.view(a, &vars.e);
        self.scan_lift(&base, &rows0, e, None);
        let read_first = self.b.create_block();
        let after_first = self.b.create_block();
        self.b.ins().brif(write, read_first, &[], after_first, &[]);
        self.b.seal_block(read_first);
        self.b.switch_to_block(read_first);
        match (agg.readout_kind, identity) {
            (ReadoutKind::Inclusive, _) => {
                let s = self.view(a, &vars.e);
                self.scan_readout(&base, &rows0, s, false, None);
            }
            (ReadoutKind::Exclusive, Some(id)) => {
                let mut io = self.io(scratch);
                io.params = base.params.clone();
                io.out = Some(self.view(b, &iv));
                self.body(id, &io);
                let s = self.view(b, &iv);
                self.scan_readout(&base, &rows0, s, false, None);
            }
            (ReadoutKind::Exclusive, None) => {
                let zeros = ElemView(vec![Loc::Zero; cx.layout.offsets.len()]);
                self.scan_readout(&base, &rows0, zeros, true, None);
            }
        }
        self.b.ins().jump(after_first, &[]);
        self.b.seal_block(after_first);
        self.b.switch_to_block(after_first);
        self.copy_vars(&vars.e, &vars.p, &every);
        let one = self.iconst(1);
        let rows1 = self.advance(&rows0, &steps);
        let args = LoopArgs { cur: a, f1: b, f2: state, k: one, homes: Vec::new(), rows: rows1 };
        self.b.ins().jump(dispatch, &args.block_args());
        self.b.seal_block(dispatch);

        // dispatch: the loop the flags ask for.
        self.b.switch_to_block(dispatch);
        let write_loop = self.b.create_block();
        let read_loop = self.b.create_block();
        if let Some(live) = &live {
            let live_loop = self.b.create_block();
            let other = self.b.create_block();
            let c = self.b.ins().band(write, no_state);
            self.b.ins().brif(c, live_loop, &[], other, &[]);
            self.b.seal_block(live_loop);
            self.b.seal_block(other);
            self.b.switch_to_block(live_loop);
            self.scan_loop(&base, live, &vars, &d_params, &steps, n, true, rotate, (exit, &homed));
            self.b.switch_to_block(other);
        }
        self.b.ins().brif(write, write_loop, &[], read_loop, &[]);
        self.b.seal_block(write_loop);
        self.b.seal_block(read_loop);
        self.b.switch_to_block(write_loop);
        self.scan_loop(&base, &write_plan, &vars, &d_params, &steps, n, true, rotate, (exit, &homed));
        self.b.switch_to_block(read_loop);
        self.scan_loop(&base, &read_plan, &vars, &d_params, &steps, n, false, rotate, (exit, &homed));

        // exit: the prefix into `state`, unless the caller does not want it.
        self.b.seal_block(exit);
        self.b.switch_to_block(exit);
        let store = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(no_state, done, &[], store, &[]);
        self.b.seal_block(store);
        self.b.switch_to_block(store);
        for (k, v) in vars.p.iter().enumerate() {
            if let Some(v) = *v {
                let x = self.b.use_var(v);
                let (addr, off) = self.offset_addr(state, cx.layout.offsets[k] as i64);
                self.b.ins().store(flags_rw(), x, addr, off);
            }
        }
        // Fields kept in the output rows: exactly their bytes (a row is not padded).
        for (k, home) in exit_homes.iter().enumerate() {
            if let Some(home) = *home {
                let to = self.b.ins().iadd_imm_s(state, cx.layout.offsets[k] as i64);
                let copy = self.b.create_block();
                let next = self.b.create_block();
                let moved = self.b.ins().icmp(IntCC::NotEqual, home, to);
                self.b.ins().brif(moved, copy, &[], next, &[]);
                self.b.seal_block(copy);
                self.b.switch_to_block(copy);
                let bytes = cx.layout.field_lens[k].saturating_mul(dtype_size(cx.layout.dtypes[k]));
                self.copy_bytes(home, to, bytes);
                self.b.ins().jump(next, &[]);
                self.b.seal_block(next);
                self.b.switch_to_block(next);
            }
        }
        let in_buffers: Vec<bool> = scalar.iter().zip(&homed).map(|(&s, &h)| s || h).collect();
        let spans = self.memory_spans(&in_buffers);
        if !spans.is_empty() {
            let copy = self.b.create_block();
            let moved = self.b.ins().icmp(IntCC::NotEqual, exit_cur, state);
            self.b.ins().brif(moved, copy, &[], done, &[]);
            self.b.seal_block(copy);
            self.b.switch_to_block(copy);
            for (start, len) in spans {
                self.copy_words(exit_cur, state, start, len / 8, false);
            }
        }
        self.b.ins().jump(done, &[]);
        self.b.seal_block(done);
        self.b.switch_to_block(done);
        let one = self.b.ins().iconst(types::I32, 1);
        self.b.ins().return_(&[one]);
    }

    /// Block parameters for the loop state: cur, f1, f2, k, the homes and the rows.
    fn loop_params(&mut self, block: Block, rows: &Rows, homes: usize) -> LoopArgs {
        let mut p = || self.b.append_block_param(block, types::I64);
        let (cur, f1, f2, k) = (p(), p(), p(), p());
        let homes = (0..homes).map(|_| p()).collect();
        let mut rows = rows.clone();
        for r in rows.inputs.iter_mut().flatten() {
            *r = self.b.append_block_param(block, types::I64);
        }
        for r in rows.outputs.iter_mut() {
            *r = self.b.append_block_param(block, types::I64);
        }
        LoopArgs { cur, f1, f2, k, homes, rows }
    }

    /// The arguments of `exit`: `cur`, then where each field that some loop keeps in
    /// the output rows is (its home in this loop, else its place in `cur`).
    fn exit_args(&mut self, plan: &LoopPlan, at: &LoopArgs, homed: &[bool]) -> Vec<BlockArg> {
        let mut args = vec![BlockArg::Value(at.cur)];
        let mut homes = at.homes.iter();
        for (k, &h) in homed.iter().enumerate() {
            let here = plan.homes[k].map(|_| *homes.next().expect("one home per homed field"));
            if h {
                let v = match here {
                    Some(v) => v,
                    None => self.b.ins().iadd_imm_s(at.cur, self.cx.layout.offsets[k] as i64),
                };
                args.push(BlockArg::Value(v));
            }
        }
        args
    }

    /// One loop over the steps after the first: starts at the current block, whose
    /// state is `from` (its homes empty); leaves through `exit`.
    #[allow(clippy::too_many_arguments)]
    fn scan_loop(
        &mut self,
        base: &ScanBase,
        plan: &LoopPlan,
        vars: &ScanVars,
        from: &LoopArgs,
        steps: &[Value],
        n: Value,
        write: bool,
        rotate: bool,
        (exit, homed): (Block, &[bool]),
    ) {
        let cx = self.cx;
        let agg = cx.agg;
        let home_fields: Vec<(usize, usize)> =
            plan.homes.iter().enumerate().filter_map(|(k, h)| h.map(|o| (k, o))).collect();
        // The homed fields of the prefix start where the rest of it is.
        let mut from = LoopArgs { homes: Vec::new(), rows: from.rows.clone(), ..*from };
        for &(k, _) in &home_fields {
            let at = self.b.ins().iadd_imm_s(from.cur, cx.layout.offsets[k] as i64);
            from.homes.push(at);
        }
        // A do-while loop behind one test: one branch per step.
        let body = self.b.create_block();
        let at = self.loop_params(body, &from.rows, home_fields.len());
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, from.k, n);
        let out = self.exit_args(plan, &from, homed);
        self.b.ins().brif(more, body, &from.block_args(), exit, &out);

        // body: e = lift(x_t) in f1; p' = combine(cur, e) in f2; readout; rotate.
        self.b.switch_to_block(body);
        let mut e = self.view(at.f1, &vars.e);
        for (k, view) in plan.views.iter().enumerate() {
            if let Some(row) = view.and_then(|i| at.rows.inputs.get(i).copied().flatten()) {
                e.0[k] = Loc::Mem { base: row, offset: 0 };
            }
        }
        self.scan_lift(base, &at.rows, e.clone(), Some(&plan.lift));
        let mut left = self.view(at.cur, &vars.p);
        let mut next = self.view(at.f2, &vars.n);
        for (j, &(k, o)) in home_fields.iter().enumerate() {
            left.0[k] = Loc::Mem { base: at.homes[j], offset: 0 };
            next.0[k] = Loc::Mem { base: at.rows.outputs[o], offset: 0 };
        }
        let mut io = self.io(base.scratch);
        io.params = base.params.clone();
        io.left = Some(left.clone());
        io.right = Some(e);
        io.out = Some(next.clone());
        self.body_masked(&agg.combine, &io, Some(&plan.combine));
        if write {
            let st = match agg.readout_kind {
                ReadoutKind::Inclusive => next,
                ReadoutKind::Exclusive => left,
            };
            self.scan_readout(base, &at.rows, st, false, Some(&plan.readout));
        }
        self.copy_vars(&vars.n, &vars.p, &plan.prefix);
        let k = self.b.ins().iadd_imm_s(at.k, 1);
        let homes = home_fields.iter().map(|&(_, o)| at.rows.outputs[o]).collect();
        let rows = self.advance(&at.rows, steps);
        let args = if rotate {
            LoopArgs { cur: at.f2, f1: at.cur, f2: at.f1, k, homes, rows }
        } else {
            LoopArgs { cur: at.cur, f1: at.f1, f2: at.f2, k, homes, rows }
        };
        let more = self.b.ins().icmp(IntCC::UnsignedLessThan, k, n);
        let out = self.exit_args(plan, &args, homed);
        self.b.ins().brif(more, body, &args.block_args(), exit, &out);
        self.b.seal_block(body);
    }

    /// Copies `bytes` bytes (a multiple of 4) from `from` (4-byte aligned) to `to`
    /// (8-byte aligned).
    fn copy_bytes(&mut self, from: Value, to: Value, bytes: usize) {
        let words = bytes / 8;
        self.copy_words(from, to, 0, words, true);
        if words * 8 < bytes {
            let at = (words * 8) as i64;
            let (src, so) = self.offset_addr(from, at);
            let x = self.b.ins().load(types::I32, flags_rw(), src, so);
            let (dst, d_o) = self.offset_addr(to, at);
            self.b.ins().store(flags_rw(), x, dst, d_o);
        }
    }

    /// Bytes of one row of each tensor of `role`.
    fn row_bytes(&self, role: Role) -> Vec<i64> {
        let (agg, info) = (self.cx.agg, self.cx.info);
        agg.tensors_of(role)
            .map(|t| (info.len(t) as i64).wrapping_mul(dtype_size(agg.tensors[t].dtype) as i64))
            .collect()
    }

    /// `base + step · bytes` for every base.
    fn first_rows(&mut self, bases: &[Option<Value>], bytes: &[i64], step: Value) -> Vec<Option<Value>> {
        bases
            .iter()
            .zip(bytes)
            .map(|(base, &bytes)| {
                base.map(|base| {
                    let off = self.b.ins().imul_imm_s(step, bytes);
                    self.b.ins().iadd(base, off)
                })
            })
            .collect()
    }

    /// The first step's output rows; `outputs` is read only with WRITE_OUTPUTS (the
    /// rows are 0 without it, and never dereferenced).
    fn first_output_rows(&mut self, outputs: Value, bytes: &[i64], step: Value, write: Value) -> Vec<Value> {
        if bytes.is_empty() {
            return Vec::new();
        }
        let load = self.b.create_block();
        let join = self.b.create_block();
        let rows: Vec<Value> = bytes.iter().map(|_| self.b.append_block_param(join, types::I64)).collect();
        let zero = self.iconst(0);
        let zeros: Vec<BlockArg> = bytes.iter().map(|_| BlockArg::Value(zero)).collect();
        self.b.ins().brif(write, load, &[], join, &zeros);
        self.b.seal_block(load);
        self.b.switch_to_block(load);
        let bases = self.load_ptrs(outputs, &vec![true; bytes.len()]);
        let first = self.first_rows(&bases, bytes, step);
        let args: Vec<BlockArg> = first.into_iter().flatten().map(BlockArg::Value).collect();
        self.b.ins().jump(join, &args);
        self.b.seal_block(join);
        self.b.switch_to_block(join);
        rows
    }

    /// The pointer step between consecutive rows: `bytes`, or `-bytes` with REVERSE.
    fn row_step(&mut self, rev: Value, bytes: i64) -> Value {
        let fwd = self.iconst(bytes);
        let back = self.iconst(bytes.wrapping_neg());
        self.b.ins().select(rev, back, fwd)
    }

    /// The rows of the next step.
    fn advance(&mut self, rows: &Rows, steps: &[Value]) -> Rows {
        let mut next = rows.clone();
        for (r, &step) in next.inputs.iter_mut().flatten().chain(next.outputs.iter_mut()).zip(steps) {
            *r = self.b.ins().iadd(*r, step);
        }
        next
    }

    fn copy_vars(&mut self, from: &[Option<Variable>], to: &[Option<Variable>], which: &[bool]) {
        for ((f, t), _) in from.iter().zip(to).zip(which).filter(|(_, &w)| w) {
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

    /// Copies `words` 8-byte words from `from + start` to `to + start`; `from` is
    /// 8-byte aligned unless `unaligned`.
    fn copy_words(&mut self, from: Value, to: Value, start: usize, words: usize, unaligned: bool) {
        const UNROLL: usize = 8;
        let src_flags = if unaligned { MemFlagsData::new().with_notrap() } else { flags_rw() };
        if words <= UNROLL {
            for w in 0..words {
                let off = (start + 8 * w) as i64;
                let (src, so) = self.offset_addr(from, off);
                let x = self.b.ins().load(types::I64, src_flags, src, so);
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
            let x = s.b.ins().load(types::I64, src_flags, src, 0);
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
    /// Which inputs (by position) the lift and the readout read.
    lift_inputs: Vec<bool>,
    readout_inputs: Vec<bool>,
    scratch: Value,
}

/// The rank-0 fields' variables: the prefix, the element, the new prefix.
struct ScanVars {
    p: Vec<Option<Variable>>,
    e: Vec<Option<Variable>>,
    n: Vec<Option<Variable>>,
}

/// Row pointers of one step: every input the lift or readout reads (by position),
/// every output.
#[derive(Clone)]
struct Rows {
    inputs: Vec<Option<Value>>,
    outputs: Vec<Value>,
}

/// The values the loops carry from step to step.
struct LoopArgs {
    cur: Value,
    f1: Value,
    f2: Value,
    k: Value,
    /// Where each field kept in the output rows is (`LoopPlan::homes` order).
    homes: Vec<Value>,
    rows: Rows,
}

impl LoopArgs {
    fn block_args(&self) -> Vec<BlockArg> {
        let mut v = vec![self.cur, self.f1, self.f2, self.k];
        v.extend(&self.homes);
        v.extend(self.rows.inputs.iter().flatten());
        v.extend(&self.rows.outputs);
        v.into_iter().map(BlockArg::Value).collect()
    }
}

/// What one loop of `scan` computes per step.
struct LoopPlan {
    /// The prefix fields the combine computes (the others are never read).
    prefix: Vec<bool>,
    /// The statements of the combine and of the lift that run.
    combine: Vec<bool>,
    lift: Vec<bool>,
    /// Element fields the combine reads straight from an input row (by position):
    /// the lift copies them, `f[..] = x.f[..]`, and they are not rank 0.
    views: Vec<Option<usize>>,
    /// Prefix fields kept in an output's rows (by position), when the loop writes
    /// outputs: an inclusive readout copies the field, `y[..] = s.f[..]`, so the
    /// combine writes the new prefix's field straight into y's row and the next step
    /// reads it from there.
    homes: Vec<Option<usize>>,
    /// The statements of the readout that run (not the copies into homes).
    readout: Vec<bool>,
}

impl LoopPlan {
    fn new(cx: &Ctx<'_>, prefix: &[bool], write: bool) -> LoopPlan {
        let agg = cx.agg;
        let (combine, reads) = needed(cx, &agg.combine, prefix);
        let views = copy_views(cx);
        let element: Vec<bool> = reads.right.iter().zip(&views).map(|(&r, v)| r && v.is_none()).collect();
        let (lift, _) = needed(cx, &agg.lift, &element);
        let mut homes = vec![None; prefix.len()];
        let mut readout = vec![true; agg.readout.stmts.len()];
        if write && agg.readout_kind == ReadoutKind::Inclusive {
            for (k, stmt) in agg.readout.stmts.iter().enumerate() {
                let Target::Tensor(y) = stmt.target else { continue };
                let Some((f, Side::State)) = copy_of(cx, stmt) else { continue };
                let pos = cx.positions[f.index()];
                if agg.tensors[y].role == Role::Output && prefix[pos] && homes[pos].is_none() {
                    homes[pos] = Some(cx.positions[y.index()]);
                    readout[k] = false;
                }
            }
        }
        LoopPlan { prefix: prefix.to_vec(), combine, lift, views, homes, readout }
    }
}

/// Element fields (by position) read through each side.
struct Reads {
    left: Vec<bool>,
    right: Vec<bool>,
    state: Vec<bool>,
}

/// The statements of `body` needed for its fields `wanted` (by position; every
/// statement of a readout), and the element fields they read. Statements only read
/// `let`s defined before them, so one backward pass suffices.
fn needed(cx: &Ctx<'_>, body: &Body, wanted: &[bool]) -> (Vec<bool>, Reads) {
    let agg = cx.agg;
    let fields = wanted.len();
    let mut reads = Reads { left: vec![false; fields], right: vec![false; fields], state: vec![false; fields] };
    let mut locals = vec![false; agg.locals.len()];
    let mut live = vec![false; body.stmts.len()];
    for (k, stmt) in body.stmts.iter().enumerate().rev() {
        live[k] = match stmt.target {
            Target::Tensor(t) if agg.tensors[t].role == Role::Element => wanted[cx.positions[t.index()]],
            Target::Tensor(_) => true,
            Target::Local(l) => locals[l.index()],
        };
        if !live[k] {
            continue;
        }
        index::sources(agg, stmt.value, &mut |s| match s {
            Source::Local(l) => locals[l.index()] = true,
            Source::Element(side, t) => {
                let pos = cx.positions[t.index()];
                match side {
                    Side::Left => reads.left[pos] = true,
                    Side::Right => reads.right[pos] = true,
                    Side::State => reads.state[pos] = true,
                }
            }
            _ => {}
        });
    }
    (live, reads)
}

/// The prefix fields that are ever read: by the readout, and by the combine for
/// prefix fields that are (a fixed point).
fn live_prefix(cx: &Ctx<'_>) -> Vec<bool> {
    let fields = cx.layout.offsets.len();
    let (_, reads) = needed(cx, &cx.agg.readout, &vec![true; fields]);
    let mut live = reads.state;
    loop {
        let (_, reads) = needed(cx, &cx.agg.combine, &live);
        let next: Vec<bool> = live.iter().zip(&reads.left).map(|(a, b)| *a || *b).collect();
        if next == live {
            return live;
        }
        live = next;
    }
}

/// For each element field: the input (by position) the lift copies it from, when its
/// statement is `f[i, ..] = x.g[i, ..]` with `x.g` of the same shape and dtype and the
/// field is not rank 0.
fn copy_views(cx: &Ctx<'_>) -> Vec<Option<usize>> {
    let agg = cx.agg;
    let mut views = vec![None; cx.layout.offsets.len()];
    for stmt in &agg.lift.stmts {
        if let (Target::Tensor(f), Some((x, Source::Input(_)))) = (stmt.target, copy_of_source(cx, stmt)) {
            views[cx.positions[f.index()]] = Some(cx.positions[x.index()]);
        }
    }
    views
}

/// The element field a statement copies whole from `side`, if it is `t[i, ..] = s.f[i, ..]`
/// with `f` of the target's shape and dtype, rank ≥ 1.
fn copy_of(cx: &Ctx<'_>, stmt: &psm_ir::ir::Stmt) -> Option<(Handle<Tensor>, Side)> {
    match copy_of_source(cx, stmt)? {
        (f, Source::Element(side, _)) => Some((f, side)),
        _ => None,
    }
}

/// The tensor (and its source) a statement `t[i, ..] = src[i, ..]` copies whole: the
/// same shape and dtype as its target tensor, rank ≥ 1.
fn copy_of_source(cx: &Ctx<'_>, stmt: &psm_ir::ir::Stmt) -> Option<(Handle<Tensor>, Source)> {
    let (agg, info) = (cx.agg, cx.info);
    let Target::Tensor(t) = stmt.target else { return None };
    let Expr::Load { source, indices } = &agg.exprs[stmt.value] else { return None };
    let (Source::Input(x) | Source::Element(_, x)) = *source else { return None };
    let copy = !stmt.indices.is_empty()
        && info.shape(x) == info.shape(t)
        && agg.tensors[x].dtype == agg.tensors[t].dtype
        && indices.len() == stmt.indices.len()
        && indices.iter().zip(&stmt.indices).all(|(&i, &v)| matches!(agg.exprs[i], Expr::Index(w) if w == v));
    copy.then_some((x, *source))
}
