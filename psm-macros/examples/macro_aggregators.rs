//! A Mamba-style diagonal recurrence (diag_affine, and Mamba's S6 layer with its
//! weights as typed params) and online softmax declared in Rust with
//! `#[psm_aggregator]`, run through psm-runtime with the user's own structs (runs in
//! every form, step-by-step streams, runs resumed from a final state), and checked bit
//! for bit against the `.psm` versions in examples/ops/.
//!
//!     cargo run -p psm-macros --example macro_aggregators

#[path = "common/ops.rs"]
mod ops;
#[path = "common/compare.rs"]
mod compare;

fn main() {
    for backend in [psm::Backend::Cpu, psm::Backend::Interp] {
        let n = compare::diag_affine(backend, 257);
        println!("diag_affine     {:<6}: {n} values, bit-identical to examples/ops/diag_affine.psm", backend.name());
        let n = compare::mamba_s6::<8, 4>(backend, 257);
        println!("mamba_s6        {:<6}: {n} values, bit-identical to examples/ops/mamba_s6.psm", backend.name());
        let n = compare::mamba_s6::<64, 16>(backend, 257);
        println!("mamba_s6<64,16> {:<6}: {n} values, bit-identical to examples/ops/mamba_s6.psm -D D=64 -D N=16", backend.name());
        let n = compare::causal_mean(backend, 257);
        println!("causal_mean     {:<6}: {n} values, bit-identical to examples/ops/causal_mean.psm", backend.name());
        let n = compare::ema(backend, 257);
        println!("ema (f64)       {:<6}: {n} values, bit-identical to examples/ops/ema.psm", backend.name());
        let n = compare::online_softmax(backend, 257);
        println!("online_softmax  {:<6}: {n} values, bit-identical to examples/ops/online_softmax.psm", backend.name());
    }
    // The Rust stays plain Rust.
    let x = ops::diag_affine::State { a: [0.5; 16], b: [1.0; 16] };
    let y = ops::diag_affine::combine(&x, &x);
    println!("plain Rust: combine(x, x).b[0] = {}", y.b[0]);
}
