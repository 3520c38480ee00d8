//! The forms on the device, over the kernels of psm-codegen's CUDA ABI, for a whole
//! batch at once (every launch covers every sequence). Same schedules and bracketings
//! as the CPU's forms (`crate::forms`):
//!
//! * [`recurrent`] — one `psm_scan` thread per sequence over all steps;
//! * [`chunked`] — chunk aggregates (`psm_scan` without outputs), the exclusive scan of
//!   the aggregates by the tree's sweep ([`sweep`]; associative, so any bracketing),
//!   then every chunk re-scanned from its carry writing outputs;
//! * [`tree`] — lift every step, the fixed Blelloch up-sweep and down-sweep level by
//!   level with `psm_combine` (exactly the bracketing of `forms::tree`), read out
//!   every step;
//! * [`Counter`] — the stream's binary counter of subtree roots with cached folds,
//!   elements resident on the device, one step of every sequence per push; bit-identical
//!   to the tree on the device, since every combine runs the same `psm_combine` code.
//!
//! Element arrays are `[nseq, count]` elements; every function assumes at least one step.

use psm_codegen::ptx::{CARRY_IN, EMPTY_FIRST, HAS_STATE, LEFT_IDENTITY, NO_STATE_OUT, WRITE_OUTPUTS};
use psm_ir::ir::ReadoutKind;

use super::device::DeviceBuffer;
use super::launch::{Launcher, Operand};
use crate::error::RunError;

/// What a form leaves: p_T of every sequence (`[nseq]` elements, when asked for and
/// present) and the most elements one sequence held at once.
pub(crate) struct FormEnd {
    pub final_state: Option<DeviceBuffer>,
    pub held: usize,
}

fn elements(l: &Launcher<'_>, what: &str, per_seq: usize) -> Result<DeviceBuffer, RunError> {
    let bytes = l
        .nseq
        .checked_mul(per_seq)
        .and_then(|n| n.checked_mul(l.elem))
        .ok_or_else(|| RunError::TooLarge { what: what.to_string() })?;
    l.device.alloc(what, bytes, false)
}

/// Slot `slot` of every sequence of an element array `[nseq, per_seq]`, copied into a
/// new `[nseq]` array.
pub(crate) fn column(l: &Launcher<'_>, from: &DeviceBuffer, per_seq: usize, slot: usize) -> Result<DeviceBuffer, RunError> {
    let out = elements(l, "the final state", 1)?;
    l.device.copy_rows(from, slot * l.elem, per_seq * l.elem, &out, 0, l.elem, l.elem, l.nseq)?;
    Ok(out)
}

pub(crate) fn recurrent(l: &Launcher<'_>, init: Option<&DeviceBuffer>, keep_state: bool, reverse: u32) -> Result<FormEnd, RunError> {
    let state = keep_state.then(|| elements(l, "the final state", 1)).transpose()?;
    let mut flags = WRITE_OUTPUTS | reverse;
    if init.is_some() {
        flags |= HAS_STATE;
    }
    if state.is_none() {
        flags |= NO_STATE_OUT;
    }
    l.scan(l.steps, init, state.as_ref(), flags)?;
    Ok(FormEnd { final_state: state, held: 1 })
}

pub(crate) fn chunked(l: &Launcher<'_>, init: Option<&DeviceBuffer>, chunk: usize, keep_state: bool, reverse: u32) -> Result<FormEnd, RunError> {
    let q = l.steps.div_ceil(chunk);
    // 1. Every chunk's aggregate.
    let aggregates = elements(l, "the chunk aggregates", q)?;
    l.scan(chunk, None, Some(&aggregates), reverse)?;
    // 2. Their exclusive prefixes p_0 (= s0) … p_Q.
    let (prefixes, held) = sweep(l, aggregates, q, init)?;
    // 3. Every chunk from its carry p_q (chunk 0 from s0, when given).
    let carries = elements(l, "the chunk carries", q)?;
    l.device.copy_rows(&prefixes, 0, (q + 1) * l.elem, &carries, 0, q * l.elem, q * l.elem, l.nseq)?;
    let mut flags = WRITE_OUTPUTS | CARRY_IN | NO_STATE_OUT | reverse;
    if init.is_some() {
        flags |= HAS_STATE;
    }
    l.scan(chunk, Some(&carries), None, flags)?;
    let final_state = keep_state.then(|| column(l, &prefixes, q + 1, q)).transpose()?;
    Ok(FormEnd { final_state, held: held + q })
}

