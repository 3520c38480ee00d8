//! psm-codegen: backends. Each takes a validated aggregator (`&Aggregator`, `&Info`)
//! and produces code; nothing unvalidated is emitted.
//!
//! * [`clif`] — Cranelift: CLIF text (`psmc emit --target clif`) and JIT-compiled
//!   native functions for the CPU.
//! * [`ptx`] — PTX text for NVIDIA GPUs (`psmc emit --target ptx`), one module of
//!   kernels per aggregator; its module documentation fixes the CUDA kernel ABI.
//!
//! Both share the backend-neutral pieces: the element layout ([`clif::Layout`], the
//! same bytes on the CPU and on the GPU), the exact evaluation of integer index
//! expressions (`index`) and the left fold every reduction is (`reduce`).
//!
//! # The CPU ABI
//!
//! Every generated function works on raw buffers laid out as follows; `psm-runtime`
//! is the only caller and guarantees sizes, alignment and non-aliasing.
//!
//! * **Element buffer** — `layout.size` bytes (a multiple of 8, 8-byte aligned); element
//!   field k lives at byte `layout.offsets[k]`, its entries row-major in its dtype
//!   (f32/i32: 4 bytes, f64: 8 bytes). Fields in declaration order.
//! * **params** — `*const *const u8`: one base pointer per param, declaration order,
//!   each a row-major tensor of its dtype.
//! * **inputs** — `*const *const u8`: one base pointer per input field for one
//!   sequence; step t's entries start at `base + t · len_k · size_of(dtype_k)`.
//! * **outputs** — `*const *mut u8`: likewise, one base pointer per output (`scan`
//!   reads the array only with `WRITE_OUTPUTS`).
//! * **scratch** — `*mut u8`, `scratch_size` bytes, 8-byte aligned, owned by the calling
//!   thread: storage for `let` tensors and the fused loop's temporaries.
//!
//! Functions (all `extern "C"`, i.e. the platform's default C calling convention):
//!
//! ```text
//! lift(params, inputs, step: u64, out: *mut u8, scratch)
//! combine(params, l: *const u8, r: *const u8, out: *mut u8, scratch)      out ≠ l, r
//! readout(params, state: *const u8, inputs, step: u64, outputs, empty: u32, scratch)
//! identity(params, out: *mut u8, scratch)                                  when declared
//! scan(params, inputs, outputs, t0: u64, t1: u64, state: *mut u8, flags: u32, scratch) -> u32
//! ```
//!
//! `scan` is the fused recurrent loop over steps t0..t1 (t1-1 down to t0 with
//! `REVERSE`): for each step, e = lift(x_t); p' = combine(p, e) (or e when no prefix is
//! held yet); the readout of step t reads p' (inclusive) or p (exclusive; with no
//! prefix held, the declared identity or zeros with `empty`), and is written only with
//! `WRITE_OUTPUTS`. `state` holds the running prefix: read on entry when `HAS_STATE`
//! is set, written on exit; the return value says whether it holds a prefix (0 only
//! when no prefix was given and t0 = t1). With t0 = t1 it touches no pointer.
//!
//! `NO_STATE_OUT` (flag 8) says the caller does not need the prefix on exit: `state` is
//! still read on entry when `HAS_STATE` is set, but its contents on exit are unspecified
//! (it may serve as a work buffer), and with `WRITE_OUTPUTS` the prefix fields that
//! nothing reads — neither the readout nor the combine of a field that is read, e.g.
//! the running product `a` of scalar_affine, diag_affine and gla — are not computed.
//! The outputs and the return value are the same with or without it. A run that wants
//! only the outputs (a plain recurrent run) passes `WRITE_OUTPUTS | NO_STATE_OUT`; a
//! run whose final prefix is used (a chunk's aggregate, a prefill hand-off) must not.
//!
//! With `WRITE_OUTPUTS`, `scan` may read back output rows it wrote earlier in the same
//! call (an inclusive readout that copies a field keeps that field in the output's
//! rows instead of a separate buffer), so the output buffers must not be written by
//! anyone else during the call.
//!
//! Every param pointer must be valid on any call that runs a step, even without
//! `WRITE_OUTPUTS`: loads of params may be hoisted out of loops. `scratch_size` covers
//! the `let` tensors and the two element buffers `scan` rotates through.

pub mod clif;
mod index;
mod layout;
pub mod ptx;
mod reduce;
