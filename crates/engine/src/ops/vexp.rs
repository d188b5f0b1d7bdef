//! The elementwise loops that call `exp` — SiLU-gated activation forward and backward, softmax
//! numerators — in AVX-512 or AVX2 + FMA when the CPU has it (chosen at run time), else as
//! scalar loops over the C library's `expf`. The crate is built for baseline x86-64, where these
//! loops stay scalar: a call to `expf` per element was 2–3 % of a LoRA step.
//!
//! The vector `exp` is Cody–Waite range reduction, Cephes' degree-6 polynomial and a scaling by
//! 2ⁿ (`vscalefps`; with AVX2 two exact multiplications by powers of two built in the exponent
//! bits): within 2 ulp of the exact value wherever that is a normal float, 0 below it, +∞ above
//! `f32::MAX`'s logarithm, NaN for NaN.

use super::cpu::avx2_fma as avx2;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether the CPU runs AVX-512F (the vector loops here and in [`super::bitmask`]).
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `(silu(x), silu'(x))` with `silu(x) = x · σ(x)`.
#[inline]
pub(crate) fn silu_scalar(x: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + (-x).exp());
    (x * s, s * (1.0 + x * (1.0 - s)))
}

/// `xs[i] ← e^(xs[i] − shift)`.
pub(crate) fn exp_shifted(xs: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is present.
        return unsafe { avx::exp_shifted(xs, shift) };
    } else if avx2() {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { avx2::exp_shifted(xs, shift) };
    }
    exp_shifted_scalar(xs, shift)
}

fn exp_shifted_scalar(xs: &mut [f32], shift: f32) {
    xs.iter_mut().for_each(|x| *x = (*x - shift).exp());
}

/// `out[i] = silu(g[i]) · u[i]`.
pub(crate) fn silu_gated(g: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is present.
        return unsafe { avx::silu_gated(g, u, out) };
    } else if avx2() {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { avx2::silu_gated(g, u, out) };
    }
    silu_gated_scalar(g, u, out)
}

fn silu_gated_scalar(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = silu_scalar(g).0 * u;
    }
}

/// `dg[i] = d[i] · u[i] · silu'(g[i])`, `du[i] = d[i] · silu(g[i])`.
pub(crate) fn silu_gated_backward(g: &[f32], u: &[f32], d: &[f32], dg: &mut [f32], du: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is present.
        return unsafe { avx::silu_gated_backward(g, u, d, dg, du) };
    } else if avx2() {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { avx2::silu_gated_backward(g, u, d, dg, du) };
    }
    silu_gated_backward_scalar(g, u, d, dg, du)
}

