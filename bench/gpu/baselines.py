#!/usr/bin/env python3
"""The GPU libraries psm is measured against (issue 5's benchmark), timed on the shapes
that bench/gpu/run.sh also gives psm's own kernels.

Prints one JSON object per line: {"suite", "name", "shape", "seconds", "bytes"}, where
`seconds` is the median of timed repetitions (CUDA events for torch/CuPy, a host clock
after `block_until_ready` for JAX) and `bytes` the fewest bytes the operation must move
(each input read once, each output written once), so bytes/seconds is its bandwidth.
A library that fails on a shape prints {"name", "error"} instead of stopping the run.

Usage: baselines.py torch|jax|fla|fla-kernels   (JAX in its own process: it reserves
device memory; fla needs the fla-core wheel, see bench/gpu/run.sh; PSM_FLA_LENGTHS=T,..
limits fla's lengths).
"""

import json
import math
import os
import sys
import time

N = 1 << 28               # f32 scans: 2^28 elements
ROWS = (4096, 65536)      # the same elements as [4096, 65536] rows
AFFINE = (8, 1024, 8192)  # diagonal affine recurrence, accelerated-scan's (B, C, T)
TREE_CHUNKS, C, D = 4096, 8, 32  # the attention aggregator's tree (examples/ops/attn_agg.psm)
DECODE = (64, 128, 128)   # GLA decode step: batch, K, V
FLA_BHD = (4, 16, 128)    # issue 6: batch, heads, head dim (K = V = D)
FLA_LENGTHS = (1024, 4096, 16384)


def emit(suite, name, shape, seconds, nbytes):
    print(json.dumps({"suite": suite, "name": name, "shape": shape, "seconds": seconds, "bytes": nbytes}), flush=True)


def fail(suite, name, shape, err):
    msg = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    print(json.dumps({"suite": suite, "name": name, "shape": shape, "error": msg}), flush=True)


def timed(fn, reps=20, warmup=3):
    """The median of `reps` runs of fn timed by CUDA events, after `warmup` runs."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


def run(suite, name, shape, fn, nbytes, **kw):
    """Times fn and prints its line, or its failure; one library's failure must not end the run."""
    import torch

    try:
        emit(suite, name, shape, timed(fn, **kw), nbytes)
    except Exception as err:
        fail(suite, name, shape, err)
    torch.cuda.empty_cache()


