//! The bf16 operands of the tile unit: activations rounded and laid out per product
//! ([`pack_rows`], [`pack_x`]), and a weight's two layouts prepared once ([`Prepared`]).

use super::{T, fits, tiles};
use crate::ops::cpu::threads;
use std::mem::MaybeUninit;

/// f32 to bf16 bits, rounding to nearest even (NaN stays NaN), as `half` rounds. Branch-free,
/// so that loops calling it vectorise.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() { ((b >> 16) | 0x40) as u16 } else { rounded }
}

/// A buffer of `len` values written chunk by chunk (`chunk` values each, across the kernel pool)
/// by `fill(chunk_index, chunk)`, which must write every element: packing buffers are never
/// zeroed first (that pass cost as much as the packing).
fn written(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<u16>]) + Sync + Send,
) -> Vec<u16> {
    let mut v = Vec::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    if threads() > 1 {
        use rayon::prelude::*;
        spare.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    } else {
        spare.chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    }
    // SAFETY: every caller's `fill` writes each element of its chunk (see each one).
    unsafe { v.set_len(len) };
    v
}

/// f32 values to bf16 bits, rounding to nearest even: 32 at a time with AVX512-BF16 where the
/// CPU has it (every CPU with AMX does), else [`bf16_bits`] one by one. The vector instruction
/// also reads subnormal inputs as zero.
pub fn convert(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
    let n = src.len().min(dst.len());
    let done = tiles::convert_vector(&src[..n], &mut dst[..n]);
    for (o, &x) in dst[done..n].iter_mut().zip(&src[done..n]) {
        o.write(bf16_bits(x));
    }
}

/// [`convert`] into initialised memory.
pub fn convert_into(src: &[f32], dst: &mut [u16]) {
    // SAFETY: `MaybeUninit<u16>` has u16's layout, and `convert` writes only valid values.
    convert(src, unsafe { &mut *(dst as *mut [u16] as *mut [MaybeUninit<u16>]) });
}

/// `X` `[m, k]` as the right operand of `W · Xᵀ`: blocks of 16 rows (to a multiple of 32 rows,
/// padded with zeros), each as `k/2` rows of 16 pairs `(X[j][2p], X[j][2p+1])`.
pub fn pack_x(x: &[f32], m: usize, k: usize) -> Vec<u16> {
    let blocks = m.div_ceil(2 * T) * 2;
    written(blocks * T * k, T * k, |b, dst| {
        // Every (pair row p, row jj, half e) slot of the block is written: a value or padding.
        let mut row = vec![MaybeUninit::new(0u16); k];
        for jj in 0..T {
            let j = b * T + jj;
            match x.get(j * k..(j + 1) * k) {
                Some(src) => convert(src, &mut row),
                None => row.iter_mut().for_each(|v| {
                    v.write(0);
                }),
            }
            for (p, pair) in row.chunks_exact(2).enumerate() {
                dst[p * 2 * T + 2 * jj] = pair[0];
                dst[p * 2 * T + 2 * jj + 1] = pair[1];
            }
        }
    })
}

/// `G` `[m, n]` as the left operand of `G · W`: row-major bf16, rows padded with zeros to a
/// multiple of 32.
pub fn pack_rows(g: &[f32], m: usize, n: usize) -> Vec<u16> {
    written(m.div_ceil(2 * T) * 2 * T * n, n, |j, dst| {
        // Every element of row j is written: its value, or zero past the last row.
        match g.get(j * n..(j + 1) * n) {
            Some(row) => convert(row, dst),
            None => dst.iter_mut().for_each(|o| {
                o.write(0);
            }),
        }
    })
}

