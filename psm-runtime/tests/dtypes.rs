//! bf16/f16 tensors through the runtime's API: `Data::BF16`/`F16` params and inputs,
//! bf16/f16 outputs returned and written into caller buffers, on both backends (JIT and
//! interpreter bit-identical) in every form, pushes of a stream, ndarray views, and
//! typed errors for data of another dtype.

mod common;

use common::*;
use psm_runtime::half::{bf16, f16};
use psm_runtime::{Backend, Buffer, DataMut, Dtype, Form, Inputs, OutputsMut, RunError, RunOptions, Slot};

/// D = 8: a statement over `i` would be vector code but for its 16-bit loads and
/// stores, which keep it scalar.
const SRC: &str = "aggregator scaled<D = 8> {
    param   { w[D]: bf16 }
    input   { x[D]: f16 }
    element { s[D] }
    identity { s[i] = 0.0; }
    lift(x) { s[i] = x.x[i] * w[i]; }
    combine(l, r) { s[i] = l.s[i] + r.s[i]; }
    readout inclusive(st, x) -> (y[D]: bf16, z[D]: f16) { y[i] = st.s[i]; z[i] = st.s[i]; }
}";

const D: usize = 8;

fn data(steps: usize, nseq: usize) -> (Vec<bf16>, Vec<f16>) {
    let mut rng = Rng(0x16);
    let w = (0..D).map(|_| bf16::from_f64(rng.range(-2.0, 2.0))).collect();
    let x = (0..nseq * steps * D).map(|_| f16::from_f64(rng.range(-1.0, 1.0))).collect();
    (w, x)
}

/// The recurrent form by hand: f32 products and sums, rounded once per output.
fn by_hand(w: &[bf16], x: &[f16], steps: usize) -> (Vec<u16>, Vec<u16>) {
    let mut s = [0.0f32; D];
    let (mut y, mut z) = (Vec::new(), Vec::new());
    for t in 0..steps {
        for i in 0..D {
            s[i] += x[t * D + i].to_f32() * w[i].to_f32();
            y.push(bf16::from_f32(s[i]).to_bits());
            z.push(f16::from_f32(s[i]).to_bits());
        }
    }
    (y, z)
}

fn bits(b: &Buffer) -> Vec<u16> {
    match b {
        Buffer::BF16(v) => v.iter().map(|x| x.to_bits()).collect(),
        Buffer::F16(v) => v.iter().map(|x| x.to_bits()).collect(),
        other => panic!("a 16-bit output, found {:?}", other.dtype()),
    }
}

#[test]
fn every_form_on_both_backends_matches_the_f32_computation() {
    let (steps, nseq) = (100, 2);
    let (w, x) = data(steps, nseq);
    let agg = inline(SRC, "scaled");
    let inputs = Inputs::new(&[nseq], steps).param("w", &w).input("x", &x);
    for be in backends(&agg) {
        for form in [Form::Recurrent, Form::Chunked, Form::Tree, Form::Stream] {
            let what = format!("{:?} {form:?}", be.backend());
            let out = be.run(&inputs, &RunOptions { form, chunk: Some(7), ..Default::default() }).unwrap_or_else(|e| panic!("{what}: {e}"));
            let (y, z) = (out.get("y").unwrap(), out.get("z").unwrap());
            assert_eq!((y.dtype(), z.dtype()), (Dtype::BF16, Dtype::F16), "{what}");
            for b in 0..nseq {
                let (hy, hz) = by_hand(&w, &x[b * steps * D..(b + 1) * steps * D], steps);
                let seq = |v: Vec<u16>| v[b * steps * D..(b + 1) * steps * D].to_vec();
                // Sums of f16 × bf16 products: the other forms' bracketings differ from
                // the fold only by f32 rounding, which the 16-bit outputs mostly hide;
                // the recurrent form is the fold itself.
                if form == Form::Recurrent {
                    assert_eq!(seq(bits(y)), hy, "{what}: y of sequence {b}");
                    assert_eq!(seq(bits(z)), hz, "{what}: z of sequence {b}");
                } else {
                    let close = |got: Vec<u16>, want: Vec<u16>, to: fn(u16) -> f32, u: f32| {
                        for (g, h) in got.iter().zip(&want) {
                            let (g, h) = (to(*g), to(*h));
                            assert!((g - h).abs() <= u * h.abs().max(1.0), "{what}: {g} vs {h}");
                        }
                    };
                    close(seq(bits(y)), hy, |b| bf16::from_bits(b).to_f32(), 2f32.powi(-7));
                    close(seq(bits(z)), hz, |b| f16::from_bits(b).to_f32(), 2f32.powi(-10));
                }
            }
        }
    }
    // JIT and interpreter: the same bits in the fixed tree.
    let tree = RunOptions { form: Form::Tree, ..Default::default() };
    let runs: Vec<_> = backends(&agg).iter().map(|be| be.run(&inputs, &tree).unwrap()).collect();
    for name in ["y", "z"] {
        assert_eq!(bits(runs[0].get(name).unwrap()), bits(runs[1].get(name).unwrap()), "{name}");
    }
}

