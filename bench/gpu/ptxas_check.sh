#!/usr/bin/env bash
# Assembles every PTX snapshot of the library (psm-codegen/tests/snapshots/ptx__ptx_*.snap,
# the modules `psmc emit --target ptx` prints for examples/ops at their default dims)
# with NVIDIA's ptxas for sm_90, and reports each kernel's registers and local memory.
#
#   bench/gpu/ptxas_check.sh            # ptxas from $PTXAS, else PATH, else /usr/local/cuda/bin
#   PTXAS=/path/to/ptxas ARCH=sm_90 bench/gpu/ptxas_check.sh
#
# Exit status: 0 when every module assembles, 1 otherwise, 2 when no ptxas is found.
set -u
root="$(cd "$(dirname "$0")/../.." && pwd)"
arch="${ARCH:-sm_90}"
ptxas="${PTXAS:-$(command -v ptxas || true)}"
if [ -z "$ptxas" ] && [ -x /usr/local/cuda/bin/ptxas ]; then ptxas=/usr/local/cuda/bin/ptxas; fi
if [ -z "$ptxas" ]; then
    echo "no ptxas: set PTXAS or put CUDA's bin directory on PATH" >&2
    exit 2
fi
"$ptxas" --version | tail -1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
count=0
for snap in "$root"/psm-codegen/tests/snapshots/ptx__ptx_*.snap; do
    name="$(basename "$snap" .snap)"
    name="${name#ptx__ptx_}"
    # The module is everything after insta's header (the second `---` line).
    awk 'n >= 2 { print } /^---$/ && n < 2 { n++ }' "$snap" > "$work/$name.ptx"
    count=$((count + 1))
    if "$ptxas" -arch="$arch" -v -o "$work/$name.cubin" "$work/$name.ptx" > "$work/$name.log" 2>&1; then
        # One line per kernel from ptxas -v: registers and stack frame (local memory).
        summary="$(awk '/Compiling entry function/ { k = $(NF-2); gsub(/\047/, "", k) }
                        /bytes stack frame/ { frame = $1 }
                        /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "registers,") r = $(i-1);
                                                  print "    " k ": " r " registers, " frame " bytes stack frame" }' "$work/$name.log")"
        echo "ok   $name"
        echo "$summary"
    else
        echo "FAIL $name"
        sed 's/^/    /' "$work/$name.log"
        failed=$((failed + 1))
    fi
done
echo "$((count - failed)) of $count modules assembled for $arch"
[ "$failed" -eq 0 ]
