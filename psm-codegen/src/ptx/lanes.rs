//! `psm_lanes`: the recurrent scan with one thread per (sequence, entry) for operators
//! whose element fields and outputs are vectors of one length D and whose bodies read
//! each element field only at the entry they write (every entry an independent scalar
//! scan: diagonal affine, EMA over channels, ...). Over `[B, T, D]` inputs, consecutive
//! threads take consecutive entries, so every step's loads and stores are coalesced
//! across the entry axis; the loop over T lifts four steps before it combines them, so
//! four steps of loads are in flight. Its own module ([`compile_lanes`]).
//!
//! ```text
//! psm_lanes(params…, inputs…, outputs…, nseq, steps, chunk, state_in, state_out, flags: u32)
//! ```
//!
//! `psm_scan`'s parameters, flags and meaning (the fused loop over chunk c of sequence
//! s, starting from slot `s · nchunks + c` of `state_in` under `HAS_STATE`/`CARRY_IN`,
//! outputs under `WRITE_OUTPUTS`, the final prefix into the same slot of `state_out`
//! unless `NO_STATE_OUT`), with D threads per (sequence, chunk): `nseq · ⌈steps /
//! chunk⌉ · D` threads, thread `(s · nchunks + c) · D + i` running entry i, on registers
//! (the bodies are lowered with their index variable bound to i, rather than looped
//! over). A runtime runs the recurrent and chunked forms with it in place of
//! `psm_scan`, with the same bracketing.

use std::collections::BTreeSet;

use psm_ir::ir::{Body, Expr, ReadoutKind, Role, Source, Target};

use super::emit::{suffix, Class, Reg};
use super::kernels::{combine_into, lift_at, param_bases, readout_at, used, Frame};
use super::lookback::{fresh, view, Regs};
use super::lower::Ctx;
use super::math::MathFn;
use super::{Kernel, PtxError, PtxModule, PtxOptions, CARRY_IN, HAS_STATE, NO_STATE_OUT, REVERSE, WRITE_OUTPUTS};
use crate::layout::dtype_size;

/// Steps lifted before they are combined.
const UNROLL: usize = 4;

/// The lanes kernel of one aggregator.
#[derive(Debug, Clone)]
pub struct LanesModule {
    /// A module whose only kernel is `psm_lanes`.
    pub module: PtxModule,
    /// Entries per element field (D): threads per sequence.
    pub lanes: usize,
}

/// D when every element field and output has shape [D], locals are scalars, and every
/// statement writes one entry and reads element fields only at that entry.
fn lanes_of(cx: &Ctx<'_>) -> Option<usize> {
    let (agg, info) = (cx.agg, cx.info);
    let mut vector = agg.tensors_of(Role::Element).chain(agg.tensors_of(Role::Output)).map(|t| info.shape(t));
    let d = match vector.next()? {
        [d] => *d,
        _ => return None,
    };
    if !vector.all(|s| s == [d]) || info.local_shapes.iter().any(|s| !s.is_empty()) {
        return None;
    }
    let bodies = [Some(&agg.lift), Some(&agg.combine), Some(&agg.readout), agg.identity.as_ref()];
    for stmt in bodies.into_iter().flatten().flat_map(|b| &b.stmts) {
        let own = match (stmt.target, stmt.indices.as_slice()) {
            (Target::Tensor(_), [v]) => Some(*v),
            (Target::Local(_), []) => None,
            _ => return None,
        };
        let mut at_own_entry = true;
        let mut stack = vec![stmt.value];
        while let Some(e) = stack.pop() {
            let expr = &agg.exprs[e];
            if let Expr::Load { source: Source::Element(..), indices } = expr {
                let own_entry = matches!((own, indices.as_slice()), (Some(v), [i]) if matches!(agg.exprs[*i], Expr::Index(w) if w == v));
                at_own_entry &= own_entry;
            }
            expr.for_each_child(|c| stack.push(c));
        }
        if !at_own_entry {
            return None;
        }
    }
    Some(d)
}

/// The lanes module of an aggregator, or `None` when its entries are not independent
/// (or its element is not a set of vectors of one length).
pub fn compile_lanes(agg: &psm_ir::ir::Aggregator, info: &psm_ir::valid::Info, options: &PtxOptions) -> Result<Option<LanesModule>, PtxError> {
    let version = super::isa_version(options.arch).ok_or(PtxError::UnsupportedArch(options.arch))?;
    let cx = Ctx::new(agg, info);
    let Some(lanes) = lanes_of(&cx) else { return Ok(None) };
    let mut math = BTreeSet::new();
    let g = kernel(&cx, &mut math, lanes);
    if g.local_bytes > super::LOCAL_LIMIT {
        return Err(PtxError::LocalMemory { kernel: Kernel::Lanes.name(), bytes: g.local_bytes, limit: super::LOCAL_LIMIT });
    }
    let text = super::module_text(&cx, options, version, &math, std::slice::from_ref(&g));
    let module = PtxModule { text, layout: cx.layout.clone(), local_bytes: g.local_bytes, kernels: vec![g.sig] };
    Ok(Some(LanesModule { module, lanes }))
}