#[test]
fn run_into_and_pushes_write_what_run_returns() {
    let steps = 20;
    let (w, x) = data(steps, 1);
    let agg = inline(SRC, "scaled").with_backend(Backend::Cpu);
    let inputs = Inputs::new(&[], steps).param("w", &w).input("x", &x);
    let out = agg.run(&inputs, &RunOptions::default()).unwrap();
    let mut y = vec![bf16::NAN; steps * D];
    let mut z = vec![f16::NAN; steps * D];
    let mut into = OutputsMut::new().output("y", &mut y).output("z", &mut z);
    agg.run_into(&inputs, &mut into, &RunOptions::default()).unwrap();
    assert_eq!(bits(&Buffer::BF16(y)), bits(out.get("y").unwrap()));
    assert_eq!(bits(&Buffer::F16(z)), bits(out.get("z").unwrap()));
    let mut stream = agg.stream(&[]).param("w", &w).open().unwrap();
    for t in 0..steps {
        let one = stream.push(&Inputs::new(&[], 1).input("x", &x[t * D..(t + 1) * D])).unwrap();
        assert_eq!(bits(one.get("y").unwrap()), bits(out.get("y").unwrap())[t * D..(t + 1) * D], "step {t}");
        assert_eq!(bits(one.get("z").unwrap()), bits(out.get("z").unwrap())[t * D..(t + 1) * D], "step {t}");
    }
}

#[test]
fn ndarray_views_of_16_bit_data() {
    use ndarray::{Array2, ArrayView2};
    let steps = 5;
    let (w, x) = data(steps, 1);
    let agg = inline(SRC, "scaled").with_backend(Backend::Cpu);
    let xs = ArrayView2::from_shape((steps, D), &x).unwrap();
    let inputs = Inputs::new(&[], steps).param("w", &w).input("x", psm_runtime::Data::try_from(xs).unwrap());
    let out = agg.run(&inputs, &RunOptions::default()).unwrap();
    let y = out.array::<bf16>("y").unwrap();
    assert_eq!(y.shape(), [steps, D]);
    assert!(out.array::<f16>("y").is_none(), "y is bf16");
    let mut z = Array2::<f16>::from_elem((steps, D), f16::NAN);
    let mut into = OutputsMut::new().output("z", DataMut::try_from(z.view_mut()).unwrap());
    let mut y2 = vec![bf16::ZERO; steps * D];
    into = into.output("y", &mut y2);
    agg.run_into(&inputs, &mut into, &RunOptions::default()).unwrap();
    assert_eq!(bits(&Buffer::F16(z.iter().copied().collect())), bits(out.get("z").unwrap()));
}

#[test]
fn data_of_another_dtype_is_a_typed_error() {
    let steps = 3;
    let (w, x) = data(steps, 1);
    let agg = inline(SRC, "scaled").with_backend(Backend::Cpu);
    let x32: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let w16: Vec<f16> = w.iter().map(|v| f16::from_f32(v.to_f32())).collect();
    let run = |inputs: &Inputs<'_>| agg.run(inputs, &RunOptions::default()).unwrap_err();
    let e = run(&Inputs::new(&[], steps).param("w", &w).input("x", &x32));
    assert_eq!(e, RunError::WrongDtype { slot: Slot::Input, name: "x".into(), expected: Dtype::F16, found: Dtype::F32 });
    assert!(e.to_string().contains("f16") && e.to_string().contains("f32"), "{e}");
    let e = run(&Inputs::new(&[], steps).param("w", &w16).input("x", &x));
    assert_eq!(e, RunError::WrongDtype { slot: Slot::Param, name: "w".into(), expected: Dtype::BF16, found: Dtype::F16 });
    let mut y = vec![0.0f32; steps * D];
    let mut z = vec![f16::ZERO; steps * D];
    let mut into = OutputsMut::new().output("y", &mut y).output("z", &mut z);
    let e = agg.run_into(&Inputs::new(&[], steps).param("w", &w).input("x", &x), &mut into, &RunOptions::default()).unwrap_err();
    assert!(matches!(e, RunError::WrongDtype { slot: Slot::Output, expected: Dtype::BF16, found: Dtype::F32, .. }), "{e:?}");
}
