//! Rotary position embedding with a correct backward (candle's fused `rope` has none). Supports
//! the half-split ("rotate_half", Llama) and interleaved (GPT-J, GLM) pairings and partial
//! rotation (only the first `rot_dim` features of each head rotate; the rest pass through).

use super::cpu::{ELEMENTS_PER_TASK, copied, par_chunks, slice};
use super::custom_backward::with_backward;
use super::use_cpu_kernels;
use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Result, Shape, Tensor, bail};
use std::sync::Arc;

/// How rotated features are paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Feature i pairs with i + rot_dim/2 (Hugging Face `rotate_half`).
    HalfSplit,
    /// Feature 2i pairs with 2i + 1.
    Interleaved,
}

/// Precomputed cos/sin tables, `[max_positions, rot_dim / 2]`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    cos_t: Tensor,
    sin_t: Tensor,
    pub rot_dim: usize,
    pub layout: RopeLayout,
}

impl RopeTables {
    /// Tables for positions `0..max_positions` from inverse frequencies (`rot_dim / 2` of them);
    /// `attention_scaling` multiplies cos and sin (YaRN's mscale; 1 otherwise).
    pub fn new(
        inv_freq: &[f64],
        max_positions: usize,
        attention_scaling: f64,
        layout: RopeLayout,
        device: &Device,
    ) -> Result<Self> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in inv_freq {
                // Same f32 rounding as Hugging Face: freqs are computed in f32.
                let angle = (p as f32) * (f as f32);
                cos.push(angle.cos() * attention_scaling as f32);
                sin.push(angle.sin() * attention_scaling as f32);
            }
        }
        let cos_t = Tensor::from_slice(&cos, (max_positions, half), device)?;
        let sin_t = Tensor::from_slice(&sin, (max_positions, half), device)?;
        Ok(Self { cos, sin, cos_t, sin_t, rot_dim: 2 * half, layout })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.len() / (self.rot_dim / 2).max(1)
    }
}

/// Rotates `x` (`[batch, seq, heads, head_dim]`) for positions `offset..offset + seq`.
pub fn rope(x: &Tensor, tables: &RopeTables, offset: usize) -> Result<Tensor> {
    let (_, t, _, d) = x.dims4()?;
    if tables.rot_dim > d {
        bail!("rope: rotary dim {} exceeds head dim {d}", tables.rot_dim);
    }
    if offset + t > tables.max_positions() {
        bail!("rope: position {} is past the {} precomputed positions", offset + t, tables.max_positions());
    }
    if use_cpu_kernels(x) {
        return x.contiguous()?.apply_op1(RopeOp { rot: Rotation::new(tables, offset, t), inverse: false });
    }
    let cos = tables.cos_t.narrow(0, offset, t)?.contiguous()?.to_dtype(x.dtype())?;
    let sin = tables.sin_t.narrow(0, offset, t)?.contiguous()?.to_dtype(x.dtype())?;
    rope_off_cpu(x, cos, sin, tables.rot_dim, tables.layout)
}

/// Off the CPU kernels. A rotation is linear and its transpose is the rotation by the opposite
/// angle, so backward rotates the gradient by `-θ`: nothing is kept but the tables.
fn rope_off_cpu(x: &Tensor, cos: Tensor, sin: Tensor, rot: usize, layout: RopeLayout) -> Result<Tensor> {
    let out = rotate(&x.detach(), &cos, &sin, rot, layout)?;
    let neg_sin = sin.neg()?;
    with_backward(
        &[x],
        out,
        Arc::new(move |_, g| Ok(vec![Some(rotate(&g.detach(), &cos, &neg_sin, rot, layout)?)])),
    )
}

/// `x` `[b, t, h, d]` rotated by the angles of `cos`/`sin` `[t, rot / 2]`: candle's fused kernel
/// for full-width half-split rotations, the composition otherwise.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, rot: usize, layout: RopeLayout) -> Result<Tensor> {
    let (_, t, _, d) = x.dims4()?;
    if layout == RopeLayout::HalfSplit && rot == d {
        return candle_nn::rotary_emb::rope_thd(&x.contiguous()?, cos, sin);
    }
    let half = rot / 2;
    composed(x, &cos.reshape((t, 1, half))?, &sin.reshape((t, 1, half))?, rot, layout)
}

fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor, rot: usize, layout: RopeLayout) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let half = rot / 2;
    let xr = x.narrow(D::Minus1, 0, rot)?;
    let rotated = match layout {
        RopeLayout::HalfSplit => {
            let x1 = xr.narrow(D::Minus1, 0, half)?;
            let x2 = xr.narrow(D::Minus1, half, half)?;
            let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
            let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
            Tensor::cat(&[a, b], D::Minus1)?
        }
        RopeLayout::Interleaved => {
            let dims = xr.dims().to_vec();
            let mut pair_dims = dims[..dims.len() - 1].to_vec();
            pair_dims.extend([half, 2]);
            let pairs = xr.reshape(pair_dims)?;
            let e = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
            let o = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
            let a = (e.broadcast_mul(cos)? - o.broadcast_mul(sin)?)?;
            let b = (o.broadcast_mul(cos)? + e.broadcast_mul(sin)?)?;
            Tensor::stack(&[a, b], D::Minus1)?.reshape(dims)?
        }
    };
    if rot == d {
        Ok(rotated)
    } else {
        Tensor::cat(&[rotated, x.narrow(D::Minus1, rot, d - rot)?], D::Minus1)
    }
}

/// The angles of positions `offset..offset + t` as the CPU kernels use them. Besides the rope
/// op, the fused attention rotates its own copies of q and k with it, so that no rotated copy is
/// kept for backward ([`super::attention_rotary`]).
#[derive(Debug, Clone)]
pub struct Rotation {
    cos: Vec<f32>,
    sin: Vec<f32>,
    rot_dim: usize,
    layout: RopeLayout,
}

