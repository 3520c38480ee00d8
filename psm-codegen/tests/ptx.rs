//! The PTX backend: the module of every library operator (at its default dims) is
//! snapshot-tested, and assembled by NVIDIA's `ptxas` when one is found (`PSM_PTXAS`,
//! else `ptxas` on PATH; CI has none and the test says so). Running the kernels is
//! psm-runtime's GPU test suite.

mod common;

use common::*;
use psm_codegen::ptx::{self, Kernel, ParamType, PtxOptions};

fn module(name: &str) -> ptx::PtxModule {
    let (agg, info) = parse_one(&library_source(name), &[]);
    ptx::compile(&agg, &info, &PtxOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn ptx_of_every_library_operator() {
    for name in library_names() {
        insta::assert_snapshot!(format!("ptx_{name}"), module(&name).text);
    }
}

/// The ptxas to use: `PSM_PTXAS`, else `ptxas` on PATH.
fn find_ptxas() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("PSM_PTXAS") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("ptxas")).find(|p| p.is_file())
}

#[test]
fn ptxas_assembles_every_library_operator() {
    let Some(ptxas) = find_ptxas() else {
        println!("skipped: no ptxas (set PSM_PTXAS or put ptxas on PATH)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("psm-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut failures = Vec::new();
    for name in library_names() {
        let path = dir.join(format!("{name}.ptx"));
        std::fs::write(&path, module(&name).text).expect("write ptx");
        let out = std::process::Command::new(&ptxas)
            .args(["-arch=sm_90", "-o"])
            .arg(dir.join(format!("{name}.cubin")))
            .arg(&path)
            .output()
            .expect("run ptxas");
        if !out.status.success() {
            failures.push(format!("{name}:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "ptxas rejected:\n{}", failures.join("\n"));
}

#[test]
fn kernels_and_parameters_follow_the_abi() {
    let m = module("ema");
    let names: Vec<&str> = m.kernels.iter().map(|k| k.kernel.name()).collect();
    assert_eq!(names, ["psm_scan", "psm_lift", "psm_combine", "psm_readout", "psm_identity"]);
    let params = |k: Kernel| -> Vec<String> {
        m.kernel(k).unwrap().params.iter().map(|p| p.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        params(Kernel::Scan),
        ["param_alpha", "in_v", "out_y", "nseq", "steps", "chunk", "state_in", "state_out", "flags"]
    );
    assert_eq!(params(Kernel::Lift), ["param_alpha", "in_v", "nseq", "steps", "leaves", "flags"]);
    assert_eq!(
        params(Kernel::Combine),
        [
            "param_alpha", "rows", "cols", "out", "out_row", "out_col", "left", "left_row", "left_col", "right",
            "right_row", "right_col", "flags"
        ]
    );
    assert_eq!(params(Kernel::Readout), ["param_alpha", "in_v", "out_y", "nseq", "steps", "prefixes", "flags"]);
    assert_eq!(params(Kernel::Identity), ["param_alpha", "count", "out", "stride"]);
    for k in &m.kernels {
        let last = k.params.last().unwrap();
        assert_eq!(last.ty == ParamType::U32, last.name == "flags", "{:?}", k.kernel);
        assert!(m.text.contains(&format!(".visible .entry {}(", k.kernel.name())));
    }
    // No identity declared: no identity kernel.
    assert!(module("running_max_index").kernel(Kernel::Identity).is_none());
    assert_eq!(m.layout.size, 16);
}

#[test]
fn target_and_version() {
    let (agg, info) = parse_one(&library_source("cumsum"), &[]);
    let m = ptx::compile(&agg, &info, &PtxOptions::default()).unwrap();
    assert!(m.text.contains(".version 7.8\n.target sm_90\n.address_size 64\n"));
    let old = ptx::compile(&agg, &info, &PtxOptions { arch: 80 }).unwrap();
    assert!(old.text.contains(".version 7.0\n.target sm_80\n"));
    assert_eq!(
        ptx::compile(&agg, &info, &PtxOptions { arch: 61 }).unwrap_err(),
        ptx::PtxError::UnsupportedArch(61)
    );
}

#[test]
fn sixteen_bit_storage_sets_the_version_it_needs() {
    // bf16: cvt.f32.bf16 needs PTX 7.1 and sm_80, so sm_80 modules say 7.1 and older
    // targets are refused; sm_90's 7.8 already covers it.
    let (agg, info) = parse_one(&library_source("gla_bf16"), &[]);
    let at = |arch| ptx::compile(&agg, &info, &PtxOptions { arch });
    assert!(at(90).unwrap().text.contains(".version 7.8\n.target sm_90\n"));
    assert!(at(80).unwrap().text.contains(".version 7.1\n.target sm_80\n"));
    assert!(at(86).unwrap().text.contains(".version 7.1\n.target sm_86\n"));
    assert_eq!(at(75).unwrap_err(), ptx::PtxError::UnsupportedDtype { dtype: psm_ir::ir::Dtype::BF16, arch: 75 });
    // f16 conversions exist on every target: the target's own version.
    let (agg, info) = parse_one(&library_source("cumsum_f16"), &[]);
    let m = ptx::compile(&agg, &info, &PtxOptions { arch: 70 }).unwrap();
    assert!(m.text.contains(".version 6.0\n.target sm_70\n"));
    assert!(m.text.contains("cvt.f32.f16") && m.text.contains("cvt.rn.f16.f32") && m.text.contains("ld.global.b16"));
}

#[test]
fn f32_max_takes_the_nan_form_from_sm_80() {
    // `max.NaN` / `min.NaN` need PTX 7.0 and sm_80; older targets compare and select.
    let (agg, info) = parse_one(&library_source("logcumsumexp"), &[]);
    let at = |arch| ptx::compile(&agg, &info, &PtxOptions { arch }).unwrap().text;
    assert!(at(80).contains("max.NaN.f32") && at(90).contains("max.NaN.f32"));
    let old = at(75);
    assert!(!old.contains(".NaN") && old.contains("maximum(") && old.contains("setp.nan.f32"));
}

#[test]
fn modules_are_ascii() {
    // ptxas rejects any other byte.
    for name in library_names() {
        assert!(module(&name).text.is_ascii(), "{name}");
    }
}

/// The parameter list of every `.entry` in the text is the one `PtxModule::kernels`
/// reports, for every library operator.
#[test]
fn signatures_match_the_text() {
    for name in library_names() {
        let m = module(&name);
        for k in &m.kernels {
            let head = format!(".visible .entry {}(\n", k.kernel.name());
            let at = m.text.find(&head).unwrap_or_else(|| panic!("{name}: no {}", k.kernel.name())) + head.len();
            let params: Vec<String> =
                m.text[at..].lines().take_while(|l| *l != ")").map(|l| l.trim().trim_end_matches(',').to_string()).collect();
            let expected: Vec<String> = k
                .params
                .iter()
                .map(|p| format!(".param .{} {}", if p.ty == ParamType::U32 { "u32" } else { "u64" }, p.name))
                .collect();
            assert_eq!(params, expected, "{name}: {}", k.kernel.name());
        }
        assert_eq!(m.text.matches(".visible .entry").count(), m.kernels.len(), "{name}");
    }
}

/// `psm_scan_entries` exists exactly for the operators whose entries scan
/// independently with a per-entry readout, `psm_combine_entries` where combine runs per
/// entry.
#[test]
fn per_entry_kernel_where_entries_scan_independently() {
    let with: Vec<String> =
        library_names().into_iter().filter(|n| module(n).kernel(Kernel::ScanEntries).is_some()).collect();
    // mamba_s6 is elementwise too, but its readout sums over the state's second axis;
    // cumsum and the other scalar elementwise operators have one entry.
    assert_eq!(with, ["average", "diag_affine"]);
    let combine: Vec<String> =
        library_names().into_iter().filter(|n| module(n).kernel(Kernel::CombineEntries).is_some()).collect();
    // Every elementwise operator of at least two entries without combine lets.
    assert_eq!(combine, ["average", "diag_affine", "mamba_s6"]);
}

/// The block-cooperative kernels exist exactly for the matrix-valued operators, with
/// the parameters of the kernels they stand in for, and the bytes of shared memory a
/// block needs: three element regions and the scan's `let` tensors for
/// `psm_scan_block`, the combine's `let` tensors for `psm_combine_block`.
#[test]
fn block_kernels_for_matrix_valued_elements() {
    let with: Vec<String> = library_names().into_iter().filter(|n| module(n).kernel(Kernel::ScanBlock).is_some()).collect();
    assert_eq!(
        with,
        [
            "attn_agg", "deltanet", "gated_deltanet", "gla", "gla_bf16", "linear_attention", "mamba2", "mamba_s6",
            "matmul2x2", "mlstm", "mlstm_affine", "retnet", "rwkv6"
        ]
    );
    for name in library_names() {
        let m = module(&name);
        assert_eq!(m.kernel(Kernel::ScanBlock).is_some(), m.kernel(Kernel::CombineBlock).is_some(), "{name}");
        if let (Some(block), Some(scan)) = (m.kernel(Kernel::ScanBlock), m.kernel(Kernel::Scan)) {
            assert_eq!(block.params, scan.params, "{name}");
            assert_eq!(m.kernel(Kernel::CombineBlock).unwrap().params, m.kernel(Kernel::Combine).unwrap().params);
            assert!(m.block.scan.as_ref().is_ok_and(|b| b.shared_bytes >= 3 * m.layout.size), "{name}: {:?}", m.block);
        } else {
            assert!(m.block.scan.as_ref().unwrap_err().contains("matrix-valued"), "{name}");
        }
    }
    // GLA's s[K, V] at its default K = V = 16: three elements of 16 + 16·16 floats; combine has no `let`.
    let gla = module("gla");
    // Its widest statements write s: K·V entries.
    let kernel = |shared_bytes, parts| Ok(ptx::BlockKernel { shared_bytes, widest: 16 * 16, parts });
    assert_eq!(gla.block, ptx::BlockKernels { scan: kernel(3 * 4 * (16 + 16 * 16), 2), combine: kernel(0, 1) });
    // The scans whose element splits across two blocks per item (block::Partition): the
    // linear-RNN states along their value axis; not attn_agg (attention mixes every row
    // and column), nor the delta rules at their default sizes.
    let parts = |name: &String| module(name).block.scan.map_or(0, |b| b.parts);
    let split: Vec<String> = with.iter().filter(|n| parts(n) == 2).cloned().collect();
    assert_eq!(split, ["gla", "gla_bf16", "linear_attention", "mamba2", "mlstm", "mlstm_affine", "retnet", "rwkv6"]);
    assert!(with.iter().all(|n| split.contains(n) || parts(n) == 1));
    // GLA's s[K, V] and o[V] split along V (8 of 16 coordinates per block), a[K] whole.
    let scan_block = &gla.text[gla.text.find(".entry psm_scan_block").unwrap()..];
    assert!(scan_block.contains("the block's part: coordinates [part*8, part*8 + 8) of each part axis"));
    assert!(scan_block.contains("the part of field s") && !scan_block.contains("the part of field a"));
    assert!(!gla.text.contains("psm_combine_block_shared"));
    // attn_agg's combine keeps its attention layer's `let` tensors in shared memory.
    let attn = module("attn_agg");
    // z, q, k, v and o have 2·C·D = 512 entries.
    assert!(attn.block.combine.as_ref().is_ok_and(|b| b.shared_bytes > 0 && b.widest == 2 * 8 * 32), "{:?}", attn.block);
    assert!(attn.text.contains(".extern .shared .align 8 .b8 psm_combine_block_shared[];"));
}

/// A block whose shared memory would exceed the target's maximum: the kernel is left
/// out and the module says why; what fits stays.
#[test]
fn block_kernels_fall_back_when_shared_memory_is_too_small() {
    let dims = [("K", 200), ("V", 200)];
    let (agg, info) = parse_one(&library_source("gla"), &dims);
    let m = ptx::compile(&agg, &info, &PtxOptions::default()).unwrap();
    let why = m.block.scan.as_ref().unwrap_err();
    assert_eq!(why, &format!("`psm_scan_block` needs {} bytes of shared memory per block; the target allows {}", 3 * 4 * (200 + 200 * 200), 227 * 1024));
    assert!(m.kernel(Kernel::ScanBlock).is_none() && !m.text.contains("psm_scan_block"));
    assert!(m.kernel(Kernel::CombineBlock).is_some());
    // K = V = 128 (the decode benchmark's GLA) fits sm_90 but not sm_80.
    let dims = [("K", 128), ("V", 128)];
    let (agg, info) = parse_one(&library_source("gla"), &dims);
    assert!(ptx::compile(&agg, &info, &PtxOptions::default()).unwrap().block.scan.is_ok());
    assert!(ptx::compile(&agg, &info, &PtxOptions { arch: 80 }).unwrap().block.scan.is_err());
}

/// The block scan's split (psm-codegen `block::partition`) follows the IR: a readout
/// that sums a row splits the state by rows; a combine that reads the transpose of a
/// split tensor (another block's part) leaves the element whole.
#[test]
fn block_scan_splits_where_every_read_stays_in_its_part() {
    let by_rows = "aggregator rows<N = 16> {
        input   { v[N], w[N] }
        element { s[N, N] }
        lift(x) { s[i, j] = x.v[i] * x.w[j]; }
        combine(l, r) { s[i, j] = l.s[i, j] + r.s[i, j]; }
        readout inclusive(st, x) -> o[N] { o[i] = sum(j) st.s[i, j] * x.w[j]; }
    }";
    let (agg, info) = parse_one(by_rows, &[]);
    let m = ptx::compile(&agg, &info, &PtxOptions::default()).unwrap();
    assert_eq!(m.block.scan.as_ref().map(|b| b.parts), Ok(2));
    let scan_block = &m.text[m.text.find(".entry psm_scan_block").unwrap()..];
    // Rows 8·part … 8·part + 7: the readout's rows (o[i]) are the block's.
    assert!(scan_block.contains("coordinates [part*8, part*8 + 8) of each part axis") && scan_block.contains("the part of field s"));
    let transposed = by_rows.replace("l.s[i, j] + r.s[i, j]", "l.s[j, i] + r.s[i, j]");
    let (agg, info) = parse_one(&transposed, &[]);
    let m = ptx::compile(&agg, &info, &PtxOptions::default()).unwrap();
    assert_eq!(m.block.scan.as_ref().map(|b| b.parts), Ok(1));
    assert!(!m.text.contains("the block's part"));
}
