//! Hand-written loops, one per benchmarked operator, over the same row-major layouts
//! psm uses: inputs `[B, T, dims...]`, one buffer per field.

/// `cumsum.psm`: y_t = y_{t-1} + v_t along each row of `[B, T]`.
pub fn cumsum(v: &[f32], y: &mut [f32], t: usize) {
    for (vr, yr) in v.chunks_exact(t).zip(y.chunks_exact_mut(t)) {
        let mut s = 0.0f32;
        for (x, out) in vr.iter().zip(yr) {
            s += x;
            *out = s;
        }
    }
}

/// `scalar_affine.psm`: h_t = a_t h_{t-1} + b_t along each row of `[B, T]`.
pub fn scalar_affine(a: &[f32], b: &[f32], y: &mut [f32], t: usize) {
    for ((ar, br), yr) in a.chunks_exact(t).zip(b.chunks_exact(t)).zip(y.chunks_exact_mut(t)) {
        let mut h = 0.0f32;
        for ((a, b), out) in ar.iter().zip(br).zip(yr) {
            h = a * h + b;
            *out = h;
        }
    }
}

/// `diag_affine.psm`: `h_t[d] = a_t[d] h_{t-1}[d] + b_t[d]` over `[B, T, D]`.
pub fn diag_affine(a: &[f32], b: &[f32], y: &mut [f32], t: usize, d: usize) {
    let seq = t * d;
    for ((a, b), y) in a.chunks_exact(seq).zip(b.chunks_exact(seq)).zip(y.chunks_exact_mut(seq)) {
        let mut h = vec![0.0f32; d];
        for ((ar, br), yr) in a.chunks_exact(d).zip(b.chunks_exact(d)).zip(y.chunks_exact_mut(d)) {
            for k in 0..d {
                h[k] = ar[k] * h[k] + br[k];
                yr[k] = h[k];
            }
        }
    }
}

/// `logcumsumexp.psm`: y_t = log Σ_{s ≤ t} exp(v_s), with a running max, per row.
pub fn logcumsumexp(v: &[f32], y: &mut [f32], t: usize) {
    for (vr, yr) in v.chunks_exact(t).zip(y.chunks_exact_mut(t)) {
        let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
        for (k, (&x, out)) in vr.iter().zip(yr).enumerate() {
            if k == 0 {
                (m, l) = (x, 1.0);
            } else {
                let mx = m.max(x);
                l = l * (m - mx).exp() + (x - mx).exp();
                m = mx;
            }
            *out = m + l.ln();
        }
    }
}

/// One step of `gla.psm` on a state `s[K, V]`: s = diag(alpha) s + k vᵀ, o = sᵀ q.
#[allow(clippy::too_many_arguments)]
pub fn gla_step(s: &mut [f32], q: &[f32], k: &[f32], v: &[f32], alpha: &[f32], o: &mut [f32], kd: usize, vd: usize) {
    for i in 0..kd {
        let row = &mut s[i * vd..(i + 1) * vd];
        for j in 0..vd {
            row[j] = alpha[i] * row[j] + k[i] * v[j];
        }
    }
    for j in 0..vd {
        o[j] = s[j] * q[0];
    }
    for i in 1..kd {
        let row = &s[i * vd..(i + 1) * vd];
        for j in 0..vd {
            o[j] += row[j] * q[i];
        }
    }
}

/// `gla.psm` over a sequence: the recurrent form, one step at a time.
#[allow(clippy::too_many_arguments)]
pub fn gla(q: &[f32], k: &[f32], v: &[f32], alpha: &[f32], o: &mut [f32], t: usize, kd: usize, vd: usize) {
    let mut s = vec![0.0f32; kd * vd];
    for step in 0..t {
        let (kq, kv) = (step * kd, step * vd);
        gla_step(
            &mut s,
            &q[kq..kq + kd],
            &k[kq..kq + kd],
            &v[kv..kv + vd],
            &alpha[kq..kq + kd],
            &mut o[kv..kv + vd],
            kd,
            vd,
        );
    }
}

/// The weights of `attn_agg.psm`, each `[D, D]` row-major.
pub struct AttnWeights<'a> {
    pub wq: &'a [f32],
    pub wk: &'a [f32],
    pub wv: &'a [f32],
    pub c: usize,
    pub d: usize,
}

