//! Byte layouts shared by every backend: the element buffer (the same bytes on the CPU
//! and in GPU memory), the placement of `let` tensors, and the CPU scratch plan (`let`
//! tensors, then the fused loop's two element regions).

use psm_ir::ir::{Aggregator, Body, Dtype, Role, Scalar, Target};
use psm_ir::valid::Info;

/// The element buffer: field k at byte `offsets[k]` (8-byte aligned), `field_lens[k]`
/// entries of `dtypes[k]`, row-major; `size` bytes in all, a multiple of 8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub size: usize,
    pub offsets: Vec<usize>,
    pub field_lens: Vec<usize>,
    pub dtypes: Vec<Dtype>,
}

impl Layout {
    /// The layout of `agg`'s element at the dims `info` was validated for.
    pub fn new(agg: &Aggregator, info: &Info) -> Layout {
        let mut layout = Layout { size: 0, offsets: Vec::new(), field_lens: Vec::new(), dtypes: Vec::new() };
        for t in agg.tensors_of(Role::Element) {
            let dtype = agg.tensors[t].dtype;
            let len = info.len(t);
            layout.offsets.push(layout.size);
            layout.field_lens.push(len);
            layout.dtypes.push(dtype);
            layout.size = align8(layout.size.saturating_add(len.saturating_mul(dtype_size(dtype))));
        }
        layout
    }
}

pub(crate) fn align8(n: usize) -> usize {
    n.saturating_add(7) & !7
}

/// Bytes of one entry of a declared tensor.
pub(crate) fn dtype_size(d: Dtype) -> usize {
    d.size()
}

/// Bytes of one entry of a `let` tensor (bools are stored as one byte, 0 or 1).
pub(crate) fn scalar_size(s: Scalar) -> usize {
    match s {
        Scalar::F32 | Scalar::I32 => 4,
        Scalar::F64 => 8,
        Scalar::Bool => 1,
    }
}

/// Where the scratch buffer keeps what.
///
/// Every body's `let` tensors of rank ≥ 1 live at the start of scratch (the bodies run
/// one after another, so they share the region); rank-0 `let`s are SSA variables and
/// take no memory. The fused loop's two element regions follow.
#[derive(Debug, Clone)]
pub(crate) struct ScratchPlan {
    /// Byte offset of each local of rank ≥ 1, indexed by local handle.
    pub local_offsets: Vec<Option<usize>>,
    /// Start of the fused loop's first element region (the second follows it).
    pub elements: usize,
    /// Total bytes.
    pub size: usize,
}

impl ScratchPlan {
    pub fn new(agg: &Aggregator, info: &Info, layout: &Layout) -> ScratchPlan {
        let mut local_offsets = vec![None; agg.locals.len()];
        let mut region = 0usize;
        for body in agg.bodies() {
            region = region.max(plan_body(body, info, &mut local_offsets));
        }
        let elements = align8(region);
        let size = elements.saturating_add(layout.size.saturating_mul(2));
        ScratchPlan { local_offsets, elements, size }
    }
}

fn plan_body(body: &Body, info: &Info, offsets: &mut [Option<usize>]) -> usize {
    let mut at = 0usize;
    for stmt in &body.stmts {
        if let Target::Local(l) = stmt.target {
            let shape = &info.local_shapes[l.index()];
            if shape.is_empty() || offsets[l.index()].is_some() {
                continue;
            }
            let len: usize = shape.iter().product();
            offsets[l.index()] = Some(at);
            at = align8(at.saturating_add(len.saturating_mul(scalar_size(info.local_types[l.index()]))));
        }
    }
    at
}

/// The position of every tensor within its role (how pointer arrays and element
/// fields are ordered), indexed by tensor handle.
pub(crate) fn positions(agg: &Aggregator) -> Vec<usize> {
    let mut counts = [0usize; 4];
    agg.tensors
        .iter()
        .map(|(_, t)| {
            let c = &mut counts[role_index(t.role)];
            *c += 1;
            *c - 1
        })
        .collect()
}

fn role_index(r: Role) -> usize {
    match r {
        Role::Param => 0,
        Role::Input => 1,
        Role::Element => 2,
        Role::Output => 3,
    }
}

/// Row-major strides (in entries) of a shape.
pub(crate) fn strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1].wrapping_mul(shape[k + 1] as i64);
    }
    s
}
