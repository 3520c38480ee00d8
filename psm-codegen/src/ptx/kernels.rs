//! The kernels of the ABI (see the module documentation of `ptx`): parameter lists,
//! the thread's index, row pointers, and the code around the lowered bodies.

use std::collections::BTreeSet;
use std::fmt::Write;

use psm_ir::ir::{Body, Expr, ReadoutKind, Role, Side, Source, Target};

use super::emit::{Class, Reg};
use super::lower::{BodyIo, Ctx, ElemView, Loc, Lowerer, Space};
use super::math::MathFn;
use super::{
    Kernel, KernelParam, KernelSig, ParamType, CARRY_IN, EMPTY_FIRST, HAS_STATE, LEFT_IDENTITY, NO_STATE_OUT,
    REVERSE, RIGHT_IDENTITY, WRITE_OUTPUTS,
};
use crate::index;
use crate::layout::{align8, dtype_size, scalar_size};

/// One generated kernel.
pub(crate) struct Generated {
    pub sig: KernelSig,
    pub text: String,
    pub local_bytes: usize,
    /// Bytes of dynamic shared memory a block needs (block-cooperative kernels).
    pub shared_bytes: usize,
}

/// How a kernel's threads share its work items.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Threads<'s> {
    /// One thread per item.
    OnePerItem,
    /// One thread per entry of the element's fields (their shape).
    OnePerEntry(&'s [usize]),
    /// One block per item, its threads splitting each statement's entries
    /// (`block`); `let` tensors and element regions in shared memory. With a
    /// partition (the scan only), a few blocks per item, each computing its part.
    Block(Option<&'s super::block::Partition>),
}

/// The parameters of a kernel: params, inputs, outputs as the kernel takes them, then
/// its own arguments.
pub(super) fn signature(cx: &Ctx<'_>, kernel: Kernel) -> KernelSig {
    let agg = cx.agg;
    let mut params = Vec::new();
    let mut push = |name: String, ty| params.push(KernelParam { name, ty });
    for t in agg.tensors_of(Role::Param) {
        push(format!("param_{}", agg.tensors[t].name), ParamType::U64);
    }
    if matches!(kernel, Kernel::Scan | Kernel::ScanEntries | Kernel::ScanBlock | Kernel::Lift | Kernel::Readout | Kernel::Lookback) {
        for t in agg.tensors_of(Role::Input) {
            push(format!("in_{}", agg.tensors[t].name), ParamType::U64);
        }
    }
    if matches!(kernel, Kernel::Scan | Kernel::ScanEntries | Kernel::ScanBlock | Kernel::Readout | Kernel::Lookback) {
        for t in agg.tensors_of(Role::Output) {
            push(format!("out_{}", agg.tensors[t].name), ParamType::U64);
        }
    }
    let own: &[&str] = match kernel {
        Kernel::Scan | Kernel::ScanEntries | Kernel::ScanBlock => &["nseq", "steps", "chunk", "state_in", "state_out"],
        Kernel::Lift => &["nseq", "steps", "leaves"],
        Kernel::Combine | Kernel::CombineEntries | Kernel::CombineBlock => {
            &["rows", "cols", "out", "out_row", "out_col", "left", "left_row", "left_col", "right", "right_row", "right_col"]
        }
        Kernel::Readout => &["nseq", "steps", "prefixes"],
        Kernel::Identity => &["count", "out", "stride"],
        Kernel::Lookback => &["nseq", "steps", "state_in", "state_out", "status"],
    };
    for name in own {
        push(name.to_string(), ParamType::U64);
    }
    if kernel != Kernel::Identity {
        push("flags".to_string(), ParamType::U32);
    }
    KernelSig { kernel, params }
}

/// Bytes the `let` tensors of rank >= 1 of `bodies` take at their places in the plan
/// (each body's start at 0: the bodies of a kernel run one after another).
fn lets_bytes(cx: &Ctx<'_>, bodies: &[&Body]) -> usize {
    let info = cx.info;
    bodies
        .iter()
        .flat_map(|b| &b.stmts)
        .filter_map(|stmt| match stmt.target {
            Target::Local(l) => {
                let off = cx.plan.local_offsets[l.index()]?;
                let len: usize = info.local_shapes[l.index()].iter().product();
                Some(off.saturating_add(len.saturating_mul(scalar_size(info.local_types[l.index()]))))
            }
            Target::Tensor(_) => None,
        })
        .max()
        .unwrap_or(0)
}

/// Which tensors of `role` (by position) the bodies read.
pub(super) fn used(cx: &Ctx<'_>, bodies: &[&Body], role: Role) -> Vec<bool> {
    index::used(cx.agg, &cx.positions, bodies, role)
}

/// A thread of a kernel over (sequence, step) pairs ([`Frame::step_per_thread`]): the
/// steps per sequence, the thread's global index `gid` = `s · steps + i` (sequence `s`,
/// scan position `i`), the flags and their `REVERSE` bit.
pub(super) struct StepThread {
    pub steps: Reg,
    pub gid: Reg,
    pub s: Reg,
    pub i: Reg,
    pub flags: Reg,
    pub rev: Reg,
}

/// The kernel being written: its lowerer and parameters.
pub(super) struct Frame<'a> {
    pub l: Lowerer<'a>,
    sig: KernelSig,
    /// Bytes of the scratch array (`let` tensors, then element regions).
    local_bytes: usize,
    /// Bytes of its `let` region.
    lets: usize,
    /// Generic base of the scratch array: `.local`, or a block-cooperative kernel's
    /// dynamic shared memory.
    scratch: Option<Reg>,
    /// The scratch array is the block's dynamic shared memory.
    shared: bool,
    pub exit: String,
    /// Where the bodies' input and output rows are (`Global` but in the look-back kernel).
    pub rows_space: Space,
}

