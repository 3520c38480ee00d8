//! `psm_lookback` for elements of independent entries (the fields of one shape whose
//! entries scan on their own, [`entry_shape`]: diagonal affine recurrences over
//! `[B, T, D]`): one pass over the data, one thread per (sequence, chunk of
//! [`CHANNEL_CHUNK`] steps, entry), a decoupled look-back per entry between chunks.
//! The same arguments, flags and status protocol as the scalar look-back kernel
//! (lookback.rs), so the runtime launches both alike; the same lowered
//! lift/combine/readout bodies as `psm_scan_entries`, each field's entry in a register.
//!
//! Blocks of [`CHANNEL_BLOCK`] threads cover consecutive entries of one (sequence,
//! chunk), so a warp reads 32 adjacent entries of a step (coalesced over the channel
//! axis). A block takes the next (sequence, chunk, entry block) from the status
//! counter, so every predecessor chunk has started (forward progress without
//! co-scheduling). A thread:
//! 1. lifts its chunk's positions (in a full chunk, unrolled, the lifted elements kept
//!    in registers so the re-scan reads nothing again) and folds them;
//! 2. publishes the aggregate in its entry's record of the chunk, walks back over the
//!    same entry's records of earlier chunks (aggregates folded until an inclusive
//!    prefix), publishes its inclusive prefix; a sequence's chunk 0 publishes only its
//!    prefix (with the initial state), so every walk ends within its sequence;
//! 3. re-scans the chunk from its exclusive prefix, writing the outputs.
//!
//! Records: [`LookbackModule::record`] bytes per (sequence, chunk, entry), after the
//! counter. Bracketings differ from the sequential fold: associative operators only.
//!
//! What bounds it: the bytes (inputs read once, outputs written once, plus the records:
//! two writes and about one read of 8 bytes per element word per chunk, about 6% of
//! diag_affine's 12 bytes per step and entry at 64 steps a chunk) and, per thread, the
//! chain chunk fold → look-back → re-scan, with as many threads resident as their
//! registers allow (a chunk's lifted elements are kept in registers: diag_affine's
//! kernel takes 92 registers at 32 steps a chunk, 154 at 64, and spills at 128).

use std::collections::BTreeSet;

use psm_ir::ir::{Body, ReadoutKind, Role};

use super::emit::{suffix, Class, Reg};
use super::kernels::{combine_into, coordinates, entry_shape, lift_at, readout_at, used, Frame, Generated};
use super::lookback::{fresh, lookback_args, op, publish_record, read_record, record_bytes, set_from_words, take_tile, view, LookbackArgs, AGGREGATE, PREFIX};
use super::lower::Ctx;
use super::math::MathFn;
use super::Kernel;
use crate::layout::dtype_size;

/// Steps per chunk of the per-entry look-back. diag_affine [B, T, D] = [8, 8192, 1024]
/// f32 on an H200 (one run, 128-thread blocks): 0.440 / 0.337 / 0.320 ms at 32 / 48 /
/// 64 steps; 128 spills registers.
pub const CHANNEL_CHUNK: usize = 64;

/// Threads per block (entries of one chunk per block): small blocks let the
/// register-bound kernel keep more threads resident (154 registers at 64 steps). Same
/// run: 0.387 / 0.320 / 0.312 ms with 256 / 128 / 64 threads.
pub const CHANNEL_BLOCK: usize = 64;

/// The element's entries (a thread each) and the kernel, when they scan independently.
pub(super) fn kernel(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>) -> Option<(usize, Generated)> {
    let shape = entry_shape(cx)?;
    let entries: usize = shape.iter().product();
    Some((entries, emit(cx, math, &shape, entries)))
}