fn silu_gated_backward_scalar(g: &[f32], u: &[f32], d: &[f32], dg: &mut [f32], du: &mut [f32]) {
    let inputs = g.iter().zip(u).zip(d);
    for ((dg, du), ((&g, &u), &d)) in dg.iter_mut().zip(du.iter_mut()).zip(inputs) {
        let (a, da) = silu_scalar(g);
        *dg = d * u * da;
        *du = d * a;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::*;

    /// The mask of the first `n ≤ 16` lanes.
    #[inline]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as __mmask16 }
    }

    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let min = _mm512_set1_ps(-87.336_55);
        let max = _mm512_set1_ps(88.722_84);
        let c = _mm512_min_ps(_mm512_max_ps(x, min), max);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            c,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), c);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_2e-4);
        for coefficient in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coefficient));
        }
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
        let e = _mm512_scalef_ps(y, n);
        let e = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, min), e, _mm512_setzero_ps());
        let e =
            _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, max), e, _mm512_set1_ps(f32::INFINITY));
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), e, x)
    }

    /// `(silu(x), σ(x))`
    #[target_feature(enable = "avx512f")]
    fn silu16(x: __m512) -> (__m512, __m512) {
        let one = _mm512_set1_ps(1.0);
        let s = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        (_mm512_mul_ps(x, s), s)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted(xs: &mut [f32], shift: f32) {
        let s = _mm512_set1_ps(shift);
        for chunk in xs.chunks_mut(16) {
            let m = lanes(chunk.len());
            let p = chunk.as_mut_ptr();
            // SAFETY: the mask covers the chunk's lanes only.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, p);
                _mm512_mask_storeu_ps(p, m, exp16(_mm512_sub_ps(x, s)));
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_gated(g: &[f32], u: &[f32], out: &mut [f32]) {
        let len = out.len().min(g.len()).min(u.len());
        for i in (0..len).step_by(16) {
            let m = lanes(len - i);
            // SAFETY: the mask covers lanes inside all three slices.
            unsafe {
                let (a, _) = silu16(_mm512_maskz_loadu_ps(m, g.as_ptr().add(i)));
                let u = _mm512_maskz_loadu_ps(m, u.as_ptr().add(i));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, _mm512_mul_ps(a, u));
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_gated_backward(
        g: &[f32],
        u: &[f32],
        d: &[f32],
        dg: &mut [f32],
        du: &mut [f32],
    ) {
        let len = g.len().min(u.len()).min(d.len()).min(dg.len()).min(du.len());
        let one = _mm512_set1_ps(1.0);
        for i in (0..len).step_by(16) {
            let m = lanes(len - i);
            // SAFETY: the mask covers lanes inside all five slices.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, g.as_ptr().add(i));
                let (a, s) = silu16(x);
                // silu'(x) = σ(x) · (1 + x · (1 − σ(x)))
                let da = _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_sub_ps(one, s), one));
                let dv = _mm512_maskz_loadu_ps(m, d.as_ptr().add(i));
                let uv = _mm512_maskz_loadu_ps(m, u.as_ptr().add(i));
                _mm512_mask_storeu_ps(dg.as_mut_ptr().add(i), m, _mm512_mul_ps(_mm512_mul_ps(dv, uv), da));
                _mm512_mask_storeu_ps(du.as_mut_ptr().add(i), m, _mm512_mul_ps(dv, a));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let min = _mm256_set1_ps(-87.336_55);
        let max = _mm256_set1_ps(88.722_84);
        let c = _mm256_min_ps(_mm256_max_ps(x, min), max);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            c,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), c);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_2e-4);
        for coefficient in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(coefficient));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        // 2ⁿ for n in [-126, 128] as 2^(n/2) · 2^(n − n/2): both halves are normal floats.
        let n = _mm256_cvtps_epi32(n);
        let half = _mm256_srai_epi32::<1>(n);
        let pow2 = |k: __m256i| {
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127))))
        };
        let e = _mm256_mul_ps(_mm256_mul_ps(y, pow2(half)), pow2(_mm256_sub_epi32(n, half)));
        let e = _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, min));
        let e = _mm256_blendv_ps(e, _mm256_set1_ps(f32::INFINITY), _mm256_cmp_ps::<_CMP_GT_OQ>(x, max));
        _mm256_blendv_ps(e, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }

    /// `(silu(x), σ(x))`
    #[target_feature(enable = "avx2,fma")]
    fn silu8(x: __m256) -> (__m256, __m256) {
        let one = _mm256_set1_ps(1.0);
        let s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
        (_mm256_mul_ps(x, s), s)
    }

    /// Runs `f` on 8 lanes at a time of `inputs` (each at least `len` long) and writes its results
    /// into `outputs`; a last partial group goes through zero-padded buffers.
    #[target_feature(enable = "avx2,fma")]
    fn lanes8<const I: usize, const O: usize>(
        len: usize,
        inputs: [&[f32]; I],
        outputs: [&mut [f32]; O],
        f: impl Fn([__m256; I]) -> [__m256; O],
    ) {
        let mut outputs = outputs;
        assert!(inputs.iter().all(|x| x.len() >= len) && outputs.iter().all(|y| y.len() >= len));
        let whole = len / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: lanes i..i+8 lie inside every slice (asserted above).
            unsafe {
                let ys = f(std::array::from_fn(|k| _mm256_loadu_ps(inputs[k].as_ptr().add(i))));
                for (y, out) in ys.into_iter().zip(outputs.iter_mut()) {
                    _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
                }
            }
        }
        for i in (whole..len).step_by(8) {
            let n = len - i;
            let mut buf = [[0f32; 8]; I];
            for (b, x) in buf.iter_mut().zip(&inputs) {
                b[..n].copy_from_slice(&x[i..i + n]);
            }
            // SAFETY: each buffer holds 8 values.
            let ys = f(std::array::from_fn(|k| unsafe { _mm256_loadu_ps(buf[k].as_ptr()) }));
            for (y, out) in ys.into_iter().zip(outputs.iter_mut()) {
                let mut b = [0f32; 8];
                // SAFETY: `b` holds 8 values.
                unsafe { _mm256_storeu_ps(b.as_mut_ptr(), y) };
                out[i..i + n].copy_from_slice(&b[..n]);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted(xs: &mut [f32], shift: f32) {
        let s = _mm256_set1_ps(shift);
        let mut chunks = xs.chunks_exact_mut(8);
        for chunk in &mut chunks {
            // SAFETY: a chunk holds 8 values.
            unsafe {
                let x = _mm256_loadu_ps(chunk.as_ptr());
                _mm256_storeu_ps(chunk.as_mut_ptr(), exp8(_mm256_sub_ps(x, s)));
            }
        }
        let rest = chunks.into_remainder();
        let mut copy = [0f32; 8];
        copy[..rest.len()].copy_from_slice(rest);
        lanes8(rest.len(), [&copy], [rest], |[x]| [exp8(_mm256_sub_ps(x, s))]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_gated(g: &[f32], u: &[f32], out: &mut [f32]) {
        let len = out.len().min(g.len()).min(u.len());
        lanes8(len, [g, u], [out], |[g, u]| [_mm256_mul_ps(silu8(g).0, u)]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_gated_backward(
        g: &[f32],
        u: &[f32],
        d: &[f32],
        dg: &mut [f32],
        du: &mut [f32],
    ) {
        let len = g.len().min(u.len()).min(d.len()).min(dg.len()).min(du.len());
        let one = _mm256_set1_ps(1.0);
        lanes8(len, [g, u, d], [dg, du], |[x, u, d]| {
            let (a, s) = silu8(x);
            // silu'(x) = σ(x) · (1 + x · (1 − σ(x)))
            let da = _mm256_mul_ps(s, _mm256_fmadd_ps(x, _mm256_sub_ps(one, s), one));
            [_mm256_mul_ps(_mm256_mul_ps(d, u), da), _mm256_mul_ps(d, a)]
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    /// SiLU·u's backward: `(g, u, d, dg, du)`.
    type GatedBackward = fn(&[f32], &[f32], &[f32], &mut [f32], &mut [f32]);

    /// The loops of one instruction set: exp, SiLU·u, its backward.
    struct Loops {
        exp_shifted: fn(&mut [f32], f32),
        silu_gated: fn(&[f32], &[f32], &mut [f32]),
        silu_gated_backward: GatedBackward,
    }

    /// The dispatched loops (AVX-512 or AVX2 where the CPU has them), and the AVX2 loops on their
    /// own where the CPU runs them (CPUs with AVX-512 have AVX2 too).
    fn each_vector_loops() -> Vec<(&'static str, Loops)> {
        let mut all = vec![("dispatched", Loops { exp_shifted, silu_gated, silu_gated_backward })];
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY (all three): the CPU runs AVX2 and FMA.
            all.push((
                "avx2",
                Loops {
                    exp_shifted: |x, s| unsafe { avx2::exp_shifted(x, s) },
                    silu_gated: |g, u, o| unsafe { avx2::silu_gated(g, u, o) },
                    silu_gated_backward: |g, u, d, dg, du| unsafe {
                        avx2::silu_gated_backward(g, u, d, dg, du)
                    },
                },
            ));
        }
        all
    }

    #[test]
    fn exp_is_within_two_ulp_and_keeps_the_c_library_edges() {
        for (name, loops) in each_vector_loops() {
            exp_within_two_ulp(name, loops.exp_shifted);
        }
    }

    fn exp_within_two_ulp(name: &str, exp_shifted: fn(&mut [f32], f32)) {
        // Up to past the largest finite result, where 2ⁿ needs n = 128.
        let mut xs: Vec<f32> = (0..242_000).map(|i| -87.3 + i as f32 * 0.000_73).collect();
        let want: Vec<f32> = xs.iter().map(|&x| (x as f64).exp() as f32).collect();
        exp_shifted(&mut xs, 0.0);
        let worst = xs.iter().zip(&want).map(|(&a, &b)| ulps(a, b)).max().unwrap_or(0);
        assert!(worst <= 2, "{name}: {worst} ulp");
        let mut edges = [0.0, f32::NEG_INFINITY, -1000.0, f32::INFINITY, 1000.0, f32::NAN, 3.0];
        exp_shifted(&mut edges, 1.0);
        assert_eq!(&edges[..5], &[(-1f32).exp(), 0.0, 0.0, f32::INFINITY, f32::INFINITY], "{name}");
        assert!(edges[5].is_nan(), "{name}");
        assert!(ulps(edges[6], 2f32.exp()) <= 2, "{name}");
    }

    /// The vector loops against the scalar loops other CPUs run, on every tail length of a 16-
    /// and an 8-lane vector.
    #[test]
    fn the_vector_loops_match_the_scalar_loops_on_every_tail_length() {
        for (name, loops) in each_vector_loops() {
            vector_matches_scalar(name, loops);
        }
    }

    fn vector_matches_scalar(name: &str, loops: Loops) {
        let Loops { exp_shifted, silu_gated, silu_gated_backward } = loops;
        let close = |x: f32, y: f32| (x - y).abs() <= 1e-6 * (1.0 + y.abs());
        for len in [1, 7, 8, 9, 15, 16, 17, 40] {
            let g: Vec<f32> = (0..len).map(|i| (i as f32 - 20.0) * 0.7).collect();
            let u: Vec<f32> = (0..len).map(|i| 1.0 - i as f32 * 0.05).collect();
            let d: Vec<f32> = (0..len).map(|i| 0.3 + i as f32 * 0.01).collect();
            let (mut out, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
            silu_gated(&g, &u, &mut out);
            silu_gated_scalar(&g, &u, &mut want);
            let (mut dg, mut du) = (vec![f32::NAN; len], vec![f32::NAN; len]);
            let (mut want_dg, mut want_du) = (vec![f32::NAN; len], vec![f32::NAN; len]);
            silu_gated_backward(&g, &u, &d, &mut dg, &mut du);
            silu_gated_backward_scalar(&g, &u, &d, &mut want_dg, &mut want_du);
            let (mut e, mut want_e) = (g.clone(), g.clone());
            exp_shifted(&mut e, 2.5);
            exp_shifted_scalar(&mut want_e, 2.5);
            for i in 0..len {
                assert!(close(out[i], want[i]), "{name}: silu·u at {i} of {len}: {} vs {}", out[i], want[i]);
                assert!(close(dg[i], want_dg[i]), "{name}: dg at {i} of {len}");
                assert!(close(du[i], want_du[i]), "{name}: du at {i} of {len}");
                assert!(close(e[i], want_e[i]), "{name}: exp at {i} of {len}: {} vs {}", e[i], want_e[i]);
            }
        }
        // The scalar loops themselves are the textbook formulas.
        let (a, da) = silu_scalar(0.5);
        let s = 1.0 / (1.0 + (-0.5f64).exp());
        assert!((a as f64 - 0.5 * s).abs() < 1e-7 && (da as f64 - s * (1.0 + 0.5 * (1.0 - s))).abs() < 1e-7);
    }
}