impl<'a> Frame<'a> {
    /// The frame of a kernel that lowers `bodies`, with `regions` element regions after
    /// their `let` tensors.
    pub fn new(cx: &'a Ctx<'a>, math: &'a mut BTreeSet<MathFn>, kernel: Kernel, bodies: &[&Body], regions: usize) -> Frame<'a> {
        Self::with_scratch(cx, math, kernel, bodies, regions, false)
    }

    /// [`Frame::new`], with the scratch array per thread in `.local`, or (`shared`)
    /// per block in its dynamic shared memory.
    pub fn with_scratch(cx: &'a Ctx<'a>, math: &'a mut BTreeSet<MathFn>, kernel: Kernel, bodies: &[&Body], regions: usize, shared: bool) -> Frame<'a> {
        let sig = signature(cx, kernel);
        let lets = align8(lets_bytes(cx, bodies));
        let local_bytes = lets.saturating_add(cx.layout.size.saturating_mul(regions));
        let mut l = Lowerer::new(cx, math);
        let exit = "$L_exit".to_string();
        let scratch = (local_bytes > 0).then(|| {
            let (name, space) = if shared { (super::block::shared_window(kernel), "shared") } else { ("scratch".to_string(), "local") };
            if !shared {
                l.e.raw(&format!("\t.local .align 8 .b8 scratch[{local_bytes}];\n"));
            }
            let (a, g) = (l.e.reg(Class::B64), l.e.reg(Class::B64));
            l.e.ins(format!("mov.u64 {a}, {name}"));
            l.e.ins(format!("cvta.{space}.u64 {g}, {a}"));
            g
        });
        Frame { l, sig, local_bytes, lets, scratch, shared, exit, rows_space: Space::Global }
    }

    /// A `.u64` (or `.u32`) kernel parameter.
    pub fn param(&mut self, name: &str) -> Reg {
        let ty = self.sig.params.iter().find(|p| p.name == name).map(|p| p.ty);
        let r = self.l.e.reg(if ty == Some(ParamType::U32) { Class::B32 } else { Class::B64 });
        let t = if ty == Some(ParamType::U32) { "u32" } else { "u64" };
        self.l.e.ins(format!("ld.param.{t} {r}, [{name}]"));
        r
    }

    /// A global pointer parameter.
    pub fn global(&mut self, name: &str) -> Reg {
        let p = self.param(name);
        let g = self.l.e.reg(Class::B64);
        self.l.e.ins(format!("cvta.to.global.u64 {g}, {p}"));
        g
    }

    /// The bases of the tensors of `role` that `mask` selects.
    pub fn bases(&mut self, role: Role, prefix: &str, mask: &[bool]) -> Vec<Option<Reg>> {
        let agg = self.l.cx.agg;
        let names: Vec<String> = agg.tensors_of(role).map(|t| format!("{prefix}{}", agg.tensors[t].name)).collect();
        names.iter().zip(mask).map(|(n, &u)| u.then(|| self.global(n))).collect()
    }

    /// The thread's global index; threads at or past `count` leave.
    pub fn index_below(&mut self, count: Reg) -> Reg {
        let e = &mut self.l.e;
        let (b, n, t) = (e.reg(Class::B32), e.reg(Class::B32), e.reg(Class::B32));
        let (wide, tid, gid) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64));
        e.comment("the thread's global index, 64-bit");
        e.ins(format!("mov.u32 {b}, %ctaid.x"));
        e.ins(format!("mov.u32 {n}, %ntid.x"));
        e.ins(format!("mov.u32 {t}, %tid.x"));
        e.ins(format!("mul.wide.u32 {wide}, {b}, {n}"));
        e.ins(format!("cvt.u64.u32 {tid}, {t}"));
        e.ins(format!("add.s64 {gid}, {wide}, {tid}"));
        let p = e.reg(Class::Pred);
        e.ins(format!("setp.ge.u64 {p}, {gid}, {count}"));
        e.ins(format!("@{p} bra {}", self.exit));
        gid
    }

    /// A predicate: `flags & bit != 0`.
    pub fn flag(&mut self, flags: Reg, bit: u32, name: &str) -> Reg {
        let e = &mut self.l.e;
        let (x, p) = (e.reg(Class::B32), e.reg(Class::Pred));
        e.ins(format!("and.b32 {x}, {flags}, {bit}"));
        e.ins_c(format!("setp.ne.u32 {p}, {x}, 0"), name);
        p
    }

    /// `q = a / b, r = a - q·b` (u64).
    pub fn divmod(&mut self, a: Reg, b: Reg) -> (Reg, Reg) {
        let e = &mut self.l.e;
        let (q, r) = (e.reg(Class::B64), e.reg(Class::B64));
        e.ins(format!("div.u64 {q}, {a}, {b}"));
        e.ins(format!("mul.lo.s64 {r}, {q}, {b}"));
        e.ins(format!("sub.s64 {r}, {a}, {r}"));
        (q, r)
    }

    /// The prologue of a kernel with a thread per (sequence, step) of `nseq` × `steps`
    /// (`psm_lift`, `psm_readout`): the thread's index and its position, the flags; the
    /// threads past the end leave.
    pub fn step_per_thread(&mut self) -> StepThread {
        let (nseq, steps) = (self.param("nseq"), self.param("steps"));
        let count = self.l.e.reg(Class::B64);
        self.l.e.ins(format!("mul.lo.s64 {count}, {nseq}, {steps}"));
        let gid = self.index_below(count);
        let (s, i) = self.divmod(gid, steps);
        let flags = self.param("flags");
        let rev = self.flag(flags, REVERSE, "REVERSE");
        StepThread { steps, gid, s, i, flags, rev }
    }

    /// The row `s · steps + t` of sequence `s` at its scan position `i` (memory step `t`).
    pub fn memory_row(&mut self, s: Reg, i: Reg, steps: Reg, rev: Reg) -> Reg {
        let t = self.memory_step(i, steps, rev);
        let row = self.l.e.reg(Class::B64);
        self.l.e.ins(format!("mad.lo.s64 {row}, {s}, {steps}, {t}"));
        row
    }