/// Columns `c0..c0+32` of `W` (`rows` × `k` bf16 bits, `rows` even) as the right operand of
/// `G · W`: each row pair interleaved, `(W[2q][c], W[2q+1][c])`, for the first 16 columns then
/// the second, so that every tile is 1 KiB in one piece. (Pair rows of the whole width put a
/// tile's 16 rows `4k` bytes apart, all in one L1 set for k = 1024, evicting each other.)
pub(super) fn interleave_columns(w: &[u16], k: usize, c0: usize, out: &mut [u16]) {
    let pairs = w.len() / (2 * k);
    for (q, (r0, r1)) in w.chunks_exact(k).step_by(2).zip(w.chunks_exact(k).skip(1).step_by(2)).enumerate() {
        for half in 0..2 {
            let dst = &mut out[(half * pairs + q) * 2 * T..][..2 * T];
            let (a, b) = (&r0[c0 + half * T..][..T], &r1[c0 + half * T..][..T]);
            for c in 0..T {
                dst[2 * c] = a[c];
                dst[2 * c + 1] = b[c];
            }
        }
    }
}

/// A weight held for bf16 products on the tile unit, laid out once (at load) for both products:
/// rearranging it on every call cost a quarter to a half of each product. It replaces the
/// row-major values, which [`Prepared::rows_into`] gives back.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Every 32-row block of W laid out by `pair_rows`: the forward's right operand.
    pub(super) forward: Vec<u16>,
    /// Every 32-column block of W laid out by `interleave_columns`: the input gradient's.
    pub(super) input_grad: Vec<u16>,
    pub(super) k: usize,
}

impl Prepared {
    /// Lays out `w` (`n` × `k` bf16 bits, both multiples of 32) for both products.
    pub fn new(w: &[u16], n: usize, k: usize) -> Self {
        assert!(fits(n, k) && w.len() >= n * k);
        let w = &w[..n * k];
        let mut forward = vec![0u16; n * k];
        let mut input_grad = vec![0u16; n * k];
        let rows = |(b, dst): (usize, &mut [u16])| pair_rows(&w[2 * T * b * k..2 * T * (b + 1) * k], k, dst);
        let columns = |(cb, dst): (usize, &mut [u16])| interleave_columns(w, k, 2 * T * cb, dst);
        if threads() > 1 {
            use rayon::prelude::*;
            forward.par_chunks_mut(2 * T * k).enumerate().for_each(rows);
            input_grad.par_chunks_mut(2 * T * n).enumerate().for_each(columns);
        } else {
            forward.chunks_mut(2 * T * k).enumerate().for_each(rows);
            input_grad.chunks_mut(2 * T * n).enumerate().for_each(columns);
        }
        Self { forward, input_grad, k }
    }

    /// Bytes held (both layouts).
    pub fn bytes(&self) -> usize {
        2 * (self.forward.len() + self.input_grad.len())
    }

    /// The bf16 bits of rows `r0..r0 + out.len() / k` in row-major order.
    pub fn rows_into(&self, r0: usize, out: &mut [u16]) {
        let k = self.k;
        for (i, row) in out.chunks_exact_mut(k).enumerate() {
            let r = r0 + i;
            let half = &self.forward[(r / (2 * T)) * 2 * T * k + ((r / T) % 2) * T * k..][..T * k];
            for (c, v) in row.iter_mut().enumerate() {
                *v = half[(c / 2) * 2 * T + 2 * (r % T) + c % 2];
            }
        }
    }
}

/// 32 rows of W (`k` bf16 bits each) as the forward's right operand: for rows 0–15 then 16–31,
/// `k/2` rows of 16 pairs `(W[r][2p], W[r][2p+1])`.
fn pair_rows(w: &[u16], k: usize, out: &mut [u16]) {
    for (i, row) in w.chunks_exact(k).take(2 * T).enumerate() {
        let half = &mut out[(i / T) * T * k..][..T * k];
        for (p, pair) in row.chunks_exact(2).enumerate() {
            half[p * 2 * T + 2 * (i % T)] = pair[0];
            half[p * 2 * T + 2 * (i % T) + 1] = pair[1];
        }
    }
}