def torch_suite():
    import torch

    dev = torch.device("cuda")
    torch.manual_seed(0)

    f32 = 4
    x = torch.randn(N, device=dev)
    xr = x.view(*ROWS)
    out = torch.empty_like(x)
    run("copy", "torch copy_", [N], lambda: out.copy_(x), 2 * N * f32)

    # Scalar scans.
    run("cumsum", "torch.cumsum", [N], lambda: torch.cumsum(x, 0, out=out), 2 * N * f32)
    run("cumsum", "torch.cumsum", list(ROWS), lambda: torch.cumsum(xr, 1, out=out.view(*ROWS)), 2 * N * f32)
    try:
        # CuPy reads its accelerators when imported (14.x takes CUB by default).
        os.environ.setdefault("CUPY_ACCELERATORS", "cub")
        import cupy

        cx = cupy.asarray(x)
        cout = cupy.empty_like(cx)

        def cub_cumsum():
            cupy.cumsum(cx, axis=None, out=cout)

        run("cumsum", "CuPy cumsum (CUB)", [N], cub_cumsum, 2 * N * f32)
        del cx, cout
    except Exception as err:
        fail("cumsum", "CuPy cumsum (CUB)", [N], err)

    # Running max with index (values f32 + indices i64 out) and log-cumsum-exp.
    run("cummax", "torch.cummax", [N], lambda: torch.cummax(x, 0), N * (f32 + f32 + 8), reps=5, warmup=1)
    run("cummax", "torch.cummax", list(ROWS), lambda: torch.cummax(xr, 1), N * (f32 + f32 + 8), reps=5, warmup=1)
    run("logcumsumexp", "torch.logcumsumexp", [N], lambda: torch.logcumsumexp(x, 0, out=out), 2 * N * f32)
    run("logcumsumexp", "torch.logcumsumexp", list(ROWS), lambda: torch.logcumsumexp(xr, 1, out=out.view(*ROWS)), 2 * N * f32)

    try:
        from torch._higher_order_ops.associative_scan import associative_scan

        add_scan = torch.compile(lambda v: associative_scan(lambda a, b: a + b, v, dim=0, combine_mode="pointwise"))
        run("cumsum", "torch associative_scan", [N], lambda: add_scan(x), 2 * N * f32)
    except Exception as err:
        fail("cumsum", "torch associative_scan", [N], err)
    del x, xr, out
    torch.cuda.empty_cache()

    # Diagonal affine recurrence h_t = a_t h_{t-1} + b_t over (B, C, T), T contiguous.
    B, Ch, T = AFFINE
    gates = torch.rand(B, Ch, T, device=dev) * 0.5 + 0.5
    tokens = torch.randn(B, Ch, T, device=dev)
    affine_bytes = 3 * B * Ch * T * f32
    for mod in ("warp", "scalar"):
        try:
            scan = __import__(f"accelerated_scan.{mod}", fromlist=["scan"]).scan
            run("affine", f"accelerated-scan {mod}", list(AFFINE), lambda: scan(gates, tokens), affine_bytes)
        except Exception as err:
            fail("affine", f"accelerated-scan {mod}", list(AFFINE), err)
    try:
        from torch._higher_order_ops.associative_scan import associative_scan

        def affine_op(l, r):
            return (l[0] * r[0], r[0] * l[1] + r[1])

        affine_scan = torch.compile(lambda a, b: associative_scan(affine_op, (a, b), dim=2, combine_mode="pointwise"))
        run("affine", "torch associative_scan", list(AFFINE), lambda: affine_scan(gates, tokens), affine_bytes)
    except Exception as err:
        fail("affine", "torch associative_scan", list(AFFINE), err)
    del gates, tokens
    torch.cuda.empty_cache()

    # The attention aggregator's fixed tree over TREE_CHUNKS chunks, in batched torch:
    # the same Blelloch bracketing as psm's tree form (up-sweep, down-sweep, readout).
    try:
        w = [torch.randn(D, D, device=dev) / math.sqrt(D) for _ in range(3)]
        tok = torch.randn(TREE_CHUNKS, C, D, device=dev)

        def combine(left, right):
            z = torch.cat([left, right], dim=1)
            q, k, v = (z @ wi for wi in w)
            p = torch.softmax(q @ k.transpose(1, 2) * (1.0 / math.sqrt(D)), dim=-1)
            return ((p @ v) + z)[:, C:]

        def tree():
            n = TREE_CHUNKS
            levels = [tok]
            while levels[-1].shape[0] >= 2:
                below = levels[-1]
                levels.append(combine(below[0::2][: below.shape[0] // 2], below[1::2]))
            pre = torch.zeros(n + 1, C, D, device=dev)
            for i in reversed(range(len(levels))):
                block = 1 << i
                count = (n // block + 1) // 2
                if count == 0:
                    continue
                nodes = levels[i][0 : 2 * count : 2]
                left = pre[0 : 2 * count * block : 2 * block]
                new = nodes.clone()
                if count > 1:
                    new[1:] = combine(left[1:], nodes[1:])
                pre[block : (2 * count - 1) * block + 1 : 2 * block] = new
            return tok + pre[:n].mean(dim=1, keepdim=True)

        run("attn_tree", "torch (batched levels)", [TREE_CHUNKS, C, D], tree, 2 * TREE_CHUNKS * C * D * f32)
    except Exception as err:
        fail("attn_tree", "torch (batched levels)", [TREE_CHUNKS, C, D], err)

    # One GLA decode step for a batch: S = diag(alpha) S + k v^T ; o = S^T q.
    Bd, K, V = DECODE
    S = torch.randn(Bd, K, V, device=dev)
    q, k, alpha = (torch.randn(Bd, K, device=dev) for _ in range(3))
    v = torch.randn(Bd, V, device=dev)

    def decode():
        S.mul_(alpha[:, :, None]).add_(k[:, :, None] * v[:, None, :])
        return torch.einsum("bkv,bk->bv", S, q)

    decode_bytes = (2 * Bd * K * V + 3 * Bd * K + 2 * Bd * V) * f32
    run("gla_decode", "torch eager", list(DECODE), decode, decode_bytes, reps=200, warmup=20)
    try:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            decode()
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            decode()
        run("gla_decode", "torch CUDA graph", list(DECODE), g.replay, decode_bytes, reps=200, warmup=20)
    except Exception as err:
        fail("gla_decode", "torch CUDA graph", list(DECODE), err)


def jax_suite():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp

    def timed_jit(fn, *args, reps=10):
        jitted = jax.jit(fn)
        jax.block_until_ready(jitted(*args))  # compile and warm up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(jitted(*args))
            times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]

    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (N,), dtype=jnp.float32)
    for name, shape, fn, arg in [
        ("cumsum", [N], lambda v: jax.lax.associative_scan(jnp.add, v), x),
        ("cumsum", list(ROWS), lambda v: jax.lax.associative_scan(jnp.add, v, axis=1), x.reshape(ROWS)),
    ]:
        try:
            emit(name, "jax.lax.associative_scan", shape, timed_jit(fn, arg), 2 * N * 4)
        except Exception as err:
            fail(name, "jax.lax.associative_scan", shape, err)
    del x
    B, Ch, T = AFFINE
    a = jax.random.uniform(key, AFFINE, dtype=jnp.float32) * 0.5 + 0.5
    b = jax.random.normal(key, AFFINE, dtype=jnp.float32)

    def affine(a, b):
        return jax.lax.associative_scan(lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1]), (a, b), axis=2)[1]

    try:
        emit("affine", "jax.lax.associative_scan", list(AFFINE), timed_jit(affine, a, b), 3 * B * Ch * T * 4)
    except Exception as err:
        fail("affine", "jax.lax.associative_scan", list(AFFINE), err)