/// Addresses of the entry's fields in element `s` of a state array (fields row-major).
fn state_fields(f: &mut Frame<'_>, state: Reg, s: Reg, e: Reg) -> Vec<Reg> {
    let layout = f.l.cx.layout.clone();
    let base = f.l.e.reg(Class::B64);
    f.l.e.ins(format!("mad.lo.s64 {base}, {s}, {}, {state}", layout.size));
    layout
        .dtypes
        .iter()
        .zip(&layout.offsets)
        .map(|(d, off)| {
            let a = f.l.e.reg(Class::B64);
            f.l.e.ins(format!("mad.lo.s64 {a}, {e}, {}, {base}", dtype_size(*d)));
            f.l.e.ins(format!("add.s64 {a}, {a}, {off}"));
            a
        })
        .collect()
}

fn emit(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>, shape: &[usize], entries: usize) -> Generated {
    let agg = cx.agg;
    let exclusive = agg.readout_kind == ReadoutKind::Exclusive;
    let record = record_bytes(cx);
    let chunk = CHANNEL_CHUNK;
    let block = CHANNEL_BLOCK;
    let entry_blocks = entries.div_ceil(block);
    let mut bodies: Vec<&Body> = vec![&agg.lift, &agg.combine, &agg.readout];
    bodies.extend(agg.identity.as_ref().filter(|_| exclusive));
    let mut f = Frame::new(cx, math, Kernel::Lookback, &bodies, 0);
    let LookbackArgs { nseq, steps, state_in, state_out, status, has0, rev, no_state, params } = lookback_args(&mut f, &bodies);
    let lift_mask = used(cx, &[&agg.lift], Role::Input);
    let readout_mask = used(cx, &[&agg.readout], Role::Input);
    let any: Vec<bool> = lift_mask.iter().zip(&readout_mask).map(|(a, b)| *a || *b).collect();
    let input_bases = f.bases(Role::Input, "in_", &any);
    let only = |mask: &[bool]| -> Vec<Option<Reg>> { input_bases.iter().zip(mask).map(|(b, &u)| if u { *b } else { None }).collect() };
    let (lift_inputs, readout_inputs) = (only(&lift_mask), only(&readout_mask));
    let outputs = f.bases(Role::Output, "out_", &vec![true; agg.tensors_of(Role::Output).count()]);

    let e = &mut f.l.e;
    let (tid32, tid) = (e.reg(Class::B32), e.reg(Class::B64));
    e.ins(format!("mov.u32 {tid32}, %tid.x"));
    e.ins(format!("cvt.u64.u32 {tid}, {tid32}"));
    e.comment(format!("chunks per sequence: ceil(steps / {chunk}); {entry_blocks} blocks of entries per chunk"));
    let (nchunks, total, zero) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::Pred));
    e.ins(format!("setp.eq.u64 {zero}, {steps}, 0"));
    e.ins(format!("@{zero} bra {}", f.exit));
    e.ins(format!("add.s64 {nchunks}, {steps}, {}", chunk - 1));
    e.ins(format!("div.u64 {nchunks}, {nchunks}, {chunk}"));
    e.ins(format!("mul.lo.s64 {total}, {nseq}, {nchunks}"));
    e.ins(format!("mul.lo.s64 {total}, {total}, {entry_blocks}"));
    let g = take_tile(&mut f, status, tid32, total);
    let eb_count = f.l.u64_const(entry_blocks as i64);
    let (sc, eb) = f.divmod(g, eb_count);
    let (s, c) = f.divmod(sc, nchunks);
    let e = &mut f.l.e;
    let (entry, outside) = (e.reg(Class::B64), e.reg(Class::Pred));
    e.ins(format!("mad.lo.s64 {entry}, {eb}, {block}, {tid}"));
    e.ins(format!("setp.ge.u64 {outside}, {entry}, {entries}"));
    e.ins_c(format!("@{outside} bra {}", f.exit), "past the last entry");
    let coords = coordinates(&mut f, entry, shape);
    f.l.entry = Some(coords);
    let e = &mut f.l.e;
    let (pos0, n, full, row0, dir, rec) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::Pred), e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64));
    e.ins_c(format!("mul.lo.s64 {pos0}, {c}, {chunk}"), "the chunk's first position");
    e.ins(format!("sub.s64 {n}, {steps}, {pos0}"));
    e.ins_c(format!("min.u64 {n}, {n}, {chunk}"), "its positions");
    e.ins(format!("setp.eq.u64 {full}, {n}, {chunk}"));
    let t0 = f.memory_step(pos0, steps, rev);
    let e = &mut f.l.e;
    e.ins(format!("mad.lo.s64 {row0}, {s}, {steps}, {t0}"));
    e.ins_c(format!("selp.s64 {dir}, -1, 1, {rev}"), "the next position's row");
    e.ins(format!("mad.lo.s64 {rec}, {sc}, {}, {entry}", entries));
    e.ins(format!("mad.lo.s64 {rec}, {rec}, {record}, {status}"));
    e.ins_c(format!("add.s64 {rec}, {rec}, 8"), "this entry's record of the chunk");

    // Walks the chunk's rows: `body(f, k, row)` for every position k (unrolled when
    // `unrolled`, else a loop over the first `n` from `from`).
    let walk = |f: &mut Frame<'_>, from: usize, unrolled: bool, body: &mut dyn FnMut(&mut Frame<'_>, Option<usize>, Reg)| {
        let e = &mut f.l.e;
        let row = e.reg(Class::B64);
        e.ins(format!("mad.lo.s64 {row}, {dir}, {from}, {row0}"));
        if unrolled {
            for k in from..chunk {
                if k > from {
                    f.l.e.ins(format!("add.s64 {row}, {row}, {dir}"));
                }
                body(f, Some(k), row);
            }
            return;
        }
        let (k, stop) = (e.reg(Class::B64), e.reg(Class::Pred));
        let (head, done) = (e.label("position"), e.label("positions_done"));
        e.ins(format!("mov.u64 {k}, {from}"));
        e.place(&head);
        e.ins(format!("setp.ge.u64 {stop}, {k}, {n}"));
        e.ins(format!("@{stop} bra {done}"));
        body(f, None, row);
        let e = &mut f.l.e;
        e.ins(format!("add.s64 {row}, {row}, {dir}"));
        e.ins(format!("add.s64 {k}, {k}, 1"));
        e.ins(format!("bra.uni {head}"));
        e.place(&done);
    };

    // 1. The chunk's aggregate; a full chunk keeps its lifted elements.
    f.l.e.comment("the chunk's aggregate");
    let kept: Vec<Vec<Reg>> = (0..chunk).map(|_| fresh(&mut f)).collect();
    let a = fresh(&mut f);
    let fold = |f: &mut Frame<'_>, x: &[Reg], first: bool| {
        if first {
            for (d, s) in a.iter().zip(x) {
                f.l.mov(*d, *s);
            }
            return;
        }
        let next = fresh(f);
        combine_into(f, &params, view(&a), view(x), view(&next));
        for (d, s) in a.iter().zip(&next) {
            f.l.mov(*d, *s);
        }
    };
    let (fold_loop, folded) = (f.l.e.label("fold_loop"), f.l.e.label("folded"));
    f.l.e.ins(format!("@!{full} bra {fold_loop}"));
    f.l.e.comment(format!("full chunk: {chunk} positions unrolled"));
    walk(&mut f, 0, true, &mut |f, k, row| {
        let k = k.expect("unrolled");
        lift_at(f, &params, &lift_inputs, row, view(&kept[k]));
    });
    for (k, x) in kept.iter().enumerate() {
        fold(&mut f, x, k == 0);
    }
    f.l.e.ins(format!("bra.uni {folded}"));
    f.l.e.place(&fold_loop);
    let (x, row) = (fresh(&mut f), f.l.e.reg(Class::B64));
    f.l.e.ins(format!("mov.u64 {row}, {row0}"));
    lift_at(&mut f, &params, &lift_inputs, row, view(&a));
    walk(&mut f, 1, false, &mut |f, _, row| {
        lift_at(f, &params, &lift_inputs, row, view(&x));
        fold(f, &x, false);
    });
    f.l.e.place(&folded);

    // 2. Publication and look-back.
    let e = &mut f.l.e;
    let (later, look_back, publish) = (e.reg(Class::Pred), e.label("look_back"), e.label("publish"));
    let excl = (fresh(&mut f), f.l.e.reg(Class::Pred));
    let init_fields = state_fields(&mut f, state_in, s, entry);
    let e = &mut f.l.e;
    e.ins(format!("setp.ne.u64 {later}, {c}, 0"));
    e.ins(format!("mov.pred {}, {has0}", excl.1));
    e.ins(format!("@{later} bra {look_back}"));
    e.comment("chunk 0: its exclusive prefix is the initial state, when given");
    load_fields(&mut f, &excl.0, &init_fields, has0);
    f.l.e.ins(format!("bra.uni {publish}"));
    f.l.e.place(&look_back);
    publish_record(&mut f, &a, rec, AGGREGATE);
    f.l.e.ins(format!("setp.ne.u32 {}, 0, 0", excl.1));
    look_back_entry(&mut f, &params, &excl, EntryLookBack { status, sc, entry, entries, record });
    f.l.e.place(&publish);
    let a_valid = (a.clone(), f.l.e.reg(Class::Pred));
    f.l.e.ins(format!("setp.eq.u32 {}, 0, 0", a_valid.1));
    let incl = op(&mut f, &params, &excl, &a_valid);
    publish_record(&mut f, &incl.0, rec, PREFIX);
    let e = &mut f.l.e;
    e.comment("p_T of the sequence from its last chunk, unless NO_STATE_OUT");
    let (not_last, last_c, skip_state) = (e.reg(Class::Pred), e.reg(Class::B64), e.label("no_state_out"));
    e.ins(format!("sub.s64 {last_c}, {nchunks}, 1"));
    e.ins(format!("setp.ne.u64 {not_last}, {c}, {last_c}"));
    e.ins(format!("or.pred {not_last}, {not_last}, {no_state}"));
    e.ins(format!("@{not_last} bra {skip_state}"));
    let out_fields = state_fields(&mut f, state_out, s, entry);
    for ((r, addr), d) in incl.0.iter().zip(&out_fields).zip(&cx.layout.dtypes) {
        f.l.e.ins(format!("st.global.{} [{addr}], {r}", suffix(d.scalar())));
    }
    f.l.e.place(&skip_state);

    // 3. The re-scan from the exclusive prefix, writing the outputs.
    f.l.e.comment("re-scan the chunk, reading out");
    let p = fresh(&mut f);
    let rescan_step = |f: &mut Frame<'_>, x: &[Reg], row: Reg| {
        if exclusive {
            readout_at(f, &params, &readout_inputs, &outputs, row, Some(view(&p)), None);
        }
        let next = fresh(f);
        combine_into(f, &params, view(&p), view(x), view(&next));
        if !exclusive {
            readout_at(f, &params, &readout_inputs, &outputs, row, Some(view(&next)), None);
        }
        for (d, s) in p.iter().zip(&next) {
            f.l.mov(*d, *s);
        }
    };
    for (d, s) in p.iter().zip(&excl.0) {
        f.l.mov(*d, *s);
    }
    let e = &mut f.l.e;
    let (fast, rescan_loop, done) = (e.reg(Class::Pred), e.label("rescan_loop"), e.label("rescan_done"));
    e.ins(format!("and.pred {fast}, {full}, {}", excl.1));
    e.ins(format!("@!{fast} bra {rescan_loop}"));
    e.comment(format!("full chunk after a prefix: {chunk} kept positions"));
    walk(&mut f, 0, true, &mut |f, k, row| rescan_step(f, &kept[k.expect("unrolled")], row));
    f.l.e.ins(format!("bra.uni {done}"));
    f.l.e.place(&rescan_loop);
    let from_prefix = f.l.e.label("from_prefix");
    let y = fresh(&mut f);
    f.l.e.ins(format!("@{} bra {from_prefix}", excl.1));
    f.l.e.comment("the sequence's first position, without a prefix");
    f.l.e.ins(format!("mov.u64 {row}, {row0}"));
    lift_at(&mut f, &params, &lift_inputs, row, view(&p));
    if exclusive {
        let spare = fresh(&mut f);
        readout_at(&mut f, &params, &readout_inputs, &outputs, row, None, Some(view(&spare)));
    } else {
        readout_at(&mut f, &params, &readout_inputs, &outputs, row, Some(view(&p)), None);
    }
    walk(&mut f, 1, false, &mut |f, _, row| {
        lift_at(f, &params, &lift_inputs, row, view(&y));
        rescan_step(f, &y, row);
    });
    f.l.e.ins(format!("bra.uni {done}"));
    f.l.e.place(&from_prefix);
    walk(&mut f, 0, false, &mut |f, _, row| {
        lift_at(f, &params, &lift_inputs, row, view(&y));
        rescan_step(f, &y, row);
    });
    f.l.e.place(&done);
    f.finish()
}