pub(crate) fn tree(l: &Launcher<'_>, init: Option<&DeviceBuffer>, keep_state: bool, reverse: u32) -> Result<FormEnd, RunError> {
    let n = l.steps;
    let leaves = elements(l, "the tree's leaves", n)?;
    l.lift(&leaves, reverse)?;
    let (prefixes, held) = sweep(l, leaves, n, init)?;
    let empty = if init.is_none() { EMPTY_FIRST } else { 0 };
    l.readout(&prefixes, reverse | empty)?;
    let final_state = keep_state.then(|| column(l, &prefixes, n + 1, n)).transpose()?;
    Ok(FormEnd { final_state, held })
}

/// The fixed Blelloch tree over `n` leaves per sequence (`forms::tree`, steps 2–3):
/// returns the prefixes `[nseq, n + 1]` (slot 0 holds s0 when given, and is never
/// written otherwise) and the elements held per sequence.
pub(crate) fn sweep(l: &Launcher<'_>, leaves: DeviceBuffer, n: usize, s0: Option<&DeviceBuffer>) -> Result<(DeviceBuffer, usize), RunError> {
    let (nseq, e) = (l.nseq, l.elem);
    // Up-sweep: level i holds the n >> i complete aligned blocks of 2^i leaves.
    let mut levels = vec![(leaves, n)];
    while let Some(&(ref below, count)) = levels.last().filter(|(_, c)| *c >= 2) {
        let above = elements(l, "a tree level", count / 2)?;
        l.combine(
            nseq,
            count / 2,
            Operand::of(&above, e, count / 2, 0, 1),
            Operand::of(below, e, count, 0, 2),
            Operand::of(below, e, count, 1, 2),
            0,
        )?;
        levels.push((above, count / 2));
    }
    // Down-sweep, top level first: p[(2k+1)·b] = p[2k·b] • level_b[2k].
    let prefixes = elements(l, "the prefixes", n + 1)?;
    if let Some(s) = s0 {
        l.device.copy_rows(s, 0, e, &prefixes, 0, (n + 1) * e, e, nseq)?;
    }
    for (i, (level, count)) in levels.iter().enumerate().rev() {
        let block = 1usize << i;
        let nodes = (n / block).div_ceil(2);
        let pre = |first: usize| Operand::of(&prefixes, e, n + 1, first, 2 * block);
        let mut k0 = 0;
        if s0.is_none() {
            // p_0 is the flagged identity: p[b] is a copy of the first node.
            l.combine(nseq, 1, pre(block), pre(0), Operand::of(level, e, *count, 0, 2), LEFT_IDENTITY)?;
            k0 = 1;
        }
        if nodes > k0 {
            l.combine(
                nseq,
                nodes - k0,
                pre((2 * k0 + 1) * block),
                pre(2 * k0 * block),
                Operand::of(level, e, *count, 2 * k0, 2),
                0,
            )?;
        }
    }
    let held = levels.iter().map(|(_, c)| c).sum::<usize>() + n + 1;
    Ok((prefixes, held))
}

/// Bytes of one step of one sequence, per input field and per output field.
pub(crate) struct StepSizes {
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
}

/// The binary counter of one batch: every sequence runs the same schedule, so each
/// root and fold is one `[nseq]` element array. An initial state is a bottom root that
/// never merges (as on the CPU).
pub(crate) struct Counter {
    base: Option<DeviceBuffer>,
    /// (size, roots, folds of base and roots up to this one; `None` for the first root
    /// without a base).
    roots: Vec<(u64, DeviceBuffer, Option<DeviceBuffer>)>,
    /// The most elements held at once, per sequence.
    pub peak: usize,
}

impl Counter {
    pub fn new(base: Option<DeviceBuffer>) -> Counter {
        let mut c = Counter { base, roots: Vec::new(), peak: 0 };
        c.peak = c.held();
        c
    }

    fn held(&self) -> usize {
        usize::from(self.base.is_some()) + self.roots.len() + self.roots.iter().filter(|r| r.2.is_some()).count()
    }