    /// The row of scan position `pos` of the sequence whose first row is `seq_row`.
    pub fn row_after(&mut self, seq_row: Reg, pos: Reg, steps: Reg, rev: Reg) -> Reg {
        let t = self.memory_step(pos, steps, rev);
        let row = self.l.e.reg(Class::B64);
        self.l.e.ins(format!("add.s64 {row}, {seq_row}, {t}"));
        row
    }

    /// The memory step of scan position `pos`: `rev ? steps - 1 - pos : pos`.
    pub fn memory_step(&mut self, pos: Reg, steps: Reg, rev: Reg) -> Reg {
        let e = &mut self.l.e;
        let (back, t) = (e.reg(Class::B64), e.reg(Class::B64));
        e.ins(format!("sub.s64 {back}, {steps}, {pos}"));
        e.ins(format!("sub.s64 {back}, {back}, 1"));
        e.ins_c(format!("selp.b64 {t}, {back}, {pos}, {rev}"), "memory step");
        t
    }

    /// Row pointers `base + row · len · size` of the tensors of `role` with a base.
    fn rows(&mut self, bases: &[Option<Reg>], role: Role, row: Reg) -> Vec<Option<Reg>> {
        let (agg, info) = (self.l.cx.agg, self.l.cx.info);
        let tensors: Vec<_> = agg.tensors_of(role).collect();
        let mut out = Vec::with_capacity(bases.len());
        for (k, base) in bases.iter().enumerate() {
            out.push(base.map(|base| {
                let t = tensors[k];
                let bytes = (info.len(t) as u64).wrapping_mul(dtype_size(agg.tensors[t].dtype) as u64);
                let r = self.l.e.reg(Class::B64);
                self.l.e.ins_c(format!("mad.lo.s64 {r}, {row}, {bytes}, {base}"), format!("row of {}", agg.tensors[t].name));
                r
            }));
        }
        out
    }

    /// The element at `base` (generic), every field in memory.
    fn mem_view(&self, base: Reg) -> ElemView {
        ElemView(
            self.l.cx.layout.offsets.iter().map(|&off| Loc::Mem { base, offset: off as i64, space: Space::Generic }).collect(),
        )
    }

    /// `base + k · size` of element region k of the `.local` array.
    fn region(&mut self, k: usize) -> Reg {
        let off = self.lets + k * self.l.cx.layout.size;
        let r = self.l.e.reg(Class::B64);
        let scratch = self.scratch.expect("element regions are in the local array");
        self.l.e.ins(format!("add.s64 {r}, {scratch}, {off}"));
        r
    }

    pub fn io(&self) -> BodyIo {
        BodyIo {
            params: Vec::new(),
            inputs: Vec::new(),
            left: None,
            right: None,
            state: None,
            out: None,
            outputs: Vec::new(),
            empty: false,
            rows_space: self.rows_space,
            scratch: self.scratch,
        }
    }

    /// Copies an element (`layout.size` bytes, 8-byte words) from `src` to `dst`.
    fn copy_element(&mut self, dst: Reg, src: Reg) {
        let words = self.l.cx.layout.size / 8;
        if let Some(split) = self.l.split {
            match self.l.part.clone() {
                Some(part) => super::block::copy_part(&mut self.l, dst, src, split, &part),
                None => super::block::copy_words(&mut self.l, dst, src, words, split),
            }
            return;
        }
        self.l.e.comment(format!("copy one element ({words} words)"));
        let w = self.l.e.reg(Class::B64);
        if words <= 8 {
            for k in 0..words {
                self.l.e.ins(format!("ld.u64 {w}, [{src}+{}]", 8 * k));
                self.l.e.ins(format!("st.u64 [{dst}+{}], {w}", 8 * k));
            }
            return;
        }
        self.l.counted_loop(words as u64, "word", &mut |l, k| {
            let (a, b) = (l.e.reg(Class::B64), l.e.reg(Class::B64));
            l.e.ins(format!("mad.lo.s64 {a}, {k}, 8, {src}"));
            l.e.ins(format!("mad.lo.s64 {b}, {k}, 8, {dst}"));
            l.e.ins(format!("ld.u64 {w}, [{a}]"));
            l.e.ins(format!("st.u64 [{b}], {w}"));
        });
    }

    pub fn finish(mut self) -> Generated {
        let exit = self.exit.clone();
        self.l.e.place(&exit);
        self.l.e.ins("ret");
        let mut text = String::new();
        let shared_bytes = if self.shared { self.local_bytes } else { 0 };
        if shared_bytes > 0 {
            let _ = writeln!(text, ".extern .shared .align 8 .b8 {}[];\n", super::block::shared_window(self.sig.kernel));
        }
        let _ = writeln!(text, ".visible .entry {}(", self.sig.kernel.name());
        let n = self.sig.params.len();
        for (k, p) in self.sig.params.iter().enumerate() {
            let t = if p.ty == ParamType::U32 { "u32" } else { "u64" };
            let _ = writeln!(text, "\t.param .{t} {}{}", p.name, if k + 1 < n { "," } else { "" });
        }
        text.push_str(")\n{\n");
        text.push_str(&self.l.e.finish());
        text.push_str("}\n");
        let local_bytes = if self.shared { 0 } else { self.local_bytes };
        Generated { sig: self.sig, text, local_bytes, shared_bytes }
    }
}

/// Element views of the fused loop: rank-0 fields in registers, the others in a
/// region whose base register rotates; in a per-entry kernel every field's entry in a
/// register and no region.
struct Rotating {
    base: Option<Reg>,
    regs: Vec<Option<Reg>>,
}

impl Rotating {
    /// Over element region `region`, or all in registers with `None`.
    fn new(f: &mut Frame<'_>, region: Option<usize>) -> Rotating {
        let base = region.map(|k| f.region(k));
        let (agg, info) = (f.l.cx.agg, f.l.cx.info);
        let regs = agg
            .tensors_of(Role::Element)
            .map(|t| {
                (base.is_none() || info.shape(t).is_empty()).then(|| f.l.e.reg(Class::of(agg.tensors[t].dtype.scalar())))
            })
            .collect();
        Rotating { base, regs }
    }