impl Rotation {
    /// The rotation of positions `offset..offset + t` (the caller checked they are in the tables).
    pub(crate) fn new(tables: &RopeTables, offset: usize, t: usize) -> Self {
        let half = tables.rot_dim / 2;
        let range = offset * half..(offset + t) * half;
        Self {
            cos: tables.cos[range.clone()].to_vec(),
            sin: tables.sin[range].to_vec(),
            rot_dim: tables.rot_dim,
            layout: tables.layout,
        }
    }

    /// Rotates `rows` (rows of `d` values, the first being row `first` of `[b, t, heads, d]`).
    fn rotate(&self, rows: &mut [f32], first: usize, (t, heads, d): (usize, usize, usize), sign: f32) {
        let half = self.rot_dim / 2;
        for (k, row) in rows.chunks_mut(d).enumerate() {
            let p = ((first + k) / heads) % t;
            let cs = &self.cos[p * half..(p + 1) * half];
            let sn = &self.sin[p * half..(p + 1) * half];
            for i in 0..half {
                let (a, b) = match self.layout {
                    RopeLayout::HalfSplit => (i, i + half),
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                };
                let (xa, xb) = (row[a], row[b]);
                let (c, s) = (cs[i], sign * sn[i]);
                row[a] = xa * c - xb * s;
                row[b] = xb * c + xa * s;
            }
        }
    }

    /// Rotates `x` (`[b, t, heads, d]` with `dims` = (t, heads, d)) in place, by `-θ` when
    /// `inverse` (the backward of a rotation is its inverse), across the pool.
    pub(crate) fn apply(&self, x: &mut [f32], dims: (usize, usize, usize), inverse: bool) {
        let d = dims.2.max(1);
        let sign = if inverse { -1f32 } else { 1f32 };
        let rows_per_task = (ELEMENTS_PER_TASK / d).max(1);
        par_chunks(x, rows_per_task * d, |i0, rows| self.rotate(rows, i0 / d, dims, sign));
    }

    /// A rotated copy of `x` (see [`Rotation::apply`]).
    pub(crate) fn rotated(&self, x: &[f32], dims: (usize, usize, usize), inverse: bool) -> Vec<f32> {
        let mut out = copied(x);
        self.apply(&mut out, dims, inverse);
        out
    }
}

struct RopeOp {
    rot: Rotation,
    /// Rotate by the negative angle: the backward of a rotation is its inverse.
    inverse: bool,
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let out = self.rot.rotated(slice(s, l)?, (dims[1], dims[2], dims[3]), self.inverse);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = RopeOp { rot: self.rot.clone(), inverse: !self.inverse };
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        Ok(Some(grad.apply_op1_no_bwd(&inverse)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_close, assert_same_value_and_gradients, check_gradient, randn};

    fn tables(rot: usize, layout: RopeLayout) -> Result<RopeTables> {
        let inv: Vec<f64> = (0..rot / 2).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / rot as f64)).collect();
        RopeTables::new(&inv, 32, 1.0, layout, &Device::Cpu)
    }

    #[test]
    fn kernel_matches_composition_and_gradients_check() -> Result<()> {
        let x = randn(&[2, 5, 3, 8], 1, &Device::Cpu)?;
        for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
            for rot in [8, 4] {
                let tb = tables(rot, layout)?;
                let cos = tb.cos_t.narrow(0, 2, 5)?.reshape((5, 1, rot / 2))?;
                let sin = tb.sin_t.narrow(0, 2, 5)?.reshape((5, 1, rot / 2))?;
                let expected = composed(
                    &x.to_dtype(DType::F64)?,
                    &cos.to_dtype(DType::F64)?,
                    &sin.to_dtype(DType::F64)?,
                    rot,
                    layout,
                )?;
                assert_close(&rope(&x, &tb, 2)?, &expected, 1e-6)?;
                check_gradient(|x| rope(x, &tb, 2), &x, 7, 1e-2, 1e-3)?;
            }
        }
        Ok(())
    }

    /// The GPU path, run on the CPU (the fused kernel for full half-split rotations, the
    /// composition for the rest): values and gradients equal the differentiated composition's.
    #[test]
    fn off_cpu_rotation_matches_the_differentiated_composition() -> Result<()> {
        let probe = randn(&[2, 5, 3, 8], 9, &Device::Cpu)?;
        for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
            for rot in [8, 4] {
                let tb = tables(rot, layout)?;
                let (cos, sin) =
                    (tb.cos_t.narrow(0, 2, 5)?.contiguous()?, tb.sin_t.narrow(0, 2, 5)?.contiguous()?);
                let x = candle_core::Var::from_tensor(&randn(&[2, 5, 3, 8], 1, &Device::Cpu)?)?;
                let (c3, s3) = (cos.reshape((5, 1, rot / 2))?, sin.reshape((5, 1, rot / 2))?);
                let expected = composed(x.as_tensor(), &c3, &s3, rot, layout)?;
                let ours = rope_off_cpu(x.as_tensor(), cos, sin, rot, layout)?;
                assert_same_value_and_gradients(&ours, &expected, &probe, &[&x], 1e-6, 1e-6)?;
            }
        }
        Ok(())
    }

    #[test]
    fn position_zero_is_identity() -> Result<()> {
        let x = randn(&[1, 1, 1, 8], 1, &Device::Cpu)?;
        let tb = tables(8, RopeLayout::HalfSplit)?;
        assert_close(&rope(&x, &tb, 0)?, &x, 1e-7)
    }
}
