#!/usr/bin/env bash
# The CUDA runtime's GPU tests, for a GPU machine without a Rust toolchain: build the
# test binaries where cargo is, carry the folder over, run them there from the
# repository root.
#
#   bench/gpu/cuda_tests.sh build DIR   # here: builds psm-runtime's `cuda` tests (unit
#                                       # tests of cuda::device, tests/cuda.rs), psmc's
#                                       # tests/cuda.rs, psm-codegen's tests/ptx_gpu.rs and
#                                       # psmc into DIR (debug info stripped)
#   bench/gpu/cuda_tests.sh run DIR     # there, from the repository root: runs them all,
#                                       # at once (their work is mostly on the host, and
#                                       # correctness, not time, is measured), logs in $OUT
#                                       # (or DIR) and a summary on stdout
#
# Where cargo and a GPU are on the same machine, `cargo test -p psm-runtime --test cuda`,
# `cargo test -p psm-runtime --lib cuda::`, `cargo test -p psmc --test cuda` and
# `cargo test -p psm-codegen --test ptx_gpu` do the same.
# Exit status of `run`: 0 when every binary passed, 1 otherwise.
set -u
mode="${1:-}"
dir="${2:-}"
if [ -z "$mode" ] || [ -z "$dir" ]; then
    echo "usage: $0 build|run DIR" >&2
    exit 2
fi
root="$(cd "$(dirname "$0")/../.." && pwd)"

# The test executables cargo reports for a `cargo test --no-run` command line.
executables() {
    cargo test "$@" --no-run --message-format=json 2>/dev/null | jq -r 'select(.executable != null and .profile.test) | .executable'
}

case "$mode" in
build)
    set -e
    mkdir -p "$dir"
    cd "$root"
    cp "$(executables -p psm-runtime --lib)" "$dir/runtime_lib"
    cp "$(executables -p psm-runtime --test cuda)" "$dir/runtime_cuda"
    cp "$(executables -p psmc --test cuda)" "$dir/psmc_cuda"
    cp "$(executables -p psm-codegen --test ptx_gpu)" "$dir/ptx_gpu"
    cargo build -p psmc
    cp target/debug/psmc "$dir/psmc"
    strip --strip-debug "$dir"/runtime_lib "$dir"/runtime_cuda "$dir"/psmc_cuda "$dir"/ptx_gpu "$dir"/psmc
    ls -la "$dir"
    ;;
run)
    logs="${OUT:-$dir}"
    export PSM_OPS_DIR="$PWD/examples/ops" PSMC="$dir/psmc"
    status=0
    tests=("runtime_lib cuda:: --test-threads 3" "runtime_cuda --test-threads 16 --nocapture" "psmc_cuda --test-threads 2 --nocapture" "ptx_gpu --test-threads 8 --nocapture")
    for t in "${tests[@]}"; do
        set -- $t
        bin="$1"
        shift
        (timeout 300 "$dir/$bin" "$@" > "$logs/$bin.log" 2>&1; echo $? > "$logs/$bin.rc") &
    done
    wait
    for t in "${tests[@]}"; do
        bin="${t%% *}"
        [ "$(cat "$logs/$bin.rc")" = 0 ] || status=1
        echo "== $bin (exit $(cat "$logs/$bin.rc"))"
        grep -m1 "skipped: CUDA not available" "$logs/$bin.log"
        grep -E "worst|CUDA device|panicked|FAILED|test result" "$logs/$bin.log"
    done
    rm -f "$logs"/*.rc
    exit $status
    ;;
*)
    echo "usage: $0 build|run DIR" >&2
    exit 2
    ;;
esac