    fn view(&self, offsets: &[usize]) -> ElemView {
        ElemView(
            self.regs
                .iter()
                .zip(offsets)
                .map(|(r, &off)| match (r, self.base) {
                    (Some(r), _) => Loc::Reg(*r),
                    (None, Some(base)) => Loc::Mem { base, offset: off as i64, space: Space::Generic },
                    (None, None) => Loc::Zero,
                })
                .collect(),
        )
    }
}

/// `a <- b`: the registers copied, the region bases swapped.
fn take(f: &mut Frame<'_>, a: &Rotating, b: &Rotating) {
    for (x, y) in a.regs.iter().zip(&b.regs) {
        if let (Some(x), Some(y)) = (x, y) {
            f.l.mov(*x, *y);
        }
    }
    if let (Some(ab), Some(bb)) = (a.base, b.base) {
        let t = f.l.e.reg(Class::B64);
        f.l.mov(t, ab);
        f.l.mov(ab, bb);
        f.l.mov(bb, t);
    }
}

/// The register fields of `a` at `src` (generic): rank-0 fields at their offsets, or in
/// a per-entry kernel each field's entry `entry_bytes` (by entry size) past its offset.
fn load_regs(f: &mut Frame<'_>, a: &Rotating, src: Reg, entry: Option<&EntryBytes>) {
    let layout = f.l.cx.layout.clone();
    for (k, r) in a.regs.iter().enumerate() {
        if let Some(r) = r {
            let addr = entry.map_or(src, |e| e.at(f, src, layout.dtypes[k]));
            let v = f.l.load_at(layout.dtypes[k].scalar(), Space::Generic, addr, layout.offsets[k] as i64);
            f.l.mov(*r, v);
        }
    }
}

/// Stores the register fields of `a` into the element at `dst`, as [`load_regs`] reads.
fn store_regs(f: &mut Frame<'_>, a: &Rotating, dst: Reg, entry: Option<&EntryBytes>) {
    let layout = f.l.cx.layout.clone();
    for (k, r) in a.regs.iter().enumerate() {
        if let Some(r) = r {
            let addr = entry.map_or(dst, |e| e.at(f, dst, layout.dtypes[k]));
            f.l.store_at(layout.dtypes[k].scalar(), Space::Generic, addr, layout.offsets[k] as i64, *r);
        }
    }
}

/// The thread's work item below `count`: itself; its block's (`Block`); or with
/// `OnePerEntry` (the fields' shape) `count · E` threads, each item's E threads split into the item's index and
/// the thread's entry (its coordinates pinned in the lowerer, its byte offsets
/// returned).
fn thread_and_entry(f: &mut Frame<'_>, count: Reg, threads: Threads<'_>) -> (Reg, Option<EntryBytes>) {
    let shape = match threads {
        Threads::OnePerItem => return (f.index_below(count), None),
        Threads::Block(partition) => {
            let item = super::block::block_index_below(f, count);
            if let Some(partition) = partition {
                super::block::enter_part(&mut f.l, partition);
            }
            return (item, None);
        }
        Threads::OnePerEntry(shape) => shape,
    };
    let n_entries: usize = shape.iter().product();
    f.l.e.ins_c(format!("mul.lo.s64 {count}, {count}, {n_entries}"), "one thread per entry");
    let thread = f.index_below(count);
    let width = f.l.u64_const(n_entries as i64);
    let (item, e) = f.divmod(thread, width);
    let coords = coordinates(f, e, shape);
    f.l.entry = Some(coords);
    let (four, eight) = (f.l.e.reg(Class::B64), f.l.e.reg(Class::B64));
    f.l.e.ins(format!("mul.lo.s64 {four}, {e}, 4"));
    f.l.e.ins_c(format!("mul.lo.s64 {eight}, {e}, 8"), "the entry's byte offset in 4- and 8-byte fields");
    (item, Some(EntryBytes { four, eight }))
}

/// The byte offset of the thread's entry within a field, for 4- and 8-byte entries.
struct EntryBytes {
    four: Reg,
    eight: Reg,
}

impl EntryBytes {
    fn at(&self, f: &mut Frame<'_>, base: Reg, dtype: psm_ir::ir::Dtype) -> Reg {
        let off = if dtype_size(dtype) == 8 { self.eight } else { self.four };
        let r = f.l.e.reg(Class::B64);
        f.l.e.ins(format!("add.s64 {r}, {base}, {off}"));
        r
    }
}

/// The readout of the position whose input/output row index is `row`, reading
/// `state` (or, with `None`, the exclusive readout's p_0: the declared identity,
/// computed into `spare`, else zeros with `empty`).
pub(super) fn readout_at(
    f: &mut Frame<'_>,
    params: &[Option<Reg>],
    inputs: &[Option<Reg>],
    outputs: &[Option<Reg>],
    row: Reg,
    state: Option<ElemView>,
    spare: Option<ElemView>,
) {
    let agg = f.l.cx.agg;
    let mut io = f.io();
    io.params = params.to_vec();
    let state = match state {
        Some(s) => s,
        None => match (&agg.identity, spare) {
            (Some(identity), Some(spare)) => {
                f.l.e.comment("p_0 is the declared identity");
                let mut id_io = f.io();
                id_io.params = params.to_vec();
                id_io.out = Some(spare.clone());
                f.l.body(identity, &id_io);
                spare
            }
            _ => {
                f.l.e.comment("p_0 reads as zeros, empty(p) is true");
                io.empty = true;
                ElemView(vec![Loc::Zero; f.l.cx.layout.offsets.len()])
            }
        },
    };
    io.inputs = f.rows(inputs, Role::Input, row);
    io.outputs = f.rows(outputs, Role::Output, row);
    io.state = Some(state);
    f.l.body(&agg.readout, &io);
}

