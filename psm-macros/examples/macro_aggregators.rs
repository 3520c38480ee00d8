//! Mamba-style diagonal recurrence and online softmax declared in Rust with
//! `#[psm_aggregator]`, run through psm-runtime, and checked bit for bit against the
//! `.psm` versions (examples/ops/diag_affine.psm, examples/ops/online_softmax.psm).
//!
//!     cargo run -p psm-macros --example macro_aggregators

#[path = "common/ops.rs"]
mod ops;
#[path = "common/compare.rs"]
mod compare;

fn main() {
    for backend in [psm::Backend::Cpu, psm::Backend::Interp] {
        let n = compare::diag_affine(backend, 257);
        println!("diag_affine     {:<6}: {n} outputs, bit-identical to examples/ops/diag_affine.psm", backend.name());
        let n = compare::online_softmax(backend, 257);
        println!("online_softmax  {:<6}: {n} outputs, bit-identical to examples/ops/online_softmax.psm", backend.name());
    }
    // The Rust stays plain Rust.
    let x = ops::diag_affine::State { a: [0.5; 16], b: [1.0; 16] };
    let y = ops::diag_affine::combine(&x, &x);
    println!("plain Rust: combine(x, x).b[0] = {}", y.b[0]);
}
