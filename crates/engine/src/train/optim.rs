//! AdamW with f32 moments whatever the parameter dtype, identical to `torch.optim.AdamW`
//! (decoupled weight decay, bias-corrected moments), with its state saved and restored by name.
//! All arithmetic stays on the device: no host synchronisation per step. An f32 or bf16
//! parameter on the CPU is updated in place by one fused pass ([`super::optim_cpu`]) with the
//! same arithmetic as the tensor ops, bit for bit; elsewhere the update is a sequence of tensor
//! ops.

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
    /// Host memory next to an f32 or bf16 CPU parameter, updated in place by the fused pass.
    Host { m: Vec<f32>, v: Vec<f32> },
}

impl Moments {
    fn zeros(var: &Var) -> Result<Self> {
        Ok(if matches!(var.device(), Device::Cpu) && matches!(var.dtype(), DType::F32 | DType::BF16) {
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

    /// One update with the gradients in `grads` (same order as the parameters), each multiplied
    /// by `grad_scale` first ([`clip_coefficient`]; 1 leaves them as they are).
    pub fn step(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
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
            let rates = Rates { decay, b1, b2, bc2_sqrt, eps: self.cfg.eps, step_size: lr / bc1, grad_scale };
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

/// Global L2 norm of the gradients (PyTorch `clip_grad_norm_`'s total norm), read on the host:
/// the trainer reports it every step. f32 and bf16 gradients on the CPU are summed in one pass
/// each ([`super::optim_cpu::sum_squares`]); others through tensor ops on their device.
pub fn grad_norm(grads: &[Tensor]) -> Result<f64> {
    let mut host = 0f64;
    // Off the CPU the sums stay on the device and are read once.
    let mut device: Option<Tensor> = None;
    for g in grads {
        match super::optim_cpu::sum_squares(g)? {
            Some(s) => host += s,
            None => {
                let s = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
                device = Some(match device {
                    Some(t) => (t + s)?,
                    None => s,
                });
            }
        }
    }
    let off_cpu = match device {
        Some(t) => t.to_scalar::<f32>()? as f64,
        None => 0.0,
    };
    Ok((host + off_cpu).sqrt())
}

/// PyTorch's clipping coefficient `min(1, max_norm / (norm + 1e-6))`, applied by
/// [`AdamW::step`] (`max_norm` 0 disables clipping).
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 { 1.0 } else { (max_norm / (norm + 1e-6)).min(1.0) }
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
        opt.step(std::slice::from_ref(&g), 0.01, 1.0)?;
        opt.step(&[g], 0.01, 1.0)?;
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
        let g = vec![
            Tensor::new(&[3.0f32, 0.0], &Device::Cpu)?,
            Tensor::new(&[4.0f32], &Device::Cpu)?.to_dtype(DType::BF16)?,
        ];
        let norm = grad_norm(&g)?;
        assert!((norm - 5.0).abs() < 1e-9, "{norm}");
        assert!((clip_coefficient(norm, 1.0) - 0.2).abs() < 1e-7);
        assert_eq!(clip_coefficient(norm, 10.0), 1.0);
        assert_eq!(clip_coefficient(norm, 0.0), 1.0);
        // The one-pass sum over the pool agrees with the tensor ops.
        let big = crate::ops::gradcheck::randn(&[300_000], 5, &Device::Cpu)?;
        let want = big.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(Some(3)));
        let got = grad_norm(std::slice::from_ref(&big));
        crate::ops::cpu::THREADS_OVERRIDE.with(|c| c.set(None));
        assert!((got?.powi(2) - want).abs() < 1e-5 * want);
        // AdamW applies the coefficient: scaled gradients give the step of pre-scaled ones.
        let run = |g: f32, scale: f64| -> Result<Vec<f32>> {
            let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu)?)?;
            let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg)?;
            for _ in 0..2 {
                opt.step(&[Tensor::new(&[g, 2.0 * g], &Device::Cpu)?], 0.1, scale)?;
            }
            Ok(var.as_tensor().to_vec1::<f32>()?)
        };
        let (a, b) = (run(0.5, 0.25)?, run(0.125, 1.0)?);
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6), "{a:?} vs {b:?}");
        assert!(a != run(0.5, 1.0)?, "the scale must matter");
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
        a.step(&[Tensor::new(&[0.1f32, 0.2], &Device::Cpu)?], 0.1, 1.0)?;
        let mut b = mk()?;
        b.load_state(&a.state()?, a.step)?;
        assert_eq!(b.step, 1);
        assert_eq!(b.state()?["m.w"].to_vec1::<f32>()?, a.state()?["m.w"].to_vec1::<f32>()?);
        Ok(())
    }
}
