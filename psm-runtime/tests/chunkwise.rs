//! The chunkwise form (`Form::Chunkwise`) on every library operator it applies to,
//! against psm-ir's interpreter (the f64 fold) and the recurrent form, at awkward
//! lengths (0 to 3, 7, chunk ± 1, powers of two, several chunks with a ragged tail),
//! batch [2]: outputs and final states, runs chained through initial and final states,
//! reverse scans, prefill → stream hand-offs and decays of exactly 0; one sequence in
//! parts across threads; three operators
//! again at K = 20, V = 24 (the chunk's vector kernels); the other operators are refused
//! with psm-ir's reason.
//!
//! Tolerance: the norm-wise relative error ‖out − ref‖ / ‖ref‖ of every sequence below
//! 1e-5 (f32 data against the f64 reference; "far below 1e-3" as issue 6 asks), and
//! every entry (outputs and final-state fields) within 1e-4·(|ref| + running max |ref|)
//! (the normalization of the other form tests); a bf16/f16 output adds one unit in the
//! last place of its format at 1 to both (`Dtype::rounding_bound`).

mod common;

use common::*;
use psm_ir::derive::Form as RefForm;
use psm_ir::interp::Precision;
use psm_ir::ir::Role;
use psm_runtime::{Aggregator, Backend, Form, Outputs, OutputsMut, RunError, RunOptions, State, Stream};

const CHUNK: usize = 8;
const LENGTHS: [usize; 11] = [0, 1, 2, 3, CHUNK - 1, CHUNK, CHUNK + 1, 16, 3 * CHUNK + 5, 64, 200];
const APPLIES: [&str; 9] = ["deltanet", "gated_deltanet", "gla", "gla_bf16", "linear_attention", "mamba2", "mlstm_affine", "retnet", "rwkv6"];
const TOL: f64 = 1e-4;


fn chunkwise(chunk: usize) -> RunOptions<'static> {
    RunOptions { form: Form::Chunkwise, chunk: Some(chunk), ..Default::default() }
}

/// Outputs of steps `from..` of a reference run against `out`'s sequence `b` (`steps`
/// steps each); returns the worst norm-wise error.
fn check_outputs(what: &str, agg: &Aggregator, out: &Outputs, b: usize, steps: usize, reference: &psm_ir::derive::Outputs, from: usize) -> f64 {
    let mut worst = 0.0f64;
    for (k, name) in names(agg, Role::Output).iter().enumerate() {
        let width = lens(agg, Role::Output)[k];
        let found = seq_slice(out.get(name).unwrap(), b, steps * width);
        let want = &reference.outputs[k][from * width..(from + steps) * width];
        let what = format!("{what} seq {b} `{name}`");
        // A bf16/f16 output may round to the neighbour of the reference's.
        let rounding = dtypes(agg, Role::Output)[k].rounding_bound();
        let err = norm_error(&found, want);
        assert!(err < 1e-5 + rounding, "{what}: ‖out − ref‖/‖ref‖ = {err:e}");
        worst = worst.max(err);
        close(&what, &found, want, width, false, TOL + rounding);
    }
    worst
}

/// Sequence `b`'s final state against the reference's last prefix, field by field.
fn check_state(what: &str, agg: &Aggregator, state: &State, b: usize, reference: &psm_ir::derive::Outputs) {
    for (k, len) in lens(agg, Role::Element).iter().enumerate() {
        let found = seq_slice(&state.fields[k].data, b, *len);
        close_state(&format!("{what} seq {b} final `{}`", state.fields[k].name), &found, &reference.prefixes, k, false, TOL);
    }
}

