#!/usr/bin/env python3
"""One table of issue 5's GPU benchmark (bench/gpu/run.sh): psm's rows from
`psmc bench --backend cuda --resident --format json` (one JSON document per run, one
row per form) beside the libraries' JSON lines of bench/gpu/baselines.py.

Per psm row: device time, GB/s (psm's bytes: inputs, params and outputs, each once),
the fraction of the copy bandwidth measured in the same run (torch copy_), the fastest
library on the same problem and psm's speed against it (library time / psm time: > 1
means psm is faster). A decode row (`push`, `DeviceStream::push_resident`: no host copies) is per call: the run's time over its steps.

Issue 6's chunkwise rows (psm-codegen's tests/ptx_gpu.rs `chunkwise_timings`, JSON lines
like the baselines' with a "vs" list naming the fla rows of the same problem) get a
table of their own beside fla's rows of the same shape (fla time / psm time: > 1 means
psm is faster).

Usage: table.py PSM_JSON BASELINE_JSONL...
"""

import json
import sys

N = 1 << 28


def documents(text):
    """The JSON documents of a file of concatenated (pretty-printed) documents."""
    decoder, i, out = json.JSONDecoder(), 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        doc, i = decoder.raw_decode(text, i)
        out.append(doc)


def problem(row):
    """The baselines' (suite, shape) of a psm row, or None."""
    op, shape = row["operator"], row["shape"]
    if op == "cumsum":
        return ("cumsum", shape)
    if op == "logcumsumexp":
        return ("logcumsumexp", shape)
    if op == "running_max_index":
        return ("cummax", shape)
    if op == "diag_affine" and len(shape) == 3:
        b, t, d = shape  # psm's [B, T, D] is accelerated-scan's (B, C = D, T)
        return ("affine", [b, d, t])
    if op == "scalar_affine" and len(shape) == 2:
        return ("affine", shape)  # B · C sequences of T steps: accelerated-scan's layout itself
    if op == "attn_agg":
        return ("attn_tree", shape)
    if op == "gla" and row["form"] == "push":
        b, _, k = shape
        return ("gla_decode", [b, k, row["dims"].get("V", k)])
    return None


def keys(lib):
    """The (suite, shape) problems a library row answers: its own, and for an affine
    recurrence over (B, C, T) also the B · C rows of T steps it is laid out as."""
    out = [(lib["suite"], lib["shape"])]
    if lib["suite"] == "affine" and len(lib["shape"]) == 3:
        b, c, t = lib["shape"]
        out.append(("affine", [b * c, t]))
    return out


def main():
    psm = [r for doc in documents(open(sys.argv[1]).read()) for r in doc.get("rows", [])]
    libs = []
    for path in sys.argv[2:]:
        try:
            lines = [line for line in open(path) if line.strip()]
        except OSError:
            continue
        skipped = []
        for line in lines:
            try:
                libs.append(json.loads(line))
            except json.JSONDecodeError:
                # A library that writes to stdout (warnings, progress, accelerated-scan's
                # extension build log) must not lose the table.
                skipped.append(line.strip())
        if skipped:
            print(f"{len(skipped)} lines of {path} are not results (first: {skipped[0][:100]})")
    copy = [l for l in libs if l.get("suite") == "copy" and "seconds" in l]
    copy_bps = copy[0]["bytes"] / copy[0]["seconds"] if copy else None
    print(f"copy bandwidth (torch copy_, same run): {copy_bps / 1e12:.2f} TB/s" if copy_bps else "copy bandwidth: not measured")
    for l in libs:
        if "error" in l:
            print(f"library failed: {l['name']} {l.get('shape')}: {l['error']}")
    head = f"{'psm row':34} {'form':9} {'shape':22} {'time':>11} {'GB/s':>7} {'x copy':>7}  {'best library (time)':44} {'vs best':>7}"
    print(head)
    print("-" * len(head))
    for r in psm:
        per_call = r["form"] == "push"
        seconds = r["seconds"] / r["shape"][1] if per_call else r["seconds"]
        gbs = r["bytes"] / r["seconds"] / 1e9
        frac = f"{r['bytes'] / r['seconds'] / copy_bps:.2f}" if copy_bps and not per_call else "-"
        key = problem(r)
        rivals = [l for l in libs if "seconds" in l and key and key in keys(l)]
        best = min(rivals, key=lambda l: l["seconds"]) if rivals else None
        best_text = f"{best['name']} ({best['seconds'] * 1e3:.3f} ms)" if best else "-"
        ratio = f"{best['seconds'] / seconds:.2f}" if best else "-"
        unit = f"{seconds * 1e6:.1f} us/call" if per_call else f"{seconds * 1e3:.3f} ms"
        name = f"{r['operator']}" + (" (resident push)" if per_call else "")
        print(f"{name:34} {r['form']:9} {str(r['shape']):22} {unit:>11} {gbs:7.0f} {frac:>7}  {best_text:44} {ratio:>7}")
    chunkwise = [l for l in libs if "vs" in l and "seconds" in l]
    if chunkwise:
        print("\nissue 6: psm's chunkwise kernels beside fla (same shape [B, T, H, D], bf16 q, k, v, o)")
        head = f"{'psm row':44} {'shape':22} {'time':>10}  {'fla row (time)':36} {'fla / psm':>9}"
        print(head)
        print("-" * len(head))
        for r in chunkwise:
            rivals = [l for l in libs if "seconds" in l and "vs" not in l and l["name"] in r["vs"] and l["shape"] == r["shape"]]
            for rival in rivals or [None]:
                text = f"{rival['name']} ({rival['seconds'] * 1e3:.3f} ms)" if rival else "-"
                ratio = f"{rival['seconds'] / r['seconds']:.2f}" if rival else "-"
                print(f"{r['name']:44} {str(r['shape']):22} {r['seconds'] * 1e3:7.3f} ms  {text:36} {ratio:>9}")
    compared = {(l["name"], str(l["shape"])) for r in chunkwise for l in libs if l["name"] in r["vs"] and l["shape"] == r["shape"]}
    matched = [problem(r) for r in psm]
    alone = [
        l
        for l in libs
        if "seconds" in l and "vs" not in l and l["suite"] != "copy" and not any(k in matched for k in keys(l)) and (l["name"], str(l["shape"])) not in compared
    ]
    if alone:
        print("\nlibrary rows without a psm row:")
        for l in alone:
            print(f"  {l['suite']:12} {l['name']:34} {str(l['shape']):22} {l['seconds'] * 1e3:9.3f} ms {l['bytes'] / l['seconds'] / 1e9:7.0f} GB/s")


if __name__ == "__main__":
    main()