/// The address of entry `lane` of every field of element `k` of the array at `base`.
fn entry_addresses(f: &mut Frame<'_>, base: Reg, k: Reg, lane: Reg) -> Vec<Reg> {
    let layout = f.l.cx.layout.clone();
    let e = &mut f.l.e;
    let elem = e.reg(Class::B64);
    e.ins(format!("mad.lo.s64 {elem}, {k}, {}, {base}", layout.size));
    layout
        .offsets
        .iter()
        .zip(&layout.dtypes)
        .map(|(&off, &d)| {
            let a = e.reg(Class::B64);
            e.ins(format!("mad.lo.s64 {a}, {lane}, {}, {elem}", dtype_size(d)));
            e.ins(format!("add.s64 {a}, {a}, {off}"));
            a
        })
        .collect()
}

fn kernel(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>, lanes: usize) -> super::kernels::Generated {
    let agg = cx.agg;
    let exclusive = agg.readout_kind == ReadoutKind::Exclusive;
    let mut f = Frame::new(cx, math, Kernel::Lanes, 0);
    let (nseq, steps, chunk) = (f.param("nseq"), f.param("steps"), f.param("chunk"));
    let d = f.l.u64_const(lanes as i64);
    let e = &mut f.l.e;
    let (nchunks, count, zero_chunk) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::Pred));
    e.comment("nchunks = ceil(steps / chunk); a chunk of 0 steps runs nothing");
    e.ins(format!("setp.eq.u64 {zero_chunk}, {chunk}, 0"));
    e.ins(format!("@{zero_chunk} bra {}", f.exit));
    e.ins(format!("add.s64 {nchunks}, {steps}, {chunk}"));
    e.ins(format!("sub.s64 {nchunks}, {nchunks}, 1"));
    e.ins(format!("div.u64 {nchunks}, {nchunks}, {chunk}"));
    e.ins(format!("mul.lo.s64 {count}, {nseq}, {nchunks}"));
    e.ins(format!("mul.lo.s64 {count}, {count}, {d}"));
    let gid = f.index_below(count);
    let (slot, lane) = f.divmod(gid, d);
    let (s, c) = f.divmod(slot, nchunks);
    f.l.pinned = Some(lane);
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
    let (pos, end) = (e.reg(Class::B64), e.reg(Class::B64));
    e.ins_c(format!("mul.lo.s64 {pos}, {c}, {chunk}"), "first position");
    e.ins(format!("add.s64 {end}, {pos}, {chunk}"));
    e.ins_c(format!("min.u64 {end}, {end}, {steps}"), "end position");
    let mut bodies: Vec<&Body> = vec![&agg.lift, &agg.combine, &agg.readout];
    bodies.extend(agg.identity.as_ref().filter(|_| exclusive));
    let params = param_bases(&mut f, &bodies);
    let lift_mask = used(cx, &[&agg.lift], Role::Input);
    let readout_mask = used(cx, &[&agg.readout], Role::Input);
    let any: Vec<bool> = lift_mask.iter().zip(&readout_mask).map(|(a, b)| *a || *b).collect();
    let bases = f.bases(Role::Input, "in_", &any);
    let only = |mask: &[bool]| -> Vec<Option<Reg>> { bases.iter().zip(mask).map(|(b, &u)| if u { *b } else { None }).collect() };
    let (lift_inputs, readout_inputs) = (only(&lift_mask), only(&readout_mask));
    let outputs = f.bases(Role::Output, "out_", &vec![true; agg.tensors_of(Role::Output).count()]);
    let (state_in, state_out) = (f.global("state_in"), f.global("state_out"));
    let seq_row = f.l.e.reg(Class::B64);
    f.l.e.ins_c(format!("mul.lo.s64 {seq_row}, {s}, {steps}"), "row of the sequence's step 0");
    let dtypes = cx.layout.dtypes.clone();
    let p = fresh(&mut f);
    let (from_state, blocks) = (f.l.e.label("from_state"), f.l.e.label("blocks"));
    f.l.e.ins(format!("@{has} bra {from_state}"));
    // A readout only with WRITE_OUTPUTS.
    let gated = |f: &mut Frame<'_>, read: &mut dyn FnMut(&mut Frame<'_>)| {
        let skip = f.l.e.label("skip_readout");
        f.l.e.ins(format!("@!{write} bra {skip}"));
        read(f);
        f.l.e.place(&skip);
    };

    // One position: lift, readout, combine into p (or p = e for the first).
    let row_at = |f: &mut Frame<'_>, at: Reg| {
        let t = f.memory_step(at, steps, rev);
        let row = f.l.e.reg(Class::B64);
        f.l.e.ins(format!("add.s64 {row}, {seq_row}, {t}"));
        row
    };
    let step = |f: &mut Frame<'_>, row: Reg, x: &Regs| {
        if exclusive {
            gated(f, &mut |f| readout_at(f, &params, &readout_inputs, &outputs, row, Some(view(&p)), None));
        }
        let next = fresh(f);
        combine_into(f, &params, view(&p), view(x), view(&next));
        if !exclusive {
            gated(f, &mut |f| readout_at(f, &params, &readout_inputs, &outputs, row, Some(view(&next)), None));
        }
        for (a, b) in p.iter().zip(&next) {
            f.l.mov(*a, *b);
        }
    };

    f.l.e.comment("the first position without a prefix: p = lift(x)");
    let row = row_at(&mut f, pos);
    lift_at(&mut f, &params, &lift_inputs, row, view(&p));
    if exclusive {
        let spare = fresh(&mut f);
        gated(&mut f, &mut |f| readout_at(f, &params, &readout_inputs, &outputs, row, None, Some(view(&spare))));
    } else {
        gated(&mut f, &mut |f| readout_at(f, &params, &readout_inputs, &outputs, row, Some(view(&p)), None));
    }
    f.l.e.ins(format!("add.s64 {pos}, {pos}, 1"));
    f.l.e.ins(format!("bra.uni {blocks}"));
    f.l.e.place(&from_state);
    f.l.e.comment("p = entry i of state_in[slot]");
    let src = entry_addresses(&mut f, state_in, slot, lane);
    for ((r, a), d) in p.iter().zip(&src).zip(&dtypes) {
        f.l.e.ins(format!("ld.global.{} {r}, [{a}]", suffix(d.scalar())));
    }

    f.l.e.place(&blocks);
    f.l.e.comment(format!("{UNROLL} positions at a time: every lift (and its loads) before the combines"));
    let e = &mut f.l.e;
    let (last, stop, singles, done) = (e.reg(Class::B64), e.reg(Class::Pred), e.label("singles"), e.label("done"));
    e.ins(format!("add.s64 {last}, {pos}, {UNROLL}"));
    e.ins(format!("setp.gt.u64 {stop}, {last}, {end}"));
    e.ins(format!("@{stop} bra {singles}"));
    let mut lifted = Vec::new();
    for u in 0..UNROLL {
        let at = f.l.e.reg(Class::B64);
        f.l.e.ins(format!("add.s64 {at}, {pos}, {u}"));
        let row = row_at(&mut f, at);
        let x = fresh(&mut f);
        lift_at(&mut f, &params, &lift_inputs, row, view(&x));
        lifted.push((row, x));
    }
    for (row, x) in &lifted {
        step(&mut f, *row, x);
    }
    f.l.e.ins(format!("add.s64 {pos}, {pos}, {UNROLL}"));
    f.l.e.ins(format!("bra.uni {blocks}"));

    f.l.e.place(&singles);
    let e = &mut f.l.e;
    let finished = e.reg(Class::Pred);
    e.ins(format!("setp.ge.u64 {finished}, {pos}, {end}"));
    e.ins(format!("@{finished} bra {done}"));
    let row = row_at(&mut f, pos);
    let x = fresh(&mut f);
    lift_at(&mut f, &params, &lift_inputs, row, view(&x));
    step(&mut f, row, &x);
    f.l.e.ins(format!("add.s64 {pos}, {pos}, 1"));
    f.l.e.ins(format!("bra.uni {singles}"));

    f.l.e.place(&done);
    f.l.e.comment("entry i of state_out[slot] = p unless NO_STATE_OUT");
    f.l.e.ins(format!("@{no_state} bra {}", f.exit));
    let dst = entry_addresses(&mut f, state_out, slot, lane);
    for ((r, a), d) in p.iter().zip(&dst).zip(&dtypes) {
        f.l.e.ins(format!("st.global.{} [{a}], {r}", suffix(d.scalar())));
    }
    f.finish()
}