/// Runs `agg` chunkwise on seeded data and checks every sequence's outputs and final
/// state against the f64 fold and the outputs against the f32 recurrent form; returns
/// the worst norm-wise error.
fn check(agg: &Aggregator, batch: &Batch, n: usize, chunk: usize) -> f64 {
    let nseq = 2;
    let bufs = batch.input_bufs(agg, nseq, n);
    let x = inputs(agg, &[nseq], n, &bufs, &batch.param_bufs);
    let opts = RunOptions { final_state: true, ..chunkwise(chunk) };
    let out = agg.run(&x, &opts).unwrap_or_else(|e| panic!("{}: {e}", agg.name()));
    assert_eq!(out.form(), Form::Chunkwise);
    let recurrent = agg.run(&x, &RunOptions { form: Form::Recurrent, ..Default::default() }).unwrap();
    let mut worst = 0.0f64;
    for b in 0..nseq {
        let what = format!("{} chunk {chunk} n={n}", agg.name());
        let reference = reference(agg, Precision::F64, RefForm::Fold, &batch.params, &batch.first(agg, b, n), n);
        worst = worst.max(check_outputs(&what, agg, &out, b, n, &reference, 0));
        let state = out.final_state().expect("a final state (T = 0: the declared identity)");
        if n > 0 {
            check_state(&what, agg, state, b, &reference);
        }
        for (k, name) in names(agg, Role::Output).iter().enumerate() {
            let width = lens(agg, Role::Output)[k];
            let found = seq_slice(out.get(name).unwrap(), b, n * width);
            // A bf16/f16 output may round to the neighbour of the other's.
            let rounding = dtypes(agg, Role::Output)[k].rounding_bound();
            let rec = seq_slice(recurrent.get(name).unwrap(), b, n * width);
            close(&format!("{what} seq {b} `{name}` vs recurrent"), &found, &rec, width, false, TOL + rounding);
        }
    }
    worst
}

fn dims_of(name: &str) -> Vec<(&'static str, i64)> {
    match name {
        "deltanet" | "gated_deltanet" => vec![("K", 6), ("V", 5)],
        _ => vec![("K", 7), ("V", 5)],
    }
}

fn applies() -> impl Iterator<Item = Aggregator> {
    APPLIES.iter().map(|name| load(name, &dims_of(name)).with_backend(Backend::Cpu))
}

#[test]
fn every_operator_it_applies_to_matches_the_interpreter() {
    let mut applied = Vec::new();
    let mut report = String::new();
    for name in library_names() {
        let dims = if APPLIES.contains(&name.as_str()) { dims_of(&name) } else { vec![] };
        let agg = load(&name, &dims).with_backend(Backend::Cpu);
        match agg.chunkwise() {
            Ok(_) => applied.push(name.clone()),
            Err(RunError::ChunkwiseNotApplicable { .. }) => {
                let opts = RunOptions { form: Form::Chunkwise, ..Default::default() };
                let batch = Batch::new(&agg, 1, 3, 1);
                let bufs = batch.input_bufs(&agg, 1, 3);
                let err = agg.run(&inputs(&agg, &[1], 3, &bufs, &batch.param_bufs), &opts).unwrap_err();
                assert!(matches!(err, RunError::ChunkwiseNotApplicable { .. }), "{name}: {err}");
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        }
        let batch = Batch::new(&agg, 2, 200, 7);
        let mut worst = 0.0f64;
        for n in LENGTHS {
            worst = worst.max(check(&agg, &batch, n, CHUNK));
        }
        // The default chunk, and a chunk longer than the sequence.
        worst = worst.max(check(&agg, &batch, 200, psm_runtime::chunkwise::DEFAULT_CHUNK));
        worst = worst.max(check(&agg, &batch, 3 * CHUNK + 5, 64));
        report.push_str(&format!("{name}: worst ‖out − ref‖/‖ref‖ {worst:.1e}\n"));
    }
    assert_eq!(applied, APPLIES);
    println!("{report}");
}

/// Keys and values wide enough for the chunk's vector kernels (the other tests' K = 7,
/// V = 5 take only their one-entry tails): V = 24 is a 16- and an 8-column block, K = 20
/// two 8-lane dot products and a tail of 4, for a diagonal decay with an exclusive
/// readout (RWKV-6), per-key gates given as values (GLA) and the delta rule.
#[test]
fn wide_keys_and_values_match_the_interpreter() {
    for name in ["gla", "rwkv6", "gated_deltanet"] {
        let agg = load(name, &[("K", 20), ("V", 24)]).with_backend(Backend::Cpu);
        let batch = Batch::new(&agg, 2, 200, 11);
        for (n, chunk) in [(200, psm_runtime::chunkwise::DEFAULT_CHUNK), (3 * CHUNK + 5, CHUNK)] {
            check(&agg, &batch, n, chunk);
        }
    }
}

/// A GLA-like operator with a per-key gate `GATE` (an expression of `x.w[i]`, replaced
/// by each test).
const DIAGONAL: &str = "aggregator g<K = 4, V = 3> {
    input { q[K], k[K], v[V], w[K] }
    element { a[K], s[K, V] }
    identity { a[i] = 1.0; s[i, j] = 0.0; }
    lift(x) { a[i] = GATE; s[i, j] = x.k[i] * x.v[j]; }
    combine(l, r) { a[i] = l.a[i] * r.a[i]; s[i, j] = r.a[i] * l.s[i, j] + r.s[i, j]; }
    readout inclusive(st, x) -> o[V] { o[j] = sum(i) st.s[i, j] * x.q[i]; }
}";