pub(super) fn lift_at(f: &mut Frame<'_>, params: &[Option<Reg>], inputs: &[Option<Reg>], row: Reg, out: ElemView) {
    let mut io = f.io();
    io.params = params.to_vec();
    io.inputs = f.rows(inputs, Role::Input, row);
    io.out = Some(out);
    f.l.body(&f.l.cx.agg.lift, &io);
}

pub(super) fn combine_into(f: &mut Frame<'_>, params: &[Option<Reg>], left: ElemView, right: ElemView, out: ElemView) {
    let mut io = f.io();
    io.params = params.to_vec();
    io.left = Some(left);
    io.right = Some(right);
    io.out = Some(out);
    f.l.body(&f.l.cx.agg.combine, &io);
}

/// The param bases every body of `bodies` reads.
pub(super) fn param_bases(f: &mut Frame<'_>, bodies: &[&Body]) -> Vec<Option<Reg>> {
    let mask = used(f.l.cx, bodies, Role::Param);
    f.bases(Role::Param, "param_", &mask)
}

pub(crate) fn scan(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>) -> Generated {
    scan_kernel(cx, math, Threads::OnePerItem)
}

/// `psm_scan_entries`, for an operator whose entries scan independently
/// ([`entry_shape`]).
pub(crate) fn scan_entries(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>) -> Option<Generated> {
    let shape = entry_shape(cx)?;
    Some(scan_kernel(cx, math, Threads::OnePerEntry(&shape)))
}

/// The shape of the element's fields when one thread per entry can run the fused loop:
/// combine can ([`combine_entry_shape`]: every field of one shape, combine reading `l`
/// and `r` only at the entry it writes), and the readout writes outputs of that shape
/// reading the state only at the entry it writes (its `let`s not at all).
pub(crate) fn entry_shape(cx: &Ctx<'_>) -> Option<Vec<usize>> {
    let (agg, info) = (cx.agg, cx.info);
    let shape = combine_entry_shape(cx)?;
    let per_entry = agg.readout.stmts.iter().all(|stmt| {
        let own = match stmt.target {
            Target::Tensor(t) if info.shape(t) == shape.as_slice() => Some(&stmt.indices),
            Target::Tensor(_) => return false,
            Target::Local(_) => None,
        };
        let mut ok = true;
        state_loads(agg, stmt.value, &mut |indices| {
            ok &= own.is_some_and(|vars| {
                indices.len() == vars.len() && indices.iter().zip(vars.iter()).all(|(&i, &v)| agg.exprs[i] == Expr::Index(v))
            });
        });
        ok
    });
    per_entry.then_some(shape)
}

/// The shape of the element's fields when one thread per entry can run combine: the
/// structure is elementwise over at least two entries and combine has no `let`.
pub(crate) fn combine_entry_shape(cx: &Ctx<'_>) -> Option<Vec<usize>> {
    let (agg, info) = (cx.agg, cx.info);
    if psm_ir::algebra::structure(agg, info) != psm_ir::algebra::Structure::Elementwise {
        return None;
    }
    let shape = info.shape(*agg.element().first()?).to_vec();
    let lets = agg.combine.stmts.iter().any(|s| matches!(s.target, Target::Local(_)));
    (shape.iter().product::<usize>() >= 2 && !lets).then_some(shape)
}

/// Calls `f` with the indices of every load of the readout's state under `e`.
fn state_loads(agg: &psm_ir::ir::Aggregator, e: psm_ir::arena::Handle<Expr>, f: &mut impl FnMut(&[psm_ir::arena::Handle<Expr>])) {
    if let Expr::Load { source: Source::Element(Side::State, _), indices } = &agg.exprs[e] {
        f(indices);
    }
    agg.exprs[e].for_each_child(|c| state_loads(agg, c, f));
}

