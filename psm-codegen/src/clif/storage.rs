//! The 16-bit storage dtypes in CLIF: a `bf16`/`f16` entry is loaded as 16 bits and
//! widened to f32 exactly, and an f32 value is rounded to nearest, ties to even, and
//! stored as 16 bits — with integer operations and one exact f32 operation each way,
//! since Cranelift 0.135 lowers no f16 conversion on x86-64 (`fpromote`/`fdemote`
//! cover f32 ↔ f64 only). The results are those of psm-ir's `Dtype::round_to_storage`
//! (the `half` crate's conversions), NaN payloads included.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, Endianness, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use psm_ir::ir::Dtype;

/// 2^112: scales an f16 whose bits sit in an f32's exponent and mantissa fields
/// (shifted left by 13) from f32's exponent bias (127) to f16's (15).
const F16_REBIAS: f32 = 5_192_296_858_534_827_628_530_496_329_220_096.0;

/// The f32 value of the 16-bit pattern `raw` (an i32, upper half zero), or the F32X4
/// of four such patterns in an I32X4 (vector code): the same operations lane-wise.
pub(super) fn widen(b: &mut FunctionBuilder<'_>, dtype: Dtype, raw: Value) -> Value {
    let ty = b.func.dfg.value_type(raw);
    let (float, vector) = if ty.is_vector() { (types::F32X4, true) } else { (types::F32, false) };
    let little = MemFlagsData::new().with_endianness(Endianness::Little);
    let bits = match dtype {
        // bf16 is the upper half of an f32.
        Dtype::BF16 => b.ins().ishl_imm_u(raw, 16),
        _ => {
            let constant = |b: &mut FunctionBuilder<'_>, x: i64| {
                let c = b.ins().iconst(types::I32, x);
                if vector {
                    b.ins().splat(ty, c)
                } else {
                    c
                }
            };
            let low15 = constant(b, 0x7FFF);
            let magnitude = b.ins().band(raw, low15);
            let shifted = b.ins().ishl_imm_u(magnitude, 13);
            // Finite values, subnormals included: the fields moved into place read as
            // the value times 2^-112, which one exact multiplication undoes.
            let scaled = b.ins().bitcast(float, little, shifted);
            let factor = b.ins().f32const(F16_REBIAS);
            let factor = if vector { b.ins().splat(float, factor) } else { factor };
            let finite = b.ins().fmul(scaled, factor);
            let finite = b.ins().bitcast(ty, little, finite);
            // inf and NaN: exponent 31 becomes 255, the mantissa (payload) kept.
            let rebias = constant(b, 0x7000_0000);
            let special = b.ins().iadd(shifted, rebias);
            // A signed compare (the magnitudes are below 2^15): SSE2 has it for lanes.
            let exponent = constant(b, 0x7C00);
            let is_special = b.ins().icmp(IntCC::SignedGreaterThanOrEqual, magnitude, exponent);
            let magnitude = if vector {
                b.ins().bitselect(is_special, special, finite)
            } else {
                b.ins().select(is_special, special, finite)
            };
            let sign_bit = constant(b, 0x8000);
            let sign = b.ins().band(raw, sign_bit);
            let sign = b.ins().ishl_imm_u(sign, 16);
            b.ins().bor(magnitude, sign)
        }
    };
    b.ins().bitcast(float, little, bits)
}

/// The 16-bit pattern (in an i32) of the f32 `v` rounded to `dtype`.
pub(super) fn narrow(b: &mut FunctionBuilder<'_>, dtype: Dtype, v: Value) -> Value {
    let bits = b.ins().bitcast(types::I32, MemFlagsData::new(), v);
    let magnitude = b.ins().band_imm_u(bits, 0x7FFF_FFFF);
    let is_nan = b.ins().icmp_imm_u(IntCC::UnsignedGreaterThan, magnitude, 0x7F80_0000);
    match dtype {
        Dtype::BF16 => {
            // Adding 0x7FFF plus the lowest kept bit carries into the kept half exactly
            // when the dropped half is above the tie, or at it with the kept half odd;
            // overflow carries into the exponent and gives inf.
            let high = b.ins().ushr_imm_u(bits, 16);
            let odd = b.ins().band_imm_u(high, 1);
            let biased = b.ins().iadd_imm_u(bits, 0x7FFF);
            let biased = b.ins().iadd(biased, odd);
            let rounded = b.ins().ushr_imm_u(biased, 16);
            let quiet = b.ins().bor_imm_u(high, 0x40);
            b.ins().select(is_nan, quiet, rounded)
        }
        _ => {
            let sign = b.ins().ushr_imm_u(bits, 16);
            let sign = b.ins().band_imm_u(sign, 0x8000);
            // |v| ≥ 2^-14: an f16 normal (or inf after rounding). Rebias the exponent
            // (127 → 15) and round the 13 dropped bits as for bf16 above.
            let kept = b.ins().ushr_imm_u(magnitude, 13);
            let odd = b.ins().band_imm_u(kept, 1);
            let biased = b.ins().iadd_imm_s(magnitude, 0xFFF - (112 << 23));
            let biased = b.ins().iadd(biased, odd);
            let normal = b.ins().ushr_imm_u(biased, 13);
            // |v| < 2^-14: an f16 subnormal. Adding 0.5 leaves |v| rounded (to nearest
            // even, by the f32 addition) to a multiple of 2^-24, f16's smallest
            // subnormal, in the low bits of the sum's mantissa.
            let abs = b.ins().bitcast(types::F32, MemFlagsData::new(), magnitude);
            let half = b.ins().f32const(0.5);
            let sum = b.ins().fadd(abs, half);
            let sum = b.ins().bitcast(types::I32, MemFlagsData::new(), sum);
            let subnormal = b.ins().iadd_imm_s(sum, -0x3F00_0000);
            let is_normal = b.ins().icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, magnitude, 113 << 23);
            let finite = b.ins().select(is_normal, normal, subnormal);
            // |v| ≥ 2^16 rounds to inf; NaN keeps the top of its payload, made quiet.
            let inf = b.ins().iconst(types::I32, 0x7C00);
            let overflows = b.ins().icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, magnitude, 143 << 23);
            let finite = b.ins().select(overflows, inf, finite);
            let payload = b.ins().band_imm_u(kept, 0x3FF);
            let quiet = b.ins().bor_imm_u(payload, 0x7E00);
            let magnitude = b.ins().select(is_nan, quiet, finite);
            b.ins().bor(magnitude, sign)
        }
    }
}