/// Gates strong enough that the cumulative log decay of a chunk leaves the factored
/// range (|Λ| > 60): those chunks take the pair-by-pair path, and still match.
#[test]
fn strong_decays_take_the_log_space_path() {
    let src = DIAGONAL.replace("GATE", "exp(-8.0 * x.w[i] * x.w[i])");
    let agg = inline(&src, "g").with_backend(Backend::Cpu);
    let batch = Batch::new(&agg, 2, 100, 3);
    // w in (-1, 1): log decays down to −8 a step, 16 steps reach far past −60.
    check(&agg, &batch, 100, 16);
    // Gates given as values (multiplied cumulatively): in (0.001, 0.002), the product
    // falls below e^−60 after 10 steps, so every chunk of 16 goes to log space; the
    // same with either sign (the sign of the product kept apart from its log); and in
    // (−1, 1), mostly factored with products of either sign.
    for gate in ["0.001 * (1.0 + x.w[i] * x.w[i])", "0.002 * x.w[i]", "x.w[i]"] {
        let by_value = DIAGONAL.replace("GATE", gate);
        let agg = inline(&by_value, "g").with_backend(Backend::Cpu);
        assert!(agg.chunkwise().unwrap().to_string().contains("Diag(cw_decay_a)"));
        check(&agg, &Batch::new(&agg, 2, 100, 4), 100, 16);
    }
}

/// `run_into` (through the readout map) writes what `run` returns (GLA's outputs are its
/// contractions as they are: `run` skips the readout map), with the same final state;
/// and pools of 1 and 2 threads give the same bits (each sequence is computed alone).
#[test]
fn run_into_and_threads_give_the_same_results() {
    let agg = load("gla", &dims_of("gla")).with_backend(Backend::Cpu);
    assert!(agg.chunkwise().unwrap().direct.is_some());
    let n = 37;
    let batch = Batch::new(&agg, 3, n, 5);
    let bufs = batch.input_bufs(&agg, 3, n);
    let x = inputs(&agg, &[3], n, &bufs, &batch.param_bufs);
    let opts = RunOptions { final_state: true, ..chunkwise(8) };
    let out = agg.run(&x, &opts).unwrap();
    let mut o = vec![f32::NAN; 3 * n * 5];
    let summary = agg.run_into(&x, &mut OutputsMut::new().output("o", &mut o), &opts).unwrap();
    assert_eq!(summary.form(), Form::Chunkwise);
    assert_eq!(out.f32("o").unwrap(), &o[..]);
    assert_eq!(summary.final_state(), out.final_state());
    for threads in [1, 2] {
        let other = agg.run(&x, &RunOptions { threads: Some(threads), ..opts.clone() }).unwrap();
        assert_eq!(other.f32("o").unwrap(), out.f32("o").unwrap(), "{threads} thread(s)");
        assert_eq!(other.final_state(), out.final_state(), "{threads} thread(s)");
    }
}