/// `psm_scan`; with `OnePerEntry` (the fields' shape) `psm_scan_entries`: the same loop
/// with one thread per entry of the element and every field's entry in a register; with
/// `Block` `psm_scan_block`: the same loop by a block, its regions in shared memory.
pub(super) fn scan_kernel(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>, threads: Threads<'_>) -> Generated {
    let agg = cx.agg;
    let exclusive = agg.readout_kind == ReadoutKind::Exclusive;
    let (kernel, entries) = match threads {
        Threads::OnePerItem => (Kernel::Scan, None),
        Threads::OnePerEntry(shape) => (Kernel::ScanEntries, Some(shape)),
        Threads::Block(_) => (Kernel::ScanBlock, None),
    };
    let block = matches!(threads, Threads::Block(_));
    // Every field in a register: one thread per entry, or an element of scalars.
    let in_registers = entries.is_some() || (!block && agg.tensors_of(Role::Element).all(|t| cx.info.shape(t).is_empty()));
    let mut bodies: Vec<&Body> = vec![&agg.lift, &agg.combine, &agg.readout];
    bodies.extend(agg.identity.as_ref().filter(|_| exclusive));
    let mut f = Frame::with_scratch(cx, math, kernel, &bodies, if in_registers { 0 } else { 3 }, block);
    let (nseq, steps, chunk) = (f.param("nseq"), f.param("steps"), f.param("chunk"));
    let e = &mut f.l.e;
    let (nchunks, count, zero_chunk) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::Pred));
    e.comment("nchunks = ceil(steps / chunk); a chunk of 0 steps runs nothing");
    e.ins(format!("setp.eq.u64 {zero_chunk}, {chunk}, 0"));
    e.ins(format!("@{zero_chunk} bra {}", f.exit));
    e.ins(format!("add.s64 {nchunks}, {steps}, {chunk}"));
    e.ins(format!("sub.s64 {nchunks}, {nchunks}, 1"));
    e.ins(format!("div.u64 {nchunks}, {nchunks}, {chunk}"));
    e.ins(format!("mul.lo.s64 {count}, {nseq}, {nchunks}"));
    let (gid, entry) = thread_and_entry(&mut f, count, threads);
    let (s, c) = f.divmod(gid, nchunks);
    let flags = f.param("flags");
    let has0 = f.flag(flags, HAS_STATE, "HAS_STATE");
    let carry = f.flag(flags, CARRY_IN, "CARRY_IN");
    let write = f.flag(flags, WRITE_OUTPUTS, "WRITE_OUTPUTS");
    let rev = f.flag(flags, REVERSE, "REVERSE");
    let no_state = f.flag(flags, NO_STATE_OUT, "NO_STATE_OUT");
    let e = &mut f.l.e;
    let (first_chunk, later, has) = (e.reg(Class::Pred), e.reg(Class::Pred), e.reg(Class::Pred));
    e.ins(format!("setp.eq.u64 {first_chunk}, {c}, 0"));
    e.ins(format!("and.pred {has}, {first_chunk}, {has0}"));
    e.ins(format!("not.pred {later}, {first_chunk}"));
    e.ins(format!("and.pred {later}, {later}, {carry}"));
    e.ins_c(format!("or.pred {has}, {has}, {later}"), "the chunk starts from a prefix");
    let (pos, end, seq_row) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64));
    e.ins_c(format!("mul.lo.s64 {pos}, {c}, {chunk}"), "first position");
    e.ins(format!("add.s64 {end}, {pos}, {chunk}"));
    e.ins_c(format!("min.u64 {end}, {end}, {steps}"), "end position");
    e.ins_c(format!("mul.lo.s64 {seq_row}, {s}, {steps}"), "row of the sequence's step 0");
    let slot = e.reg(Class::B64);
    e.ins_c(format!("mul.lo.s64 {slot}, {gid}, {}", cx.layout.size), "byte offset of the chunk's state slot");

    let params = param_bases(&mut f, &bodies);
    let lift_inputs_mask = used(cx, &[&agg.lift], Role::Input);
    let readout_inputs_mask = used(cx, &[&agg.readout], Role::Input);
    let any: Vec<bool> = lift_inputs_mask.iter().zip(&readout_inputs_mask).map(|(a, b)| *a || *b).collect();
    let input_bases = f.bases(Role::Input, "in_", &any);
    let only = |mask: &[bool]| -> Vec<Option<Reg>> {
        input_bases.iter().zip(mask).map(|(b, &u)| if u { *b } else { None }).collect()
    };
    let (lift_inputs, readout_inputs) = (only(&lift_inputs_mask), only(&readout_inputs_mask));
    let all_outputs = vec![true; agg.tensors_of(Role::Output).count()];
    let outputs = f.bases(Role::Output, "out_", &all_outputs);
    let (state_in, state_out) = (f.param("state_in"), f.param("state_out"));

    let region = |k: usize| (!in_registers).then_some(k);
    let p = Rotating::new(&mut f, region(0));
    let el = Rotating::new(&mut f, region(1));
    let n = Rotating::new(&mut f, region(2));
    let offsets = cx.layout.offsets.clone();

    let (load_state, loop_test, loop_step, done) =
        (f.l.e.label("load_state"), f.l.e.label("loop_test"), f.l.e.label("loop_step"), f.l.e.label("done"));
    f.l.e.ins(format!("@{has} bra {load_state}"));

    // The first position, with no prefix held: p' = e.
    f.l.e.comment("first position without a prefix: p' = lift(x)");
    let row = f.row_after(seq_row, pos, steps, rev);
    lift_at(&mut f, &params, &lift_inputs, row, el.view(&offsets));
    let skip_first = f.l.e.label("skip_first_readout");
    f.l.e.ins(format!("@!{write} bra {skip_first}"));
    if exclusive {
        readout_at(&mut f, &params, &readout_inputs, &outputs, row, None, Some(n.view(&offsets)));
    } else {
        readout_at(&mut f, &params, &readout_inputs, &outputs, row, Some(el.view(&offsets)), None);
    }
    f.l.e.place(&skip_first);
    take(&mut f, &p, &el);
    f.l.e.ins(format!("add.s64 {pos}, {pos}, 1"));
    f.l.e.ins(format!("bra.uni {loop_test}"));

    // A prefix given: p = state_in[slot].
    f.l.e.place(&load_state);
    f.l.e.comment("p = state_in[slot]");
    let src = f.l.e.reg(Class::B64);
    f.l.e.ins(format!("add.s64 {src}, {state_in}, {slot}"));
    if let Some(base) = p.base {
        f.copy_element(base, src);
    }
    load_regs(&mut f, &p, src, entry.as_ref());

    f.l.e.place(&loop_test);
    let stop = f.l.e.reg(Class::Pred);
    f.l.e.ins(format!("setp.ge.u64 {stop}, {pos}, {end}"));
    f.l.e.ins(format!("@{stop} bra {done}"));
    if in_registers {
        // UNROLL positions at a time while that many remain: their lifts first, so that
        // their loads are in flight together, then the combines and readouts in order.
        let (unrolled, single) = (f.l.e.label("unrolled_step"), f.l.e.label("single_steps"));
        let (last, short) = (f.l.e.reg(Class::B64), f.l.e.reg(Class::Pred));
        f.l.e.place(&unrolled);
        f.l.e.ins(format!("add.s64 {last}, {pos}, {UNROLL}"));
        f.l.e.ins_c(format!("setp.gt.u64 {short}, {last}, {end}"), format!("fewer than {UNROLL} positions left"));
        f.l.e.ins(format!("@{short} bra {single}"));
        f.l.e.comment(format!("{UNROLL} positions: their lifts, then combines and readouts in order"));
        let lifted: Vec<Rotating> = (0..UNROLL).map(|_| Rotating::new(&mut f, None)).collect();
        let mut rows = Vec::with_capacity(UNROLL);
        for (u, e_u) in lifted.iter().enumerate() {
            let at = f.l.e.reg(Class::B64);
            f.l.e.ins(format!("add.s64 {at}, {pos}, {u}"));
            let row = f.row_after(seq_row, at, steps, rev);
            lift_at(&mut f, &params, &lift_inputs, row, e_u.view(&offsets));
            rows.push(row);
        }
        for (e_u, &row) in lifted.iter().zip(&rows) {
            step_after_lift(&mut f, &params, &readout_inputs, &outputs, row, write, (&p, e_u, &n), &offsets);
        }
        f.l.e.ins(format!("add.s64 {pos}, {pos}, {UNROLL}"));
        f.l.e.ins(format!("bra.uni {unrolled}"));
        f.l.e.place(&single);
        let stop = f.l.e.reg(Class::Pred);
        f.l.e.ins(format!("setp.ge.u64 {stop}, {pos}, {end}"));
        f.l.e.ins(format!("@{stop} bra {done}"));
    }
    f.l.e.place(&loop_step);
    f.l.e.comment("one position: e = lift(x), p' = combine(p, e), readout");
    let row = f.row_after(seq_row, pos, steps, rev);
    lift_at(&mut f, &params, &lift_inputs, row, el.view(&offsets));
    step_after_lift(&mut f, &params, &readout_inputs, &outputs, row, write, (&p, &el, &n), &offsets);
    f.l.e.ins(format!("add.s64 {pos}, {pos}, 1"));
    let more = f.l.e.reg(Class::Pred);
    f.l.e.ins(format!("setp.lt.u64 {more}, {pos}, {end}"));
    f.l.e.ins(format!("@{more} bra {loop_step}"));

    f.l.e.place(&done);
    f.l.e.comment("state_out[slot] = p unless NO_STATE_OUT");
    f.l.e.ins(format!("@{no_state} bra {}", f.exit));
    let dst = f.l.e.reg(Class::B64);
    f.l.e.ins(format!("add.s64 {dst}, {state_out}, {slot}"));
    if let Some(base) = p.base {
        f.copy_element(dst, base);
    }
    store_regs(&mut f, &p, dst, entry.as_ref());
    f.finish()
}

