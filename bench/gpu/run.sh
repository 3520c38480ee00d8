#!/usr/bin/env bash
# Issue 5's GPU benchmark in one run on the GPU machine (which has no Rust): psm's
# kernels timed with inputs and outputs resident on the device (`psmc bench --backend
# cuda --resident`: CUDA events, median of 20 after 3 warm-up runs), the libraries of
# bench/gpu/baselines.py (torch, CuPy/CUB, accelerated-scan, torch associative_scan,
# then JAX in its own process) on the same shapes, and one table (bench/gpu/table.py):
# each psm row's GB/s, its fraction of the copy bandwidth measured in the same run, and
# its ratio against the fastest library on the same shape.
#
#   bench/gpu/run.sh build DIR   # here, where cargo is: psmc, the GPU test binaries
#                                # (bench/gpu/cuda_tests.sh build) and these scripts into DIR
#   bench/gpu/run.sh run DIR     # there, from the repository root: the GPU tests, psm's
#                                # rows, the baselines, the table; logs and JSON in $OUT (or DIR)
#
# accelerated-scan and fla-core come as wheels: with .whl/*.whl present, `run` installs them into
# /tmp/site first (the GPU machine has no network). SKIP_TESTS=1 skips the GPU tests
# (the whole run then fits one 10-minute device call more easily); FLA=1 adds issue 6's
# flash-linear-attention rows beside psm's chunkwise kernels (psm-codegen's ptx_gpu
# `chunkwise_timings` and `delta_rule_timings`) and the correctness check bench/gpu/fla_check.py; FLA_ONLY=1 runs
# only those (no GPU tests, no issue-5 rows or libraries); FLA_CHECK_MODELS=a,b narrows
# fla_check to those models and DEADLINE=<epoch seconds> ends it by then. The
# wheels are git-ignored: a device call must carry .whl beside DIR. Exit status: 1 when
# a GPU test or a psm row failed, else 0.
set -u
mode="${1:-}"
dir="${2:-}"
if [ -z "$mode" ] || [ -z "$dir" ]; then
    echo "usage: $0 build|run DIR" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"

case "$mode" in
build)
    set -e
    # The GPU test binaries and psmc (psm-codegen's ptx_gpu among them: its ignored
    # `chunkwise_timings` and `delta_rule_timings` give issue 6's psm rows).
    "$here/cuda_tests.sh" build "$dir"
    cp "$here/run.sh" "$here/table.py" "$dir/"
    ;;
run)
    logs="${OUT:-$dir}"
    status=0
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && export PYTHONPATH=/tmp/site
    fi
    export PSM_OPS_DIR="$PWD/examples/ops" PSMC="$dir/psmc"
    nvidia-smi --query-gpu=name,driver_version,clocks.max.memory --format=csv,noheader > "$logs/device.txt" 2>&1

    : > "$logs/psm.json"
    : > "$logs/torch.jsonl"
    : > "$logs/jax.jsonl"
    # 1. The GPU tests (bench/gpu/cuda_tests.sh: every library operator through every
    #    form and kernel, psmc's CUDA paths, psm-codegen's kernels).
    if [ -z "${SKIP_TESTS:-}${FLA_ONLY:-}" ]; then
        "$here/cuda_tests.sh" run "$dir" || status=1
    fi

    # Issue 5's rows and libraries (FLA_ONLY=1 skips them).
    if [ -z "${FLA_ONLY:-}" ]; then
        # 2. psm's rows (the host's hand-written loops not timed: the rivals are the GPU
        #    libraries below). --kernel lookback / lanes force the look-back scan and the lanes
        #    kernel; the row after each is what `auto` takes.
        ops=examples/ops
        n=268435456
        bench() { timeout 45 "$dir/psmc" bench --backend cuda --resident --no-baseline --format json --budget-ms 50 "$@" >> "$logs/psm.json" 2>> "$logs/psm.err" || { echo "psm row failed: $*" >&2; status=1; }; }
        for op in cumsum logcumsumexp running_max_index; do
            bench "$ops/$op.psm" --len $n --form auto --kernel lookback
            bench "$ops/$op.psm" --len $n --form auto
        done
        bench "$ops/cumsum.psm" --batch 4096 --len 65536 --form auto --kernel lookback
        bench "$ops/cumsum.psm" --batch 4096 --len 65536 --form auto
        bench "$ops/diag_affine.psm" -D D=1024 --batch 8 --len 8192 --form auto --kernel lanes
        bench "$ops/diag_affine.psm" -D D=1024 --batch 8 --len 8192 --form auto
        # The same recurrence in accelerated-scan's own layout (B, C, T): B · C = 8192
        # rows of T = 8192 steps, T contiguous (the rows' look-back scan).
        bench "$ops/scalar_affine.psm" --batch 8192 --len 8192 --form auto
        bench "$ops/attn_agg.psm" -D C=8 -D D=32 --len 4096 --form tree
        bench "$ops/gla.psm" -D K=128 -D V=128 --batch 64 --len 200 --form push

        # 3. The libraries (JAX last and alone: it reserves device memory).
        timeout 150 python3 bench/gpu/baselines.py torch > "$logs/torch.jsonl" 2> "$logs/torch.err"
        timeout 90 python3 bench/gpu/baselines.py jax > "$logs/jax.jsonl" 2> "$logs/jax.err"
    fi
    # Issue 6's rivals (flash-linear-attention, from the fla-core wheel in .whl) with FLA=1.
    : > "$logs/fla.jsonl"
    if [ -n "${FLA:-}${FLA_ONLY:-}" ]; then
        # psm's chunkwise kernels, resident, at fla's shapes (JSON lines naming their rivals).
        # fla's kernels are compiled and autotuned by Triton on first use (about 40 s a
        # model on the H200, no cache there): the FLA part needs a call of its own.
        timeout 60 "$dir/ptx_gpu" --ignored --exact chunkwise_timings --nocapture 2> "$logs/chunkwise.err" | grep '^{' >> "$logs/fla.jsonl"
        timeout 60 "$dir/ptx_gpu" --ignored --exact delta_rule_timings --nocapture 2>> "$logs/chunkwise.err" | grep '^{' >> "$logs/fla.jsonl"
        timeout 300 python3 bench/gpu/baselines.py fla >> "$logs/fla.jsonl" 2> "$logs/fla.err"
        # Correctness against fla's naive references and float64 (bench/gpu/fla_check.py).
        # FLA_CHECK_MODELS (comma-separated) narrows it; with DEADLINE (epoch seconds) it
        # stops by then.
        check_s=200
        [ -n "${DEADLINE:-}" ] && check_s=$(( DEADLINE - $(date +%s) < 200 ? DEADLINE - $(date +%s) : 200 ))
        [ "$check_s" -gt 0 ] && { timeout "$check_s" python3 bench/gpu/fla_check.py "$dir/psmc" /tmp/fla_check ${FLA_CHECK_MODELS:-} > "$logs/fla_check.txt" 2> "$logs/fla_check.err" || status=1; }
        tail -20 "$logs/fla_check.txt"
    fi
    wc -l "$logs/torch.jsonl" "$logs/jax.jsonl" "$logs/fla.jsonl"

    python3 "$dir/table.py" "$logs/psm.json" "$logs/torch.jsonl" "$logs/jax.jsonl" "$logs/fla.jsonl" | tee "$logs/table.txt"
    exit $status
    ;;
*)
    echo "usage: $0 build|run DIR" >&2
    exit 2
    ;;
esac
