//! AdamW with f32 moments whatever the parameter dtype, identical to `torch.optim.AdamW`
//! (decoupled weight decay, bias-corrected moments), with its state saved and restored by name.
//! All arithmetic stays on the device: no host synchronisation per step. An f32 parameter on the
//! CPU is updated in place by one fused pass ([`super::optim_cpu`]) with the same arithmetic as
//! the tensor ops, bit for bit; elsewhere the update is a sequence of tensor ops.

use super::optim_cpu::{FusedUpdate, Rates};
use crate::error::{EngineError, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

struct Slot {
    name: String,
    var: Var,
    moments: Moments,
    decay: bool,
}

/// The first and second moments of one parameter.
enum Moments {
    /// On the parameter's device, updated by tensor ops.
    Tensors { m: Tensor, v: Tensor },
    /// Host memory next to an f32 CPU parameter, updated in place by the fused pass.
    Host { m: Vec<f32>, v: Vec<f32> },
}

impl Moments {
    fn zeros(var: &Var) -> Result<Self> {
        Ok(if matches!(var.device(), Device::Cpu) && var.dtype() == DType::F32 {
            Moments::Host { m: vec![0.0; var.elem_count()], v: vec![0.0; var.elem_count()] }
        } else {
            let z = Tensor::zeros(var.shape(), DType::F32, var.device())?;
            Moments::Tensors { m: z.clone(), v: z }
        })
    }

    fn tensors(&self, var: &Var) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Moments::Tensors { m, v } => (m.clone(), v.clone()),
            Moments::Host { m, v } => (
                Tensor::from_slice(m, var.shape(), &Device::Cpu)?,
                Tensor::from_slice(v, var.shape(), &Device::Cpu)?,
            ),
        })
    }
}

pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Optimizer steps taken so far.
    pub step: u64,
}

/// Hugging Face Trainer's rule: biases and norm weights get no weight decay.
fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("norm") || name.contains("ln_"))
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| Ok(Slot { decay: decays(&name), moments: Moments::zeros(&var)?, name, var }))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cfg, slots, step: 0 })
    }

    /// Bytes held by the moments.
    pub fn state_bytes(&self) -> usize {
        self.slots.iter().map(|s| 2 * s.var.elem_count() * 4).sum()
    }

    /// One update with the gradients in `grads` (same order as the parameters).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(EngineError::Other(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let decay =
                (slot.decay && self.cfg.weight_decay > 0.0).then_some(1.0 - lr * self.cfg.weight_decay);
            let rates = Rates { decay, b1, b2, bc2_sqrt, eps: self.cfg.eps, step_size: lr / bc1 };
            match &mut slot.moments {
                Moments::Host { m, v } => FusedUpdate::apply(slot.var.as_tensor(), g, m, v, &rates)?,
                Moments::Tensors { m, v } => {
                    let (p, m2, v2) = rates.with_tensors(slot.var.as_tensor(), g, m, v)?;
                    (*m, *v) = (m2, v2);
                    slot.var.set(&p.to_dtype(slot.var.dtype())?)?;
                }
            }
        }
        Ok(())
    }

    /// Moments by parameter name (`m.<name>`, `v.<name>`), for checkpoints.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            let (m, v) = s.moments.tensors(&s.var)?;
            out.insert(format!("m.{}", s.name), m);
            out.insert(format!("v.{}", s.name), v);
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state`]; every parameter must be present.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for s in &mut self.slots {
            let get = |prefix: &str| -> Result<Tensor> {
                let key = format!("{prefix}.{}", s.name);
                let t = state
                    .get(&key)
                    .ok_or_else(|| EngineError::Other(format!("optimizer state lacks `{key}`")))?;
                if t.dims() != s.var.dims() {
                    return Err(EngineError::Other(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        s.var.dims()
                    )));
                }
                Ok(t.to_dtype(DType::F32)?.to_device(s.var.device())?)
            };
            let (m, v) = (get("m")?, get("v")?);
            s.moments = match s.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1::<f32>()?,
                    v: v.flatten_all()?.to_vec1::<f32>()?,
                },
                Moments::Tensors { .. } => Moments::Tensors { m, v },
            };
        }
        self.step = step;
        Ok(())
    }
}

/// Global L2 norm of the gradients as a device scalar (f32), and the same gradients scaled so
/// their norm is at most `max_norm` (PyTorch `clip_grad_norm_`; `max_norm` 0 disables it).
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<(Tensor, Vec<Tensor>)> {
    let mut total: Option<Tensor> = None;
    for g in grads {
        let s = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + s)?,
            None => s,
        });
    }
    let device = grads.first().map(|g| g.device().clone()).unwrap_or(candle_core::Device::Cpu);
    let norm = match total {
        Some(t) => t.sqrt()?,
        None => Tensor::new(0f32, &device)?,
    };
    if max_norm <= 0.0 {
        return Ok((norm, grads.to_vec()));
    }
    // coef = min(1, max_norm / (norm + 1e-6)), computed on the device.
    let coef = (norm.affine(1.0, 1e-6)?.recip()? * max_norm)?.clamp(0f32, 1f32)?;
    let clipped = grads
        .iter()
        .map(|g| g.broadcast_mul(&coef.to_dtype(g.dtype())?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((norm, clipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_torch_adamw_by_hand() -> Result<()> {
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu)?)?;
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg)?;
        let g = Tensor::new(&[0.5f32, 0.25], &Device::Cpu)?;
        opt.step(&[g.clone()], 0.01)?;
        opt.step(&[g], 0.01)?;
        // Reference values from the PyTorch update rule, computed in f64.
        let mut p = [1.0f64, -2.0];
        let gs = [0.5f64, 0.25];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            for i in 0..2 {
                p[i] *= 1.0 - 0.01 * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * gs[i];
                v[i] = 0.999 * v[i] + 0.001 * gs[i] * gs[i];
                let denom = (v[i] / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8;
                p[i] -= 0.01 / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        let got = var.as_tensor().to_vec1::<f32>()?;
        assert!(
            (got[0] as f64 - p[0]).abs() < 1e-6 && (got[1] as f64 - p[1]).abs() < 1e-6,
            "{got:?} vs {p:?}"
        );
        Ok(())
    }

    #[test]
    fn clipping_scales_to_the_max_norm() -> Result<()> {
        let g = vec![Tensor::new(&[3.0f32, 0.0], &Device::Cpu)?, Tensor::new(&[4.0f32], &Device::Cpu)?];
        let (norm, clipped) = clip_grad_norm(&g, 1.0)?;
        assert!((norm.to_scalar::<f32>()? - 5.0).abs() < 1e-6);
        let (n2, _) = clip_grad_norm(&clipped, 0.0)?;
        assert!((n2.to_scalar::<f32>()? - 1.0).abs() < 1e-5);
        let (_, same) = clip_grad_norm(&g, 10.0)?;
        assert_eq!(same[1].to_vec1::<f32>()?, vec![4.0]);
        Ok(())
    }

    #[test]
    fn state_round_trips() -> Result<()> {
        let mk = || -> Result<AdamW> {
            let var = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &Device::Cpu)?)?;
            AdamW::new(
                vec![("w".into(), var)],
                AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0 },
            )
        };
        let mut a = mk()?;
        a.step(&[Tensor::new(&[0.1f32, 0.2], &Device::Cpu)?], 0.1)?;
        let mut b = mk()?;
        b.load_state(&a.state()?, a.step)?;
        assert_eq!(b.step, 1);
        assert_eq!(b.state()?["m.w"].to_vec1::<f32>()?, a.state()?["m.w"].to_vec1::<f32>()?);
        Ok(())
    }
}