/// `attn_agg.psm`'s combine: one bidirectional attention layer over the 2C memory
/// vectors of `l` and `r`, keeping the right half plus a residual.
pub fn attn_combine(w: &AttnWeights, l: &[f32], r: &[f32], out: &mut [f32]) {
    let (c, d) = (w.c, w.d);
    let n = 2 * c;
    let z: Vec<f32> = l.iter().chain(r).copied().collect();
    let project = |m: &[f32]| {
        let mut p = vec![0.0f32; n * d];
        for u in 0..n {
            for e in 0..d {
                let mut acc = z[u * d] * m[e];
                for k in 1..d {
                    acc += z[u * d + k] * m[k * d + e];
                }
                p[u * d + e] = acc;
            }
        }
        p
    };
    let (q, k, v) = (project(w.wq), project(w.wk), project(w.wv));
    let scale = 1.0 / (d as f32).sqrt();
    for t in 0..c {
        let u = t + c;
        let mut sc = vec![0.0f32; n];
        for (x, s) in sc.iter_mut().enumerate() {
            let mut acc = q[u * d] * k[x * d] * scale;
            for e in 1..d {
                acc += q[u * d + e] * k[x * d + e] * scale;
            }
            *s = acc;
        }
        let m = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let p: Vec<f32> = sc.iter().map(|s| (s - m).exp()).collect();
        let mut denom = p[0];
        for x in &p[1..] {
            denom += x;
        }
        for e in 0..d {
            let mut acc = p[0] * v[e];
            for x in 1..n {
                acc += p[x] * v[x * d + e];
            }
            out[t * d + e] = acc / denom + z[u * d + e];
        }
    }
}

/// The fixed-tree exclusive prefixes of `attn_agg` over `steps` elements of C·D floats:
/// what a user writes by hand to train a Transformer-PSM (sequential up- and down-sweep).
pub fn attn_tree(w: &AttnWeights, elements: &[f32]) -> Vec<Option<Vec<f32>>> {
    let size = w.c * w.d;
    let n = elements.len() / size;
    let leaves: Vec<Option<Vec<f32>>> =
        (0..n.max(1).next_power_of_two()).map(|i| elements.get(i * size..(i + 1) * size).map(<[f32]>::to_vec)).collect();
    let join = |a: &Option<Vec<f32>>, b: &Option<Vec<f32>>| -> Option<Vec<f32>> {
        match (a, b) {
            (Some(x), Some(y)) => {
                let mut out = vec![0.0; size];
                attn_combine(w, x, y, &mut out);
                Some(out)
            }
            (Some(x), None) | (None, Some(x)) => Some(x.clone()),
            (None, None) => None,
        }
    };
    let mut levels = vec![leaves];
    while levels.last().map_or(0, Vec::len) > 1 {
        let up: Vec<_> = levels.last().unwrap().chunks(2).map(|p| join(&p[0], &p[1])).collect();
        levels.push(up);
    }
    let mut prefix = vec![None];
    for level in levels[..levels.len() - 1].iter().rev() {
        let mut next = Vec::with_capacity(level.len());
        for (k, p) in prefix.iter().enumerate() {
            next.push(p.clone());
            next.push(join(p, &level[2 * k]));
        }
        prefix = next;
    }
    prefix.truncate(n);
    prefix
}

/// `attn_agg.psm`'s exclusive readout of one step: y[t, d] = tok[t, d] + (Σ_u prev[u, d]) / C,
/// the sum a left fold from u = 0. Before any prefix (no identity is declared) the
/// readout reads zeros, as psm does.
pub fn attn_readout(prefix: Option<&[f32]>, tok: &[f32], y: &mut [f32], c: usize, d: usize) {
    let zeros;
    let prev = match prefix {
        Some(p) => p,
        None => {
            zeros = vec![0.0f32; c * d];
            &zeros
        }
    };
    for e in 0..d {
        let mut acc = prev[e];
        for u in 1..c {
            acc += prev[u * d + e];
        }
        let mean = acc / c as f32;
        for t in 0..c {
            y[t * d + e] = tok[t * d + e] + mean;
        }
    }
}