/// Positions the fused loop lifts together (their loads in flight at once) when every
/// field is in a register.
const UNROLL: usize = 8;

/// One position after its lift into `e`: the exclusive readout of `p`, `n = combine(p,
/// e)`, the inclusive readout of `n` (readouts only with `write`), then `p <- n`.
#[allow(clippy::too_many_arguments)]
fn step_after_lift(
    f: &mut Frame<'_>,
    params: &[Option<Reg>],
    readout_inputs: &[Option<Reg>],
    outputs: &[Option<Reg>],
    row: Reg,
    write: Reg,
    (p, e, n): (&Rotating, &Rotating, &Rotating),
    offsets: &[usize],
) {
    let exclusive = f.l.cx.agg.readout_kind == ReadoutKind::Exclusive;
    if exclusive {
        let skip = f.l.e.label("skip_readout");
        f.l.e.ins(format!("@!{write} bra {skip}"));
        readout_at(f, params, readout_inputs, outputs, row, Some(p.view(offsets)), None);
        f.l.e.place(&skip);
    }
    combine_into(f, params, p.view(offsets), e.view(offsets), n.view(offsets));
    if !exclusive {
        let skip = f.l.e.label("skip_readout");
        f.l.e.ins(format!("@!{write} bra {skip}"));
        readout_at(f, params, readout_inputs, outputs, row, Some(n.view(offsets)), None);
        f.l.e.place(&skip);
    }
    take(f, p, n);
}

/// The coordinates (b64) of flat entry `e` in a row-major `shape`.
pub(super) fn coordinates(f: &mut Frame<'_>, e: Reg, shape: &[usize]) -> Vec<Reg> {
    let st = crate::layout::strides(shape);
    let mut rest = e;
    let mut coords = Vec::with_capacity(shape.len());
    for (k, &stride) in st.iter().enumerate() {
        if k + 1 == shape.len() {
            coords.push(rest);
            break;
        }
        let width = f.l.u64_const(stride);
        let (q, r) = f.divmod(rest, width);
        coords.push(q);
        rest = r;
    }
    coords
}

pub(crate) fn lift(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>) -> Generated {
    let agg = cx.agg;
    let mut f = Frame::new(cx, math, Kernel::Lift, &[&agg.lift], 0);
    let StepThread { steps, gid, s, i, rev, .. } = f.step_per_thread();
    let params = param_bases(&mut f, &[&agg.lift]);
    let mask = used(cx, &[&agg.lift], Role::Input);
    let inputs = f.bases(Role::Input, "in_", &mask);
    let leaves = f.param("leaves");
    let row = f.memory_row(s, i, steps, rev);
    let out = f.l.e.reg(Class::B64);
    f.l.e.ins_c(format!("mad.lo.s64 {out}, {gid}, {}, {leaves}", cx.layout.size), "leaves[s * steps + i]");
    let view = f.mem_view(out);
    lift_at(&mut f, &params, &inputs, row, view);
    f.finish()
}

pub(crate) fn combine(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>) -> Generated {
    combine_kernel(cx, math, Threads::OnePerItem)
}

/// `psm_combine_entries`, for an operator whose combine runs per entry
/// ([`combine_entry_shape`]).
pub(crate) fn combine_entries(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>) -> Option<Generated> {
    let shape = combine_entry_shape(cx)?;
    Some(combine_kernel(cx, math, Threads::OnePerEntry(&shape)))
}

