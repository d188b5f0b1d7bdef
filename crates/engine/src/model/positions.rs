//! The one positional module. [`Positions`] gives each layer what it needs to know where tokens
//! are: rotary tables (full, partial, interleaved or half-split, any scaling, per layer type),
//! ALiBi slopes (BLOOM or MPT rule, any number of heads), a learned absolute table with an
//! offset, or T5's relative position buckets ([`RelativeBias`]).

use super::config::{RopeParams, RopeScaling, rope_inv_freq};
use crate::arch::AlibiSlopes;
use crate::error::Result;
use crate::layers::{LayerFactory, Param};
use crate::ops::{RopeLayout, RopeTables};
use candle_core::{Tensor, Var};
use std::sync::Arc;

/// The rotary tables of one parameter set: LongRoPE has a second set for sequences longer than
/// its original context (transformers switches per forward pass on the longest position).
pub struct RopeSet {
    short: RopeTables,
    long: Option<(usize, RopeTables)>,
}

pub enum Positions {
    None,
    /// Sets shared between layers with equal parameters; `per_layer[i]` indexes `sets`.
    Rope {
        sets: Vec<Arc<RopeSet>>,
        per_layer: Vec<usize>,
    },
    Alibi(Vec<f32>),
    Learned {
        table: Param,
        offset: usize,
        path: String,
    },
}

impl Positions {
    /// RoPE tables for each layer's parameters, built once per distinct parameter set.
    pub fn rope(
        params: &[RopeParams],
        head_dim: usize,
        max_positions: usize,
        layout: RopeLayout,
        f: &LayerFactory,
    ) -> Result<Self> {
        let mut distinct: Vec<&RopeParams> = Vec::new();
        let mut sets = Vec::new();
        let mut per_layer = Vec::with_capacity(params.len());
        for p in params {
            let idx = match distinct.iter().position(|d| *d == p) {
                Some(i) => i,
                None => {
                    let rot = ((head_dim as f64 * p.partial_factor) as usize) & !1;
                    let tables = |seq: usize| -> Result<RopeTables> {
                        let (inv, scaling) = rope_inv_freq(p, rot, seq);
                        Ok(RopeTables::new(&inv, max_positions, scaling, layout, &f.device)?)
                    };
                    let set = match &p.scaling {
                        RopeScaling::LongRope { original_max, .. } if max_positions > *original_max => {
                            RopeSet {
                                short: tables(*original_max)?,
                                long: Some((*original_max, tables(max_positions)?)),
                            }
                        }
                        _ => RopeSet { short: tables(max_positions)?, long: None },
                    };
                    sets.push(Arc::new(set));
                    distinct.push(p);
                    distinct.len() - 1
                }
            };
            per_layer.push(idx);
        }
        Ok(Self::Rope { sets, per_layer })
    }

    /// A learned table `{path}.weight` of `rows` positions (`offset` rows are never addressed
    /// by real positions but exist in the file, as in OPT and BART).
    pub fn learned(f: &LayerFactory, path: &str, rows: usize, hidden: usize, offset: usize) -> Result<Self> {
        let table = f.param(&format!("{path}.weight"), &[rows, hidden], f.dtype)?;
        Ok(Self::Learned { table, offset, path: path.to_string() })
    }

    /// The rotary tables of `layer` for a forward pass whose last position is `end - 1`.
    pub fn rope_for(&self, layer: usize, end: usize) -> Option<&RopeTables> {
        let Self::Rope { sets, per_layer } = self else { return None };
        let set = &sets[*per_layer.get(layer)?];
        match &set.long {
            Some((original, long)) if end > *original => Some(long),
            _ => Some(&set.short),
        }
    }

    pub fn alibi(&self) -> Option<&[f32]> {
        match self {
            Self::Alibi(s) => Some(s),
            _ => None,
        }
    }

    /// Adds learned position embeddings for positions `start..start + seq` to `x`
    /// (`[batch, seq, hidden]`); other kinds return `x` unchanged.
    pub fn add_absolute(&self, x: &Tensor, start: usize) -> candle_core::Result<Tensor> {
        let Self::Learned { table, offset, .. } = self else { return Ok(x.clone()) };
        let seq = x.dim(1)?;
        let rows = table.tensor().dim(0)?;
        if start + seq + offset > rows {
            candle_core::bail!("position {} is past the {} learned positions", start + seq, rows - offset);
        }
        let pos = table.tensor().narrow(0, start + offset, seq)?.to_dtype(x.dtype())?;
        x.broadcast_add(&pos.unsqueeze(0)?)
    }

    pub fn trainable(&self, out: &mut Vec<(String, Var)>) {
        if let Self::Learned { table: Param::Trainable(v), path, .. } = self {
            out.push((format!("{path}.weight"), v.clone()));
        }
    }

    pub fn weights(&self, out: &mut Vec<(String, Tensor)>) {
        if let Self::Learned { table, path, .. } = self {
            out.push((format!("{path}.weight"), table.tensor().detach()));
        }
    }
}