/// The streaming exclusive prefixes of `attn_agg` over `steps` elements of C·D floats:
/// the binary counter of subtree roots (equal sizes merged, older on the left) with the
/// fold of everything before each root cached, which reproduces [`attn_tree`]'s
/// bracketing exactly with about 2 combines per step and O(log n) stored elements.
/// What a user writes by hand to serve a Transformer-PSM token by token.
pub fn attn_stream(w: &AttnWeights, elements: &[f32]) -> Vec<Option<Vec<f32>>> {
    let size = w.c * w.d;
    let n = elements.len() / size;
    // (subtree size, root, fold of all roots up to and including this one; None for
    // the bottom root, whose fold is itself).
    type Root = (usize, Vec<f32>, Option<Vec<f32>>);
    let mut roots: Vec<Root> = Vec::new();
    let mut prefixes = Vec::with_capacity(n);
    let combined = |l: &[f32], r: &[f32]| {
        let mut out = vec![0.0f32; size];
        attn_combine(w, l, r, &mut out);
        out
    };
    for step in elements.chunks_exact(size) {
        let prefix = |roots: &[Root]| roots.last().map(|(_, r, f)| f.clone().unwrap_or_else(|| r.clone()));
        prefixes.push(prefix(&roots));
        let mut span = 1usize;
        let mut root = step.to_vec();
        while roots.last().is_some_and(|r| r.0 == span) {
            let (_, older, _) = roots.pop().expect("checked");
            root = combined(&older, &root);
            span *= 2;
        }
        let fold = roots.last().map(|(_, r, f)| combined(f.as_deref().unwrap_or(r), &root));
        roots.push((span, root, fold));
    }
    prefixes
}

/// The same operators folded sequentially in f64 from f32 inputs: the reference that
/// rebracketed forms (chunked, tree) of the associative operators are checked against,
/// as `psmc run --compare` does (an f32 loop is itself off by its own rounding, which
/// over millions of steps exceeds psm's tolerance).
pub mod f64_fold {
    /// `cumsum` over one sequence of `v.len()` steps, into `y`.
    pub fn cumsum(v: &[f32], y: &mut [f64]) {
        let mut s = 0.0f64;
        for (y, &x) in y.iter_mut().zip(v) {
            s += x as f64;
            *y = s;
        }
    }

    /// `scalar_affine` over one sequence, into `y`.
    pub fn scalar_affine(a: &[f32], b: &[f32], y: &mut [f64]) {
        let mut h = 0.0f64;
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            h = a as f64 * h + b as f64;
            *y = h;
        }
    }

    /// `diag_affine` over one sequence of `[T, d]`, into `y` (`[T, d]`).
    pub fn diag_affine(a: &[f32], b: &[f32], y: &mut [f64], d: usize) {
        let mut h = vec![0.0f64; d];
        for ((ar, br), yr) in a.chunks_exact(d).zip(b.chunks_exact(d)).zip(y.chunks_exact_mut(d)) {
            for k in 0..d {
                h[k] = ar[k] as f64 * h[k] + br[k] as f64;
            }
            yr.copy_from_slice(&h);
        }
    }

    /// `logcumsumexp` over one sequence, into `y`.
    pub fn logcumsumexp(v: &[f32], y: &mut [f64]) {
        let (mut m, mut l) = (f64::NEG_INFINITY, 0.0f64);
        for (k, (y, &x)) in y.iter_mut().zip(v).enumerate() {
            let x = x as f64;
            if k == 0 {
                (m, l) = (x, 1.0);
            } else {
                let mx = m.max(x);
                l = l * (m - mx).exp() + (x - mx).exp();
                m = mx;
            }
            *y = m + l.ln();
        }
    }

    /// `gla` over one sequence of `t` steps, into `o` (`[t, vd]`).
    #[allow(clippy::too_many_arguments)]
    pub fn gla(q: &[f32], k: &[f32], v: &[f32], alpha: &[f32], o: &mut [f64], t: usize, kd: usize, vd: usize) {
        let mut s = vec![0.0f64; kd * vd];
        for step in 0..t {
            let (q, k, v, alpha) = (&q[step * kd..], &k[step * kd..], &v[step * vd..], &alpha[step * kd..]);
            for i in 0..kd {
                for j in 0..vd {
                    s[i * vd + j] = alpha[i] as f64 * s[i * vd + j] + k[i] as f64 * v[j] as f64;
                }
            }
            for j in 0..vd {
                o[step * vd + j] = (0..kd).map(|i| s[i * vd + j] * q[i] as f64).sum();
            }
        }
    }
}