def fla_problems():
    """Issue 6's problems at B = 4, H = 16, D = 128 in bf16, one length at a time: yields
    (T, shape, rows), rows as (name, call, bytes) of flash-linear-attention's chunkwise
    kernels (fla-core, Triton) and causal softmax attention (SDPA), forward only. The
    inputs live while the caller handles their length."""
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    torch.manual_seed(0)
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gla import chunk_gla
    from fla.ops.linear_attn import chunk_linear_attn
    from fla.ops.retention import chunk_retention
    from fla.ops.simple_gla import chunk_simple_gla

    B, H, D = FLA_BHD
    bf16 = torch.bfloat16
    lengths = [int(t) for t in os.environ.get("PSM_FLA_LENGTHS", "").split(",") if t] or FLA_LENGTHS
    for T in lengths:
        shape = [B, T, H, D]
        q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=bf16) for _ in range(3))
        k_unit = F.normalize(k.float(), dim=-1).to(bf16)  # the delta rule wants unit keys
        g_scalar = F.logsigmoid(torch.randn(B, T, H, device=dev)).float()
        g_diag = (F.logsigmoid(torch.randn(B, T, H, D, device=dev)) / 16).float()
        beta = torch.rand(B, T, H, device=dev, dtype=bf16).sigmoid()
        qkvo = 4 * B * T * H * D * 2  # q, k, v read and o written once, bf16
        qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
        yield T, shape, [
            ("chunk_simple_gla", lambda: chunk_simple_gla(q, k, v, g=g_scalar), qkvo + B * T * H * 4),
            ("chunk_gla", lambda: chunk_gla(q, k, v, g=g_diag), qkvo + B * T * H * D * 4),
            ("chunk_linear_attn", lambda: chunk_linear_attn(q, k, v, normalize=False), qkvo),
            ("chunk_retention", lambda: chunk_retention(q, k, v), qkvo),
            ("chunk_delta_rule", lambda: chunk_delta_rule(q, k_unit, v, beta), qkvo + B * T * H * 2),
            ("torch SDPA causal", lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True), qkvo),
        ]
        del q, k, v, k_unit, g_scalar, g_diag, beta, qh, kh, vh
        torch.cuda.empty_cache()


def fla_suite():
    """Issue 6's rivals (fla_problems), each call timed whole, as a user calls it. psm's
    rows for the same problems come from psm-codegen's tests/ptx_gpu.rs
    `chunkwise_timings`, whose "vs" lists name the rows below (table.py pairs them)."""
    for _, shape, rows in fla_problems():
        for name, fn, nbytes in rows:
            run("fla", name, shape, fn, nbytes, reps=10, warmup=3)


def fla_kernels():
    """Where fla's time goes: each kernel of each fla_problems call, its mean device time
    over 10 calls (torch.profiler, after 3 warm-up calls), one JSON line per kernel
    {"suite": "fla-kernels", "name", "shape", "kernel", "seconds", "launches"}, to set
    beside psm's per-kernel times (chunkwise_timings' stderr)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    calls = 10
    for _, shape, rows in fla_problems():
        for name, fn, _ in rows:
            try:
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(calls):
                        fn()
                    torch.cuda.synchronize()
            except Exception as err:
                fail("fla-kernels", name, shape, err)
                continue
            for e in prof.key_averages():
                micros = getattr(e, "self_device_time_total", None)
                if micros is None:
                    micros = e.self_cuda_time_total
                if micros > 0:
                    line = {"suite": "fla-kernels", "name": name, "shape": shape, "kernel": e.key[:120],
                            "seconds": micros / 1e6 / calls, "launches": e.count / calls}
                    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "torch"
    {"torch": torch_suite, "jax": jax_suite, "fla": fla_suite, "fla-kernels": fla_kernels}[which]()