    /// The exclusive prefix before the next push.
    pub fn prefix(&self) -> Option<&DeviceBuffer> {
        match self.roots.last() {
            Some((_, root, fold)) => Some(fold.as_ref().unwrap_or(root)),
            None => self.base.as_ref(),
        }
    }

    fn combined(l: &Launcher<'_>, left: &DeviceBuffer, right: &DeviceBuffer) -> Result<DeviceBuffer, RunError> {
        let out = elements(l, "a stream element", 1)?;
        let one = |b: &DeviceBuffer| Operand::of(b, l.elem, 1, 0, 0);
        l.combine(l.nseq, 1, one(&out), one(left), one(right), 0)?;
        Ok(out)
    }

    /// Merges equal-size roots (older on the left), then caches the fold of the new top.
    pub fn push(&mut self, l: &Launcher<'_>, leaf: DeviceBuffer) -> Result<(), RunError> {
        let mut size = 1u64;
        let mut root = leaf;
        while self.roots.last().is_some_and(|r| r.0 == size) {
            let (_, older, _) = self.roots.pop().expect("checked");
            root = Self::combined(l, &older, &root)?;
            size *= 2;
        }
        let fold = self.prefix().map(|p| Self::combined(l, p, &root)).transpose()?;
        self.roots.push((size, root, fold));
        self.peak = self.peak.max(self.held());
        Ok(())
    }

    /// Runs the steps of `l` (its inputs and outputs are the batch's `[nseq, steps]`
    /// buffers) through the counter, one step of every sequence at a time: the step's
    /// inputs are gathered into `[nseq, 1]` buffers, lifted, read out against the
    /// counter's prefix before (exclusive) or after (inclusive) the push, and the
    /// outputs scattered back.
    pub fn run_steps(&mut self, l: &Launcher<'_>, sizes: &StepSizes, readout: ReadoutKind, reverse: bool) -> Result<(), RunError> {
        let (nseq, steps, e) = (l.nseq, l.steps, l.elem);
        let alloc_step = |what: &str, row_bytes: &[usize]| -> Result<Vec<DeviceBuffer>, RunError> {
            row_bytes.iter().map(|&b| l.device.alloc(what, nseq * b, false)).collect()
        };
        let step_inputs = alloc_step("a step's inputs", &sizes.inputs)?;
        let step_outputs = alloc_step("a step's outputs", &sizes.outputs)?;
        let prefixes = elements(l, "a step's prefixes", 2)?;
        let one = Launcher {
            device: l.device,
            kernels: l.kernels,
            params: l.params,
            inputs: &step_inputs,
            outputs: &step_outputs,
            nseq,
            steps: 1,
            elem: e,
            combines: std::cell::Cell::new(0),
            lanes: None,
            block: l.block,
        };
        for j in 0..steps {
            let t = if reverse { steps - 1 - j } else { j };
            for ((src, dst), &row) in l.inputs.iter().zip(&step_inputs).zip(&sizes.inputs) {
                l.device.copy_rows(src, t * row, steps * row, dst, 0, row, row, nseq)?;
            }
            let leaf = elements(l, "a stream element", 1)?;
            one.lift(&leaf, 0)?;
            // Inclusive readouts read the prefix after the push, exclusive ones before.
            let (slot, mut pending) = match readout {
                ReadoutKind::Inclusive => {
                    self.push(&one, leaf)?;
                    (1, None)
                }
                ReadoutKind::Exclusive => (0, Some(leaf)),
            };
            let empty = match self.prefix() {
                Some(p) => {
                    l.device.copy_rows(p, 0, e, &prefixes, slot * e, 2 * e, e, nseq)?;
                    0
                }
                None => EMPTY_FIRST,
            };
            one.readout(&prefixes, empty)?;
            if let Some(leaf) = pending.take() {
                self.push(&one, leaf)?;
            }
            for ((src, dst), &row) in step_outputs.iter().zip(l.outputs).zip(&sizes.outputs) {
                l.device.copy_rows(src, 0, row, dst, t * row, steps * row, row, nseq)?;
            }
        }
        l.combines.set(l.combines.get() + one.combines.get());
        Ok(())
    }
}
