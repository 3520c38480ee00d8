//! `psmc run` end to end: random and .npy data, every form, both backends, --compare
//! on every library operator, --stats bounds, .npy outputs, and its errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn psmc(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_psmc"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("psmc runs");
    Run {
        code: out.status.code().expect("psmc exits normally, without a signal"),
        stdout: String::from_utf8(out.stdout).expect("utf-8"),
        stderr: String::from_utf8(out.stderr).expect("utf-8"),
    }
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let r = psmc(&all);
    assert_eq!(r.code, 0, "{args:?}: {}{}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", r.stdout))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("psmc-run-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_npy_f32(path: &Path, shape: &[u64], data: &[f32]) {
    use npyz::WriterBuilder;
    let mut buf = Vec::new();
    let mut w = npyz::WriteOptions::<f32>::new().default_dtype().shape(shape).writer(&mut buf).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
    std::fs::write(path, buf).unwrap();
}

fn write_npy_f64(path: &Path, shape: &[u64], data: &[f64]) {
    use npyz::WriterBuilder;
    let mut buf = Vec::new();
    let mut w = npyz::WriteOptions::<f64>::new().default_dtype().shape(shape).writer(&mut buf).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
    std::fs::write(path, buf).unwrap();
}

fn read_npy_f32(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().unwrap())
}

fn library() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples/ops"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".psm"))
        .map(|n| n.trim_end_matches(".psm").to_string())
        .collect();
    names.sort();
    names
}

fn small_dims(name: &str) -> Vec<&'static str> {
    match name {
        "attn_agg" => vec!["-D", "C=2", "-D", "D=4"],
        "gla" | "gla_bf16" | "linear_attention" | "retnet" | "mamba2" | "mlstm" | "mlstm_affine" | "rwkv6" | "deltanet" | "gated_deltanet" => {
            vec!["-D", "K=4", "-D", "V=4"]
        }
        "mamba_s6" => vec!["-D", "D=4", "-D", "N=2"],
        "online_softmax" | "causal_mean" | "average" | "tanh_rnn" | "diag_affine" => vec!["-D", "D=4"],
        _ => vec![],
    }
}

