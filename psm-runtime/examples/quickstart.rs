//! Quickstart: compile two operators of the library, run them on random data in
//! several forms, and stream a few steps.
//!
//!     cargo run -p psm-runtime --example quickstart
//!
//! * gla (gated linear attention) is associative: every form computes the same
//!   function up to rounding; the runtime picks one (`auto`) or runs the one you ask.
//! * attn_agg (the attention aggregator of a Transformer-PSM) is not associative: it
//!   means the fixed Blelloch tree, and its stream reproduces the tree bit for bit,
//!   with O(log n) stored elements.

use std::path::Path;

use psm_runtime::{Backend, DimOverride, Form, Inputs, OutputsMut, Program, RunOptions, Stream};

/// splitmix64 in (-1, 1): seeded random data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn ops() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ops")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng(42);

    // ---------------------------------------------------------------- gla
    let (k, v) = (16usize, 16usize);
    let program = Program::from_file(ops().join("gla.psm"), &[])?;
    let gla = program.aggregator("gla").expect("gla.psm declares gla");
    println!("gla: associative = {}, forms = {:?}", gla.associative(), gla.signature().forms());

    let (batch, t) = (2usize, 1000usize);
    let q = rng.vec(batch * t * k);
    let kk = rng.vec(batch * t * k);
    let vv = rng.vec(batch * t * v);
    // Decays in (0.95, 1): a long memory.
    let alpha: Vec<f32> = rng.vec(batch * t * k).iter().map(|x| 0.975 + 0.025 * x).collect();
    let inputs = Inputs::new(&[batch], t).input("q", &q).input("k", &kk).input("v", &vv).input("alpha", &alpha);

    let auto = gla.run(&inputs, &RunOptions { final_state: true, ..Default::default() })?;
    let o = auto.f32("o").expect("gla outputs o");
    println!(
        "  auto ran the {} form: o has shape {:?}; o[0, 999, :4] = {:?}",
        auto.form().name(),
        auto.tensor("o").unwrap().shape,
        &o[(t - 1) * v..(t - 1) * v + 4]
    );
    for form in [Form::Chunked, Form::Tree, Form::Stream] {
        let out = gla.run(&inputs, &RunOptions { form, chunk: Some(128), ..Default::default() })?;
        let s = out.stats();
        println!(
            "  {:9}: max |o − o_auto| = {:.2e}, {:.2} combines/step, peak {} elements/sequence",
            form.name(),
            max_diff(out.f32("o").unwrap(), o),
            s.combines_per_step(),
            s.peak_elements
        );
    }

    // Continue the first segment from its final state: the same as one longer run.
    let state = auto.final_state().expect("requested");
    let more = rng.vec(batch * 3 * k);
    let more_v = rng.vec(batch * 3 * v);
    let more_a = vec![0.9f32; batch * 3 * k];
    let next = Inputs::new(&[batch], 3).input("q", &more).input("k", &more).input("v", &more_v).input("alpha", &more_a);
    let cont = gla.run(&next, &RunOptions { initial_state: Some(state), ..Default::default() })?;
    println!("  3 more steps from the final state: o[0, 2, :4] = {:?}", &cont.f32("o").unwrap()[2 * v..2 * v + 4]);

    // A decode loop: one token of every sequence per push, its outputs written into one
    // reused buffer (`push_into`: nothing is allocated per token).
    let mut decode = gla.stream(&[batch]).open()?;
    let mut o_token = vec![0.0f32; batch * v];
    for token in 0..3 {
        let (x, xv) = (rng.vec(batch * k), rng.vec(batch * v));
        let step = Inputs::new(&[batch], 1).input("q", &x).input("k", &x).input("v", &xv).input("alpha", &more_a[..batch * k]);
        decode.push_into(&step, &mut OutputsMut::new().output("o", &mut o_token))?;
        println!("  decode token {token}: o[1, :3] = {:?}", &o_token[v..v + 3]);
    }

    // ---------------------------------------------------------------- attn_agg
    let (c, d) = (4usize, 8usize);
    let dims = [DimOverride { name: "C".into(), value: c as i64 }, DimOverride { name: "D".into(), value: d as i64 }];
    let program = Program::from_file(ops().join("attn_agg.psm"), &dims)?;
    let attn = program.aggregator("attn_agg").expect("attn_agg.psm declares attn_agg");
    println!("\nattn_agg <C = {c}, D = {d}>: associative = {}, forms = {:?}", attn.associative(), attn.signature().forms());
    let (wq, wk, wv) = (rng.vec(d * d), rng.vec(d * d), rng.vec(d * d));
    let prompt_len = 100;
    let tok = rng.vec((prompt_len + 5) * c * d);
    let prompt = Inputs::new(&[], prompt_len)
        .input("tok", &tok[..prompt_len * c * d])
        .param("wq", &wq)
        .param("wk", &wk)
        .param("wv", &wv);

    // Prefill with the tree, then hand its roots to a stream (no replay of the prompt).
    let mut pre = attn.run(&prompt, &RunOptions { form: Form::Tree, prefill: true, ..Default::default() })?;
    println!("  prefill of {prompt_len} steps: {:.2} combines/step", pre.stats().combines_per_step());
    let mut stream = Stream::from_prefill(pre.take_prefill().expect("requested"));

    // The same model from scratch, every step streamed: bit for bit the same outputs.
    let mut scratch = attn.stream(&[]).param("wq", &wq).param("wk", &wk).param("wv", &wv).open()?;
    for step in 0..prompt_len {
        scratch.push(&Inputs::new(&[], 1).input("tok", &tok[step * c * d..(step + 1) * c * d]))?;
    }
    for step in prompt_len..prompt_len + 5 {
        let x = &tok[step * c * d..(step + 1) * c * d];
        let y = stream.push(&Inputs::new(&[], 1).input("tok", x))?;
        let z = scratch.push(&Inputs::new(&[], 1).input("tok", x))?;
        let same = y.f32("y").unwrap().iter().zip(z.f32("y").unwrap()).all(|(a, b)| a.to_bits() == b.to_bits());
        println!("  step {step}: y[0, :3] = {:?}  (bit-identical to a stream from scratch: {same})", &y.f32("y").unwrap()[..3]);
    }
    let s = scratch.stats();
    println!(
        "  stream from scratch after {} steps: {} combines ({:.2}/step), peak {} stored elements",
        s.steps,
        s.combines,
        s.combines_per_step(),
        s.peak_elements
    );

    // The interpreter backend is the reference: the JIT agrees with it bit for bit.
    let reference = attn.with_backend(Backend::Interp).run(&prompt, &RunOptions::default())?;
    let jit = attn.run(&prompt, &RunOptions::default())?;
    println!("  JIT == interpreter, bit for bit: {}", reference.get("y") == jit.get("y"));
    Ok(())
}