/// `psm_combine`; with `OnePerEntry` (the fields' shape) `psm_combine_entries`: one
/// thread per entry of each combine; with `Block` `psm_combine_block`: a block per
/// combine, its `let` tensors in shared memory.
pub(super) fn combine_kernel(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>, threads: Threads<'_>) -> Generated {
    let agg = cx.agg;
    let kernel = match threads {
        Threads::OnePerItem => Kernel::Combine,
        Threads::OnePerEntry(_) => Kernel::CombineEntries,
        Threads::Block(_) => Kernel::CombineBlock,
    };
    let block = matches!(threads, Threads::Block(_));
    let mut f = Frame::with_scratch(cx, math, kernel, &[&agg.combine], 0, block);
    let (rows, cols) = (f.param("rows"), f.param("cols"));
    let count = f.l.e.reg(Class::B64);
    f.l.e.ins(format!("mul.lo.s64 {count}, {rows}, {cols}"));
    let (gid, entry) = thread_and_entry(&mut f, count, threads);
    let (row, col) = f.divmod(gid, cols);
    let addr = |f: &mut Frame<'_>, name: &str| {
        let base = f.param(name);
        let (rs, cs) = (f.param(&format!("{name}_row")), f.param(&format!("{name}_col")));
        let a = f.l.e.reg(Class::B64);
        f.l.e.ins(format!("mad.lo.s64 {a}, {row}, {rs}, {base}"));
        f.l.e.ins_c(format!("mad.lo.s64 {a}, {col}, {cs}, {a}"), name);
        a
    };
    let out = addr(&mut f, "out");
    let left = addr(&mut f, "left");
    let right = addr(&mut f, "right");
    let flags = f.param("flags");
    let left_id = f.flag(flags, LEFT_IDENTITY, "LEFT_IDENTITY");
    let right_id = f.flag(flags, RIGHT_IDENTITY, "RIGHT_IDENTITY");
    let (copy_right, copy_left) = (f.l.e.label("copy_right"), f.l.e.label("copy_left"));
    f.l.e.ins(format!("@{left_id} bra {copy_right}"));
    f.l.e.ins(format!("@{right_id} bra {copy_left}"));
    let params = param_bases(&mut f, &[&agg.combine]);
    let (lv, rv, ov) = (f.mem_view(left), f.mem_view(right), f.mem_view(out));
    combine_into(&mut f, &params, lv, rv, ov);
    f.l.e.ins(format!("bra.uni {}", f.exit));
    let copies = [(copy_right, "identity * right = right", right), (copy_left, "left * identity = left", left)];
    for (k, (label, what, src)) in copies.into_iter().enumerate() {
        f.l.e.place(&label);
        f.l.e.comment(what);
        match &entry {
            Some(e) => copy_entry(&mut f, out, src, e),
            None => f.copy_element(out, src),
        }
        if k == 0 {
            f.l.e.ins(format!("bra.uni {}", f.exit));
        }
    }
    f.finish()
}

/// Copies the thread's entry of every field from the element at `src` to `dst`.
fn copy_entry(f: &mut Frame<'_>, dst: Reg, src: Reg, entry: &EntryBytes) {
    let layout = f.l.cx.layout.clone();
    for (k, &dtype) in layout.dtypes.iter().enumerate() {
        let (from, to) = (entry.at(f, src, dtype), entry.at(f, dst, dtype));
        let off = layout.offsets[k] as i64;
        let v = f.l.load_at(dtype.scalar(), Space::Generic, from, off);
        f.l.store_at(dtype.scalar(), Space::Generic, to, off, v);
    }
}

pub(crate) fn readout(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>) -> Generated {
    let agg = cx.agg;
    let exclusive = agg.readout_kind == ReadoutKind::Exclusive;
    let regions = usize::from(exclusive && agg.identity.is_some());
    let mut bodies = vec![&agg.readout];
    bodies.extend(agg.identity.as_ref().filter(|_| exclusive));
    let mut f = Frame::new(cx, math, Kernel::Readout, &bodies, regions);
    let StepThread { steps, s, i, flags, rev, .. } = f.step_per_thread();
    let empty_first = f.flag(flags, EMPTY_FIRST, "EMPTY_FIRST");
    let params = param_bases(&mut f, &bodies);
    let mask = used(cx, &[&agg.readout], Role::Input);
    let inputs = f.bases(Role::Input, "in_", &mask);
    let all_outputs = vec![true; agg.tensors_of(Role::Output).count()];
    let outputs = f.bases(Role::Output, "out_", &all_outputs);
    let prefixes = f.param("prefixes");
    let row = f.memory_row(s, i, steps, rev);
    let e = &mut f.l.e;
    let slot = e.reg(Class::B64);
    e.comment(if exclusive { "p_i: slot s * (steps + 1) + i" } else { "s_i = p_(i+1): slot s * (steps + 1) + i + 1" });
    e.ins(format!("mad.lo.s64 {slot}, {s}, {steps}, {s}"));
    e.ins(format!("add.s64 {slot}, {slot}, {i}"));
    if !exclusive {
        e.ins(format!("add.s64 {slot}, {slot}, 1"));
    }
    let state = e.reg(Class::B64);
    e.ins(format!("mad.lo.s64 {state}, {slot}, {}, {prefixes}", cx.layout.size));
    if exclusive {
        let (first, absent) = (e.reg(Class::Pred), e.reg(Class::Pred));
        e.ins(format!("setp.eq.u64 {first}, {i}, 0"));
        e.ins(format!("and.pred {absent}, {first}, {empty_first}"));
        let present = e.label("present");
        e.ins(format!("@!{absent} bra {present}"));
        let spare = (regions > 0).then(|| {
            let base = f.region(0);
            f.mem_view(base)
        });
        readout_at(&mut f, &params, &inputs, &outputs, row, None, spare);
        f.l.e.ins(format!("bra.uni {}", f.exit));
        f.l.e.place(&present);
    }
    let view = f.mem_view(state);
    readout_at(&mut f, &params, &inputs, &outputs, row, Some(view), None);
    f.finish()
}

pub(crate) fn identity(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>) -> Option<Generated> {
    let body = cx.agg.identity.as_ref()?;
    let mut f = Frame::new(cx, math, Kernel::Identity, &[body], 0);
    let count = f.param("count");
    let gid = f.index_below(count);
    let params = param_bases(&mut f, &[body]);
    let (out, stride) = (f.param("out"), f.param("stride"));
    let at = f.l.e.reg(Class::B64);
    f.l.e.ins(format!("mad.lo.s64 {at}, {gid}, {stride}, {out}"));
    let mut io = f.io();
    io.params = params;
    io.out = Some(f.mem_view(at));
    f.l.body(body, &io);
    Some(f.finish())
}