/// Runs chained through the state: steps 0..j with `final_state`, then j..n from it as
/// `initial_state`, are the interpreter's run over 0..n (outputs of j..n, final state).
#[test]
fn segments_chain_through_final_and_initial_states() {
    let n = 3 * CHUNK + 5;
    for agg in applies() {
        let data = Batch::new(&agg, 2, n, 11);
        let references: Vec<_> = (0..2).map(|b| reference(&agg, Precision::F64, RefForm::Fold, &data.params, &data.first(&agg, b, n), n)).collect();
        for j in [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 1, n - 1, n] {
            let head = data.window_bufs(&agg, 2, 0, j);
            let first = agg.run(&inputs(&agg, &[2], j, &head, &data.param_bufs), &RunOptions { final_state: true, ..chunkwise(CHUNK) }).unwrap();
            let tail = data.window_bufs(&agg, 2, j, n);
            let opts = RunOptions { final_state: true, initial_state: first.final_state(), ..chunkwise(CHUNK) };
            let second = agg.run(&inputs(&agg, &[2], n - j, &tail, &data.param_bufs), &opts).unwrap();
            for (b, reference) in references.iter().enumerate() {
                let what = format!("{} split at {j} of {n}", agg.name());
                check_outputs(&what, &agg, &second, b, n - j, reference, j);
                check_state(&what, &agg, second.final_state().unwrap(), b, reference);
            }
        }
    }
}

/// One sequence on a pool of more threads runs in parts, each part's state computed
/// from the parts before it: at a length whose chunks split 2, 3 and 4 ways with a
/// ragged tail, forward from an initial state and reversed, outputs and final state
/// against the interpreter. The parts sum the state in another order than one pass, so
/// linear attention's bits differ from a 1-thread run's (which shows they ran); the
/// delta rules run whole (their transition costs as much as a part's run).
#[test]
fn one_sequence_runs_in_parts_across_threads() {
    let n = 29 * CHUNK + 3;
    // The head whose final state starts the parts: 28 chunks left.
    let j = 2 * CHUNK + 1;
    for agg in applies() {
        let data = Batch::new(&agg, 1, n, 19);
        let forward = reference(&agg, Precision::F64, RefForm::Fold, &data.params, &data.first(&agg, 0, n), n);
        let reversed = reversed_reference(&agg, &data, 0, n);
        let head = data.window_bufs(&agg, 1, 0, j);
        let first = agg.run(&inputs(&agg, &[1], j, &head, &data.param_bufs), &RunOptions { final_state: true, ..chunkwise(CHUNK) }).unwrap();
        let tail = data.window_bufs(&agg, 1, j, n);
        let whole = data.input_bufs(&agg, 1, n);
        let from_state = |threads| RunOptions { final_state: true, initial_state: first.final_state(), threads: Some(threads), ..chunkwise(CHUNK) };
        let run_tail = |threads| agg.run(&inputs(&agg, &[1], n - j, &tail, &data.param_bufs), &from_state(threads)).unwrap();
        let one_thread = run_tail(1);
        for threads in [2, 3, 4] {
            let what = format!("{} on {threads} threads", agg.name());
            let out = run_tail(threads);
            check_outputs(&what, &agg, &out, 0, n - j, &forward, j);
            check_state(&what, &agg, out.final_state().unwrap(), 0, &forward);
            let name = &names(&agg, Role::Output)[0];
            let same_bits = out.get(name).unwrap().to_f64() == one_thread.get(name).unwrap().to_f64();
            match agg.name() {
                "deltanet" | "gated_deltanet" => assert!(same_bits, "{what}: the delta rule runs whole"),
                // No decay: the initial state's part of the sums does not fade, so the
                // order they are summed in shows in the bits.
                "linear_attention" => assert!(!same_bits, "{what}: not in parts"),
                _ => {}
            }
            let opts = RunOptions { reverse: true, final_state: true, threads: Some(threads), ..chunkwise(CHUNK) };
            let out = agg.run(&inputs(&agg, &[1], n, &whole, &data.param_bufs), &opts).unwrap();
            let what = format!("{what}, reversed");
            check_outputs(&what, &agg, &out, 0, n, &reversed, 0);
            check_state(&what, &agg, out.final_state().unwrap(), 0, &reversed);
        }
    }
}