#[test]
fn runs_gla_with_defaults() {
    let r = psmc(&["run", "examples/ops/gla.psm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("gla <K = 16, V = 16> on cpu: recurrent form, batch [], T = 64\n"), "{}", r.stdout);
    assert!(r.stdout.contains("  o [64, 16] f32: "), "{}", r.stdout);
    assert!(r.stderr.is_empty());
}

#[test]
fn compare_passes_on_every_library_operator_in_every_form() {
    for name in library() {
        let file = format!("examples/ops/{name}.psm");
        let mut base = vec!["run", file.as_str(), "--len", "37", "--batch", "2", "--compare", "--seed", "3"];
        base.extend(small_dims(&name));
        let first = json(&base);
        let forms: Vec<&str> =
            if first["associative"].as_bool().unwrap() { vec!["recurrent", "chunked", "tree", "stream"] } else { vec!["tree", "stream"] };
        for backend in ["cpu", "interp"] {
            for form in &forms {
                let mut args = base.clone();
                args.extend(["--form", form, "--backend", backend, "--chunk", "5"]);
                let doc = json(&args);
                let what = format!("{name} {form} {backend}");
                assert_eq!(doc["form"], *form, "{what}");
                assert_eq!(doc["compare"]["ok"], true, "{what}: {doc}");
                for key in ["max_abs_err", "max_rel_err", "combines_per_step", "seconds", "elements_per_second"] {
                    assert!(doc[key].is_number(), "{what}: {key} in {doc}");
                }
                assert!(doc["peak_elements"].is_u64(), "{what}");
                if !doc["associative"].as_bool().unwrap() {
                    assert_eq!(doc["compare"]["bit_identical"], true, "{what}");
                    assert_eq!(doc["max_abs_err"], 0.0, "{what}");
                }
            }
        }
    }
}

#[test]
fn stats_of_the_stream_form_stay_within_bounds() {
    for n in [1usize, 5, 100, 1000] {
        let len = n.to_string();
        let doc = json(&["run", "examples/ops/subtract.psm", "--form", "stream", "--len", &len, "--stats"]);
        let cps = doc["combines_per_step"].as_f64().unwrap();
        let peak = doc["peak_elements"].as_u64().unwrap();
        let log = (usize::BITS - n.leading_zeros()) as u64;
        assert!(cps <= 2.0, "n = {n}: {cps}");
        assert!(peak <= 2 * log, "n = {n}: {peak}");
    }
    let r = psmc(&["run", "examples/ops/subtract.psm", "--form", "stream", "--len", "100", "--stats"]);
    assert!(r.stdout.contains("  stats: 1.900 combines per step, peak 11 stored elements per sequence"), "{}", r.stdout);
    // An associative stream holds one element.
    let doc = json(&["run", "examples/ops/cumsum.psm", "--form", "stream", "--len", "100"]);
    assert_eq!(doc["peak_elements"], 1);
}

#[test]
fn npy_inputs_and_outputs() {
    let dir = tmp("npy");
    let v: Vec<f32> = (0..8).map(|i| i as f32).collect();
    write_npy_f32(&dir.join("v.npy"), &[2, 4], &v);
    let out = dir.join("out");
    let r = psmc(&["run", "examples/ops/cumsum.psm", "--input", &format!("v={}", dir.join("v.npy").display()), "--output", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("batch [2], T = 4"), "{}", r.stdout);
    let (shape, y) = read_npy_f32(&out.join("v.npy"));
    assert_eq!(shape, vec![2, 4]);
    assert_eq!(y, vec![0.0, 1.0, 3.0, 6.0, 4.0, 9.0, 15.0, 22.0]);
    // Params from .npy: ema's alpha is an f64 scalar.
    write_npy_f64(&dir.join("alpha.npy"), &[], &[0.5]);
    write_npy_f64(&dir.join("x.npy"), &[3], &[2.0, 4.0, 8.0]);
    let doc = json(&[
        "run",
        "examples/ops/ema.psm",
        "--param",
        &format!("alpha={}", dir.join("alpha.npy").display()),
        "--input",
        &format!("v={}", dir.join("x.npy").display()),
        "--output",
        out.to_str().unwrap(),
        "--compare",
    ]);
    assert_eq!(doc["len"], 3);
    assert_eq!(doc["batch"], serde_json::json!([]));
    let path = doc["outputs"][0]["path"].as_str().unwrap();
    let npy = npyz::NpyFile::new(&std::fs::read(path).unwrap()[..]).unwrap().into_vec::<f64>().unwrap();
    assert_eq!(npy, vec![1.0, 2.5, 5.25]);
}

#[test]
fn backends_and_seeds() {
    let a = tmp("cpu");
    let b = tmp("interp");
    let c = tmp("seed");
    for (dir, backend, seed) in [(&a, "cpu", "7"), (&b, "interp", "7"), (&c, "cpu", "8")] {
        let r = psmc(&[
            "run", "examples/ops/attn_agg.psm", "-D", "C=2", "-D", "D=4", "--len", "50", "--batch", "3", "--backend", backend, "--seed", seed,
            "--output", dir.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let read = |d: &Path| std::fs::read(d.join("y.npy")).unwrap();
    assert_eq!(read(&a), read(&b), "the JIT and the interpreter agree bit for bit");
    assert_ne!(read(&a), read(&c), "another seed, other data");
}

#[test]
fn errors() {
    // A rebracketing form of a non-associative operator.
    let r = psmc(&["run", "examples/ops/subtract.psm", "--form", "chunked"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("error: the chunked form is not valid for `subtract`"), "{}", r.stderr);
    // Files and aggregators.
    let r = psmc(&["run", "nope.psm"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot read nope.psm"), "{}", r.stderr);
    let r = psmc(&["run", "psmc/tests/data/syntax_error.psm"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("could not run"), "{}", r.stderr);
    let r = psmc(&["run", "examples/ops/gla.psm", "--aggregator", "glaa"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("has no aggregator `glaa`; it declares `gla`"), "{}", r.stderr);
    let dir = tmp("errors");
    let two = dir.join("two.psm");
    std::fs::write(&two, "aggregator a { input { v } element { v } combine(l, r) { v = l.v + r.v; } }\naggregator b { input { v } element { v } combine(l, r) { v = l.v * r.v; } }\n").unwrap();
    let r = psmc(&["run", two.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("declares `a`, `b`; pick one with --aggregator NAME"), "{}", r.stderr);
    assert_eq!(psmc(&["run", two.to_str().unwrap(), "--aggregator", "b"]).code, 0);
    // .npy problems.
    write_npy_f64(&dir.join("v64.npy"), &[4], &[1.0, 2.0, 3.0, 4.0]);
    let r = psmc(&["run", "examples/ops/cumsum.psm", "--input", &format!("v={}", dir.join("v64.npy").display())]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("holds f64 but input `v` is declared f32"), "{}", r.stderr);
    write_npy_f32(&dir.join("q.npy"), &[4, 3], &[0.0; 12]);
    let r = psmc(&["run", "examples/ops/gla.psm", "-D", "K=2", "-D", "V=2", "--input", &format!("q={}", dir.join("q.npy").display())]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("has shape [4, 3]; expected [batch..., T, 2]"), "{}", r.stderr);
    write_npy_f32(&dir.join("v.npy"), &[4], &[0.0; 4]);
    let r = psmc(&["run", "examples/ops/cumsum.psm", "--input", &format!("w={}", dir.join("v.npy").display())]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("has no input `w`; its inputs are `v`"), "{}", r.stderr);
    let r = psmc(&["run", "examples/ops/cumsum.psm", "--input", &format!("v={}", dir.join("v.npy").display()), "--len", "5"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--len 5 but the --input files hold 4 steps"), "{}", r.stderr);
    let r = psmc(&["run", "examples/ops/cumsum.psm", "--input", &format!("v={}", dir.join("missing.npy").display())]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot read input `v`"), "{}", r.stderr);
    let r = psmc(&["run", "examples/ops/cumsum.psm", "--param", &format!("w={}", dir.join("v.npy").display())]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("has no param `w`; its params are none"), "{}", r.stderr);
    // Usage errors.
    assert_eq!(psmc(&["run", "examples/ops/cumsum.psm", "--batch", "x"]).code, 2);
    assert_eq!(psmc(&["run", "examples/ops/cumsum.psm", "--input", "v"]).code, 2);
    assert_eq!(psmc(&["run", "examples/ops/cumsum.psm", "--form", "fold"]).code, 2);
    assert_eq!(psmc(&["run", "examples/ops/cumsum.psm", "--backend", "gpu"]).code, 2);
    // Option errors from the runtime.
    let r = psmc(&["run", "examples/ops/cumsum.psm", "--form", "chunked", "--chunk", "0"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("invalid option `chunk`"), "{}", r.stderr);
}

#[test]
fn empty_runs() {
    let doc = json(&["run", "examples/ops/gla.psm", "-D", "K=2", "-D", "V=2", "--len", "0", "--compare", "--stats"]);
    assert_eq!(doc["outputs"][0]["shape"], serde_json::json!([0, 2]));
    assert_eq!(doc["combines_per_step"], 0.0);
    assert_eq!(doc["compare"]["ok"], true);
    let doc = json(&["run", "examples/ops/gla.psm", "-D", "K=2", "-D", "V=2", "--batch", "0,3", "--len", "4"]);
    assert_eq!(doc["outputs"][0]["shape"], serde_json::json!([0, 3, 4, 2]));
}

/// A version 1.0 .npy file written by hand (independently of npyz): the header dict
/// with `descr`, padded with spaces to a multiple of 64 bytes, then the data.
fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn bits_le(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|b| b.to_le_bytes()).collect()
}

/// The descr and the 16-bit entries of a .npy file psmc wrote.
fn read_npy_u16(path: &Path) -> (String, Vec<u64>, Vec<u16>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let descr = npy.dtype().descr().trim_matches('\'').to_string();
    let shape = npy.shape().to_vec();
    let start = bytes.len() - 2 * shape.iter().product::<u64>() as usize;
    (descr, shape, bytes[start..].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
}

#[test]
fn f16_npy_inputs_and_outputs() {
    use psm_runtime::half::f16;
    let dir = tmp("f16");
    // Values whose running sum in f32 leaves f16's range of exact values: rounding
    // to f16 matters at the output, and the last total overflows f16 to inf.
    let v: Vec<f16> = [1.0f32, 0.000_976_6, 2048.0, 1.0, 3.0, 60000.0, 10000.0].iter().map(|&x| f16::from_f32(x)).collect();
    let raw: Vec<u16> = v.iter().map(|x| x.to_bits()).collect();
    std::fs::write(dir.join("v.npy"), npy_bytes("<f2", &[7], &bits_le(&raw))).unwrap();
    let out = dir.join("out");
    let r = psmc(&["run", "examples/ops/cumsum_f16.psm", "--input", &format!("v={}", dir.join("v.npy").display()), "--output", out.to_str().unwrap(), "--compare"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("  y [7] f16: "), "{}", r.stdout);
    let (descr, shape, y) = read_npy_u16(&out.join("y.npy"));
    assert_eq!((descr.as_str(), shape), ("<f2", vec![7]));
    let mut total = 0.0f32;
    let want: Vec<u16> = v
        .iter()
        .map(|x| {
            total += x.to_f32();
            f16::from_f32(total).to_bits()
        })
        .collect();
    assert_eq!(y, want);
    assert_eq!(f16::from_bits(y[6]), f16::INFINITY, "73055 overflows f16");
    // 1 + 2^-10 + 2048 in f32 lies above 2049, the midpoint between f16's neighbours
    // 2048 and 2050 there.
    assert_eq!(f16::from_bits(y[2]).to_f32(), 2050.0);
}

#[test]
fn bf16_npy_round_trip() {
    use psm_runtime::half::bf16;
    let dir = tmp("bf16");
    let n = 5;
    let vals = |xs: [f32; 5]| -> Vec<bf16> { xs.iter().map(|&x| bf16::from_f32(x)).collect() };
    let (q, k, v, alpha) = (
        vals([0.5, -1.25, 3.0, 0.1, 7.0]),
        vals([1.0, 0.3, -0.7, 2.5, 0.01]),
        vals([0.9, 1.1, -2.0, 0.6, 100.0]),
        vals([0.9, 0.5, 0.99, -0.5, 0.75]),
    );
    let bits = |x: &[bf16]| bits_le(&x.iter().map(|b| b.to_bits()).collect::<Vec<_>>());
    // Bit patterns as `<u2` (psmc's convention), and as `|V2` (what np.save writes
    // for an ml_dtypes.bfloat16 array).
    std::fs::write(dir.join("q.npy"), npy_bytes("<u2", &[n, 1], &bits(&q))).unwrap();
    std::fs::write(dir.join("k.npy"), npy_bytes("<u2", &[n, 1], &bits(&k))).unwrap();
    std::fs::write(dir.join("v.npy"), npy_bytes("|V2", &[n, 1], &bits(&v))).unwrap();
    std::fs::write(dir.join("alpha.npy"), npy_bytes("|V2", &[n, 1], &bits(&alpha))).unwrap();
    let input = |f: &str| format!("{f}={}", dir.join(format!("{f}.npy")).display());
    let out = dir.join("out");
    let (iq, ik, iv, ia) = (input("q"), input("k"), input("v"), input("alpha"));
    let mut args = vec!["run", "examples/ops/gla_bf16.psm", "-D", "K=1", "-D", "V=1", "--input", &iq, "--input", &ik, "--input", &iv];
    args.extend(["--input", &ia, "--output", out.to_str().unwrap(), "--compare"]);
    let r = psmc(&args);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let (descr, shape, o) = read_npy_u16(&out.join("o.npy"));
    assert_eq!((descr.as_str(), shape), ("<u2", vec![n as u64, 1]));
    // K = V = 1: s_t = alpha_t s_{t-1} + k_t v_t in f32, o_t = s_t q_t rounded to bf16.
    let mut s = 0.0f32;
    let want: Vec<u16> = (0..n)
        .map(|t| {
            let e = k[t].to_f32() * v[t].to_f32();
            s = if t == 0 { e } else { alpha[t].to_f32() * s + e };
            bf16::from_f32(s * q[t].to_f32()).to_bits()
        })
        .collect();
    assert_eq!(o, want);
    // The written output reads back as a bf16 input.
    let back = format!("q={}", out.join("o.npy").display());
    let r = psmc(&["run", "examples/ops/gla_bf16.psm", "-D", "K=1", "-D", "V=1", "--input", &back, "--format", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A float32 file for a bf16 input says how to convert it.
    write_npy_f32(&dir.join("f.npy"), &[n as u64, 1], &[0.0; 5]);
    let f = format!("q={}", dir.join("f.npy").display());
    let r = psmc(&["run", "examples/ops/gla_bf16.psm", "-D", "K=1", "-D", "V=1", "--input", &f]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("holds f32 but input `q` is declared bf16; convert it first (e.g. a.astype(ml_dtypes.bfloat16).view(np.uint16))"), "{}", r.stderr);
}