/// ALiBi slopes for `heads` heads.
pub fn alibi_slopes(kind: AlibiSlopes, heads: usize, bias_max: f64) -> Vec<f32> {
    match kind {
        AlibiSlopes::Bloom => {
            let closest = 1usize << (usize::BITS - 1 - heads.leading_zeros());
            let base = |n: usize| 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
            let b = base(closest) as f32;
            let mut slopes: Vec<f32> = (1..=closest).map(|p| b.powi(p as i32)).collect();
            if closest != heads {
                let extra = base(2 * closest) as f32;
                let remaining = (heads - closest).min(closest);
                slopes.extend((0..remaining).map(|i| extra.powi((2 * i + 1) as i32)));
            }
            slopes
        }
        AlibiSlopes::Mpt => {
            let n2 = heads.next_power_of_two();
            let slopes: Vec<f32> =
                (1..=n2).map(|i| 1.0 / 2f32.powf(i as f32 * (bias_max as f32 / n2 as f32))).collect();
            if n2 == heads {
                return slopes;
            }
            let odd = slopes.iter().skip(1).step_by(2);
            let even = slopes.iter().step_by(2);
            odd.chain(even).take(heads).copied().collect()
        }
    }
}

/// T5's bucket of a relative position `key - query`: exact for small distances, logarithmic up
/// to `max_distance`, split by direction when bidirectional.
pub fn t5_bucket(relative: i64, bidirectional: bool, buckets: usize, max_distance: usize) -> usize {
    let mut nb = buckets as i64;
    let mut bucket = 0i64;
    let mut rel = relative;
    if bidirectional {
        nb /= 2;
        if rel > 0 {
            bucket += nb;
        }
        rel = rel.abs();
    } else {
        rel = -rel.min(0);
    }
    let max_exact = nb / 2;
    if rel < max_exact {
        return (bucket + rel) as usize;
    }
    // Same f32 arithmetic as PyTorch: log(rel / max_exact) / log(max_distance / max_exact).
    let ratio = ((rel as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln())
        * (nb - max_exact) as f32;
    let large = (max_exact + ratio as i64).min(nb - 1);
    (bucket + large) as usize
}

/// T5 relative attention bias: a learned `[buckets, heads]` table looked up per (query, key).
pub struct RelativeBias {
    table: Param,
    path: String,
    bidirectional: bool,
    buckets: usize,
    max_distance: usize,
    heads: usize,
}

impl RelativeBias {
    pub fn load(
        f: &LayerFactory,
        path: &str,
        heads: usize,
        buckets: usize,
        max_distance: usize,
        bidirectional: bool,
    ) -> Result<Self> {
        let table = f.param(&format!("{path}.weight"), &[buckets, heads], candle_core::DType::F32)?;
        Ok(Self { table, path: path.to_string(), bidirectional, buckets, max_distance, heads })
    }

    /// The bias `[1, heads, t, s]` for `t` queries at positions `s - t..s` over `s` keys.
    pub fn bias(&self, t: usize, s: usize) -> candle_core::Result<Tensor> {
        let mut idx = Vec::with_capacity(t * s);
        for i in 0..t {
            let q = (s - t + i) as i64;
            for j in 0..s {
                idx.push(t5_bucket(j as i64 - q, self.bidirectional, self.buckets, self.max_distance) as u32);
            }
        }
        let table = self.table.tensor();
        let idx = Tensor::from_vec(idx, t * s, table.device())?;
        let vals = table.index_select(&idx, 0)?; // [t*s, heads]
        vals.t()?.reshape((1, self.heads, t, s))
    }

    pub fn trainable(&self, out: &mut Vec<(String, Var)>) {
        if let Param::Trainable(v) = &self.table {
            out.push((format!("{}.weight", self.path), v.clone()));
        }
    }

    pub fn weights(&self, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{}.weight", self.path), self.table.tensor().detach()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bloom_slopes_for_powers_of_two_and_others() {
        let s = alibi_slopes(AlibiSlopes::Bloom, 4, 8.0);
        assert_eq!(s, vec![0.25, 0.0625, 0.015625, 0.00390625]);
        // 6 heads: 4 from 2^-2 powers, then odd powers of 2^-1 (0.5, 0.125).
        let s = alibi_slopes(AlibiSlopes::Bloom, 6, 8.0);
        assert_eq!(s, vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
    }

    #[test]
    fn mpt_slopes_interleave_for_non_powers_of_two() {
        let s = alibi_slopes(AlibiSlopes::Mpt, 4, 8.0);
        assert_eq!(s, vec![0.25, 0.0625, 0.015625, 0.00390625]);
        let s8 = alibi_slopes(AlibiSlopes::Mpt, 8, 8.0);
        let s6 = alibi_slopes(AlibiSlopes::Mpt, 6, 8.0);
        assert_eq!(s6, vec![s8[1], s8[3], s8[5], s8[7], s8[0], s8[2]]);
    }

    #[test]
    fn t5_buckets_match_known_values() {
        // Bidirectional, 32 buckets, max distance 128 (HF `_relative_position_bucket`).
        assert_eq!(t5_bucket(0, true, 32, 128), 0);
        assert_eq!(t5_bucket(3, true, 32, 128), 19);
        assert_eq!(t5_bucket(-3, true, 32, 128), 3);
        assert_eq!(t5_bucket(-8, true, 32, 128), 8);
        assert_eq!(t5_bucket(-200, true, 32, 128), 15);
        // Causal: future keys share bucket 0.
        assert_eq!(t5_bucket(5, false, 32, 128), 0);
        assert_eq!(t5_bucket(-20, false, 32, 128), 17);
    }
}