/// `Form::Auto` takes the chunkwise form on the CPU where the state is large enough
/// (K × V ≥ 1024, ≥ 256 for the delta rule), and matches the interpreter there; a
/// smaller state, the interpreter backend and a chunk size keep the executor's choice.
#[test]
fn auto_takes_the_chunkwise_form_where_it_pays() {
    let n = 3 * CHUNK + 5;
    for (name, kv, takes) in [("retnet", 32, true), ("retnet", 16, false), ("deltanet", 16, true), ("deltanet", 8, false)] {
        let agg = load(name, &[("K", kv), ("V", kv)]).with_backend(Backend::Cpu);
        let data = Batch::new(&agg, 1, n, 23);
        let bufs = data.input_bufs(&agg, 1, n);
        let x = inputs(&agg, &[1], n, &bufs, &data.param_bufs);
        let what = format!("{name} at K = V = {kv}");
        let out = agg.run(&x, &RunOptions { final_state: true, ..Default::default() }).unwrap();
        assert_eq!(out.form() == Form::Chunkwise, takes, "{what}: {:?}", out.form());
        let reference = reference(&agg, Precision::F64, RefForm::Fold, &data.params, &data.first(&agg, 0, n), n);
        check_outputs(&what, &agg, &out, 0, n, &reference, 0);
        check_state(&what, &agg, out.final_state().unwrap(), 0, &reference);
        if takes {
            let interp = agg.with_backend(Backend::Interp).run(&x, &RunOptions::default()).unwrap();
            assert_ne!(interp.form(), Form::Chunkwise, "{what}: the interpreter is the reference");
            let chunked = agg.run(&x, &RunOptions { chunk: Some(CHUNK), ..Default::default() }).unwrap();
            assert_ne!(chunked.form(), Form::Chunkwise, "{what}: a chunk size names the chunked form's");
        }
    }
}

/// The interpreter's run over sequence `b`'s first `n` steps flipped, its outputs put
/// back in the original step order.
fn reversed_reference(agg: &Aggregator, data: &Batch, b: usize, n: usize) -> psm_ir::derive::Outputs {
    let flipped: Vec<Vec<f64>> =
        data.first(agg, b, n).iter().zip(lens(agg, Role::Input)).map(|(v, len)| v.chunks(len).rev().flatten().copied().collect()).collect();
    let mut reference = reference(agg, Precision::F64, RefForm::Fold, &data.params, &flipped, n);
    for (k, width) in lens(agg, Role::Output).into_iter().enumerate() {
        reference.outputs[k] = reference.outputs[k].chunks(width).rev().flatten().copied().collect();
    }
    reference
}

/// A reversed run is the interpreter's forward run over the flipped sequence, read
/// back in the original step order; its final state is that run's; and two reversed
/// runs chain through the state like forward ones.
#[test]
fn reverse_scans_from_the_last_step() {
    for agg in applies() {
        let data = Batch::new(&agg, 2, 64, 13);
        for n in [1, 2, CHUNK - 1, CHUNK + 1, 3 * CHUNK + 5] {
            let bufs = data.input_bufs(&agg, 2, n);
            let opts = RunOptions { reverse: true, final_state: true, ..chunkwise(CHUNK) };
            let out = agg.run(&inputs(&agg, &[2], n, &bufs, &data.param_bufs), &opts).unwrap();
            for b in 0..2 {
                let reference = reversed_reference(&agg, &data, b, n);
                let what = format!("{} reversed n={n}", agg.name());
                check_outputs(&what, &agg, &out, b, n, &reference, 0);
                check_state(&what, &agg, out.final_state().unwrap(), b, &reference);
            }
        }
        // Reversed and chained: steps j..n first, then 0..j from its final state.
        let (n, j) = (3 * CHUNK + 5, CHUNK + 3);
        let late = data.window_bufs(&agg, 2, j, n);
        let opts = RunOptions { reverse: true, final_state: true, ..chunkwise(CHUNK) };
        let first = agg.run(&inputs(&agg, &[2], n - j, &late, &data.param_bufs), &opts).unwrap();
        let early = data.window_bufs(&agg, 2, 0, j);
        let opts = RunOptions { initial_state: first.final_state(), ..opts };
        let second = agg.run(&inputs(&agg, &[2], j, &early, &data.param_bufs), &opts).unwrap();
        for b in 0..2 {
            let reference = reversed_reference(&agg, &data, b, n);
            let what = format!("{} reversed from a state", agg.name());
            check_outputs(&what, &agg, &second, b, j, &reference, 0);
            check_state(&what, &agg, second.final_state().unwrap(), b, &reference);
        }
    }
}