/// Loads the entry's fields into `into` when `when`.
fn load_fields(f: &mut Frame<'_>, into: &[Reg], fields: &[Reg], when: Reg) {
    let dtypes = f.l.cx.layout.dtypes.clone();
    for ((r, addr), d) in into.iter().zip(fields).zip(&dtypes) {
        f.l.e.ins(format!("@{when} ld.global.{} {r}, [{addr}]", suffix(d.scalar())));
    }
}

/// What the per-entry look-back reads.
struct EntryLookBack {
    status: Reg,
    /// The chunk's index among every sequence's chunks (s · nchunks + c), c > 0.
    sc: Reg,
    entry: Reg,
    entries: usize,
    record: usize,
}

/// The thread folds the records of its entry in the chunks before its own, nearest
/// first: each waited for until published (one status in every slot), aggregates
/// folded until an inclusive prefix. The sequence's first chunk publishes only its
/// prefix (with the initial state), so the walk ends within the sequence. `excl`
/// (invalid on entry) receives the fold.
fn look_back_entry(f: &mut Frame<'_>, params: &[Option<Reg>], excl: &(Vec<Reg>, Reg), lb: EntryLookBack) {
    let EntryLookBack { status, sc, entry, entries, record } = lb;
    let words = record / 8;
    let e = &mut f.l.e;
    let (j, addr, back) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64));
    let (spin, done) = (e.label("spin"), e.label("look_back_done"));
    e.ins_c(format!("sub.s64 {j}, {sc}, 1"), "the chunk before");
    e.ins_c(format!("mov.u64 {back}, {}", entries * record), "bytes between a chunk's records and the next's");
    e.ins(format!("mad.lo.s64 {addr}, {j}, {entries}, {entry}"));
    e.ins(format!("mad.lo.s64 {addr}, {addr}, {record}, {status}"));
    e.ins(format!("add.s64 {addr}, {addr}, 8"));
    e.place(&spin);
    let (data, flag) = read_record(e, addr, words, None);
    let waiting = e.reg(Class::Pred);
    e.ins(format!("setp.eq.u32 {waiting}, {flag}, 0"));
    e.ins(format!("@{waiting} bra {spin}"));
    let x = (fresh(f), f.l.e.reg(Class::Pred));
    set_from_words(f, &x.0, &data);
    f.l.e.ins(format!("setp.eq.u32 {}, 0, 0", x.1));
    let folded = op(f, params, &x, excl);
    for (d, s) in excl.0.iter().zip(&folded.0) {
        f.l.mov(*d, *s);
    }
    f.l.mov(excl.1, folded.1);
    let e = &mut f.l.e;
    let is_prefix = e.reg(Class::Pred);
    e.ins(format!("setp.eq.u32 {is_prefix}, {flag}, {PREFIX}"));
    e.ins(format!("@{is_prefix} bra {done}"));
    e.ins(format!("sub.s64 {addr}, {addr}, {back}"));
    e.ins(format!("bra.uni {spin}"));
    e.place(&done);
}