/// A chunkwise prefill of steps 0..j hands off to a stream that continues with steps
/// j..n one at a time: together, the interpreter's run over 0..n.
#[test]
fn prefill_hands_off_to_a_stream() {
    let n = 2 * CHUNK + 6;
    for agg in applies() {
        let data = Batch::new(&agg, 2, n, 17);
        for j in [0, 1, 2 * CHUNK + 1] {
            let head = data.window_bufs(&agg, 2, 0, j);
            let mut pre = agg.run(&inputs(&agg, &[2], j, &head, &data.param_bufs), &RunOptions { prefill: true, ..chunkwise(CHUNK) }).unwrap();
            assert!(pre.final_state().is_none(), "prefill alone returns no final state");
            let mut stream = Stream::from_prefill(pre.take_prefill().unwrap());
            assert_eq!(stream.position(), j as u64);
            for b in 0..2 {
                let reference = reference(&agg, Precision::F64, RefForm::Fold, &data.params, &data.first(&agg, b, n), n);
                check_outputs(&format!("{} prefill of {j}", agg.name()), &agg, &pre, b, j, &reference, 0);
            }
            for t in j..n {
                let step = data.window_bufs(&agg, 2, t, t + 1);
                let out = stream.push(&inputs(&agg, &[2], 1, &step, &[])).unwrap();
                for b in 0..2 {
                    let reference = reference(&agg, Precision::F64, RefForm::Fold, &data.params, &data.first(&agg, b, t + 1), t + 1);
                    check_outputs(&format!("{} step {t} after a prefill of {j}", agg.name()), &agg, &out, b, 1, &reference, t);
                }
            }
        }
    }
}

/// Sets input `field` of every sequence to `value` at the given steps (every entry of
/// the step), in the reference data and so in every buffer made from it.
fn set_steps(agg: &Aggregator, data: &mut Batch, field: &str, steps: &[usize], value: f64) {
    let k = names(agg, Role::Input).iter().position(|n| n == field).unwrap();
    let len = lens(agg, Role::Input)[k];
    for seq in &mut data.seqs {
        for &t in steps {
            seq[k][t * len..(t + 1) * len].fill(value);
        }
    }
}

/// A decay of exactly 0 (a hard reset) — a gate given as the value 0, or as exp(−∞) —
/// forgets the state before it, in every path: the factored and the log-space chunks,
/// scalar, diagonal and gated delta-rule decays.
#[test]
fn decays_of_exactly_zero_reset_the_state() {
    let scalar = "aggregator g<K = 4, V = 3> {
        input { q[K], k[K], v[V], w }
        element { a, s[K, V] }
        identity { a = 1.0; s[i, j] = 0.0; }
        lift(x) { a = GATE; s[i, j] = x.k[i] * x.v[j]; }
        combine(l, r) { a = l.a * r.a; s[i, j] = r.a * l.s[i, j] + r.s[i, j]; }
        readout exclusive(st, x) -> o[V] { o[j] = sum(i) st.s[i, j] * x.q[i]; }
    }";
    let n = 40;
    let zeros = [0, 5, 6, 17, 31, 32];
    // (source, gate, value of w that makes the gate 0)
    let cases = [
        (DIAGONAL, "x.w[i]", 0.0),
        (DIAGONAL, "exp(x.w[i])", f64::NEG_INFINITY),
        (scalar, "x.w", 0.0),
        (scalar, "exp(x.w)", f64::NEG_INFINITY),
    ];
    for (src, gate, zero) in cases {
        let agg = inline(&src.replace("GATE", gate), "g").with_backend(Backend::Cpu);
        let mut data = Batch::new(&agg, 2, n, 19);
        set_steps(&agg, &mut data, "w", &zeros, zero);
        for chunk in [4, 16] {
            check(&agg, &data, n, chunk);
        }
    }
    let agg = load("gated_deltanet", &dims_of("gated_deltanet")).with_backend(Backend::Cpu);
    let mut data = Batch::new(&agg, 2, n, 23);
    set_steps(&agg, &mut data, "g", &zeros, f64::NEG_INFINITY);
    for chunk in [4, 16] {
        check(&agg, &data, n, chunk);
    }
}

#[test]
fn options_it_does_not_support_are_refused() {
    let agg = load("retnet", &dims_of("retnet")).with_backend(Backend::Cpu);
    let batch = Batch::new(&agg, 1, 4, 5);
    let bufs = batch.input_bufs(&agg, 1, 4);
    let x = inputs(&agg, &[1], 4, &bufs, &batch.param_bufs);
    for opts in [
        RunOptions { reverse: true, prefill: true, ..chunkwise(4) },
        RunOptions { form: Form::Chunkwise, chunk: Some(0), ..Default::default() },
        RunOptions { form: Form::Chunkwise, chunk: Some(usize::MAX), ..Default::default() },
        RunOptions { threads: Some(0), ..chunkwise(4) },
    ] {
        assert!(matches!(agg.run(&x, &opts), Err(RunError::InvalidOption { .. })), "{opts:?}");
    }
    // A state field the readout never reads is not computed: no final element.
    let src = "aggregator two<K = 2, V = 2> {
        input { q[K], k[K], v[V] }
        element { s[K, V], u[K, V] }
        identity { s[i, j] = 0.0; u[i, j] = 0.0; }
        lift(x) { s[i, j] = x.k[i] * x.v[j]; u[i, j] = x.k[i] * x.v[j]; }
        combine(l, r) { s[i, j] = l.s[i, j] + r.s[i, j]; u[i, j] = l.u[i, j] + r.u[i, j]; }
        readout inclusive(st, x) -> o[V] { o[j] = sum(i) st.s[i, j] * x.q[i]; }
    }";
    let two = inline(src, "two").with_backend(Backend::Cpu);
    let batch = Batch::new(&two, 1, 4, 5);
    let bufs = batch.input_bufs(&two, 1, 4);
    let x2 = inputs(&two, &[1], 4, &bufs, &batch.param_bufs);
    assert!(two.run(&x2, &chunkwise(4)).is_ok());
    for opts in [RunOptions { final_state: true, ..chunkwise(4) }, RunOptions { prefill: true, ..chunkwise(4) }] {
        let err = two.run(&x2, &opts).unwrap_err();
        assert!(matches!(&err, RunError::InvalidOption { message, .. } if message.contains("`u`")), "{err}");
    }
    // The executor alone has no IR to derive the form from.
    let err = agg.executor().unwrap().run(&x, &RunOptions { form: Form::Chunkwise, ..Default::default() }).unwrap_err();
    assert!(matches!(err, RunError::InvalidOption { option: "form", .. }), "{err}");
    // Data errors are the other forms' typed errors, the initial state's included.
    let short = psm_runtime::Inputs::new(&[1], 4);
    assert!(matches!(agg.run(&short, &RunOptions { form: Form::Chunkwise, ..Default::default() }), Err(RunError::Missing { .. })));
    let wrong = State::new(&[1]).field("s", vec![0.0f32; 3]);
    assert!(agg.run(&x, &RunOptions { initial_state: Some(&wrong), ..chunkwise(4) }).is_err());
}
