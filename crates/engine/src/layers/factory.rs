//! [`LayerFactory`]: builds every projection from the weight source and the [`AdapterPlan`]
//! (which method, which modules get LoRA, how adapters start), and every other parameter
//! (embeddings, norms) frozen or trainable as the method requires. The base of a projection is
//! dense (LoRA, full fine-tuning), quantized on load (QLoRA: each weight is read, quantized and
//! dropped before the next one is read) or quantized as stored (GGUF blocks).

use super::{DenseLinear, Linear, LoraLinear, QuantLinear};
use crate::config::{MethodKind, QuantSection};
use crate::error::{EngineError, Result};
use crate::model::WeightSource;
use crate::quant::{QuantSpec, QuantWeight};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var};
use std::sync::{Arc, Mutex};

/// Which linear layers receive an adapter, with PEFT's matching rule: a target matches a module
/// whose path equals it or ends with `.target`.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSet {
    AllLinear,
    /// Module names matched by suffix (`q_proj`).
    Modules(Vec<String>),
    /// Exact module paths (read back from an adapter's tensor names).
    Paths(Vec<String>),
}

impl TargetSet {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            TargetSet::AllLinear => true,
            TargetSet::Modules(m) => m.iter().any(|t| path == t || path.ends_with(&format!(".{t}"))),
            TargetSet::Paths(p) => p.iter().any(|t| t == path),
        }
    }
}

/// What the factory wraps and how.
#[derive(Clone)]
pub struct AdapterPlan {
    pub method: MethodKind,
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub use_rslora: bool,
    pub targets: TargetSet,
    pub seed: u64,
    /// Start adapters from these PEFT weights instead of a fresh initialisation.
    pub init_from: Option<Arc<dyn WeightSource>>,
    /// Keep a frozen dense base in its stored bf16/f16 dtype when computing in f32 on the CPU
    /// (`model.frozen_dtype = "stored"`).
    pub keep_stored_dtype: bool,
    /// Hold every frozen projection in bf16 and multiply in bf16 (f32 accumulation, on the AMX
    /// tile unit where the CPU has one) while activations stay f32: `model.dtype = "bf16"` for
    /// a LoRA or QLoRA run on the CPU. In full fine-tuning the projections and embeddings are
    /// trained in bf16 the same way ([`LayerFactory::weight_dtype`]).
    pub bf16_products: bool,
}

impl AdapterPlan {
    /// No adapters, frozen base: for evaluation and generation.
    pub fn frozen() -> Self {
        Self {
            method: MethodKind::Lora,
            r: 0,
            alpha: 0.0,
            dropout: 0.0,
            use_rslora: false,
            targets: TargetSet::Modules(vec![]),
            seed: 0,
            init_from: None,
            keep_stored_dtype: false,
            bf16_products: false,
        }
    }

    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.alpha / (self.r as f64).sqrt() } else { self.alpha / self.r as f64 }
    }

    fn wants_adapter(&self, path: &str, output_head: bool) -> bool {
        // Like PEFT, `all-linear` leaves the output head alone; naming it explicitly adapts it.
        let targeted = match (&self.targets, output_head) {
            (TargetSet::AllLinear, true) => false,
            (t, _) => t.matches(path),
        };
        self.method != MethodKind::Full && self.r > 0 && targeted
    }
}

/// The PEFT tensor name of a module's adapter weight (`lora_A` or `lora_B`).
pub fn peft_name(path: &str, which: &str) -> String {
    format!("base_model.model.{path}.{which}.weight")
}

/// A parameter that is frozen or trained depending on the method.
#[derive(Clone)]
pub enum Param {
    Frozen(Tensor),
    Trainable(Var),
}

impl Param {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Trainable(v) => v.as_tensor(),
        }
    }
    pub fn var(&self) -> Option<&Var> {
        match self {
            Param::Frozen(_) => None,
            Param::Trainable(v) => Some(v),
        }
    }
}

pub struct LayerFactory {
    pub weights: Arc<dyn WeightSource>,
    pub dtype: DType,
    pub device: Device,
    pub plan: AdapterPlan,
    /// How QLoRA quantizes dense weights on load (`None`: the `[quant]` defaults when the plan's
    /// method is QLoRA).
    pub quant: Option<QuantSpec>,
    adapted: Mutex<Vec<String>>,
}

impl LayerFactory {
    pub fn new(weights: Arc<dyn WeightSource>, dtype: DType, device: Device, plan: AdapterPlan) -> Self {
        Self { weights, dtype, device, plan, quant: None, adapted: Mutex::new(Vec::new()) }
    }

    /// Quantize projection weights on load with `spec` (QLoRA).
    pub fn with_quant(mut self, spec: QuantSpec) -> Self {
        self.quant = Some(spec);
        self
    }

    /// The quantization applied to dense projection weights, if any.
    fn quant_spec(&self) -> Result<Option<QuantSpec>> {
        match (self.plan.method, self.quant) {
            (MethodKind::Full, _) => Ok(None),
            (_, Some(spec)) => Ok(Some(spec)),
            (MethodKind::Qlora, None) => Ok(Some(QuantSpec::from_config(&QuantSection::default())?)),
            (MethodKind::Lora, None) => Ok(None),
        }
    }

    /// A frozen base for `path` from a weight the source already stores quantized (GGUF), or
    /// by quantizing the dense weight when QLoRA asks for it.
    fn quantized_base(
        &self,
        path: &str,
        in_dim: usize,
        out_dim: usize,
        bias: Option<Tensor>,
    ) -> Result<Option<Box<dyn Linear>>> {
        if self.full() {
            return Ok(None);
        }
        let name = format!("{path}.weight");
        let compute = self.quant.map(|q| q.compute).unwrap_or(self.dtype);
        let weight = match self.weights.load_quantized(&name, compute)? {
            Some(q) => Some(q),
            None => match self.quant_spec()? {
                Some(spec) => {
                    // Streaming: this one dense tensor is read, quantized and dropped here.
                    let dense = self.tensor(&name, &[out_dim, in_dim], DType::F32)?;
                    Some(QuantWeight::quantize_tensor(&dense, &spec)?)
                }
                None => None,
            },
        };
        let Some(weight) = weight else { return Ok(None) };
        if (weight.rows, weight.cols) != (out_dim, in_dim) {
            return Err(EngineError::tensor(
                self.weights.origin(&name),
                &name,
                format!(
                    "has shape [{}, {}], the config implies [{out_dim}, {in_dim}]",
                    weight.rows, weight.cols
                ),
            ));
        }
        Ok(Some(Box::new(QuantLinear::new(weight, bias, self.dtype, self.device.clone()))))
    }

    /// Module paths that received an adapter, in build order.
    pub fn adapted_modules(&self) -> Vec<String> {
        self.adapted.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn full(&self) -> bool {
        self.plan.method == MethodKind::Full
    }

    /// The dtype projection and embedding weights are held in: the activations' dtype, except
    /// for full fine-tuning with bf16 products on the CPU, which trains them in bf16 while
    /// activations (and norms, biases) stay f32.
    pub fn weight_dtype(&self) -> DType {
        if self.full() && self.plan.bf16_products { DType::BF16 } else { self.dtype }
    }

    /// Loads a tensor with the expected shape in the given dtype.
    pub fn tensor(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.weights.load_shaped(name, shape, dtype, &self.device)
    }

    /// An embedding, norm or other non-linear parameter: trainable only in full fine-tuning.
    /// Norm weights are kept in f32 (as `prepare_model_for_kbit_training` does).
    pub fn param(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Param> {
        let t = self.tensor(name, shape, dtype)?;
        Ok(if self.full() { Param::Trainable(Var::from_tensor(&t)?) } else { Param::Frozen(t) })
    }

    /// The projection `path` with weight `{path}.weight` of shape `[out, in]` (and its bias).
    pub fn linear(&self, path: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Box<dyn Linear>> {
        let b = if bias { Some(self.tensor(&format!("{path}.bias"), &[out_dim], self.dtype)?) } else { None };
        if let Some(base) = self.quantized_base(path, in_dim, out_dim, b.clone())? {
            return self.wrap(path, base);
        }
        if let Some(base) = self.half_base(path, in_dim, out_dim, b.clone())? {
            return self.wrap(path, base);
        }
        let w = self.tensor(&format!("{path}.weight"), &[out_dim, in_dim], self.weight_dtype())?;
        self.linear_from(path, w, b)
    }

    /// A frozen base kept in 16 bits while the run computes in f32 on the CPU: as stored (bf16 or
    /// f16, widened exactly inside each product, see [`crate::quant::HalfRows`]: half the memory
    /// of an f32 copy, the same products) when the plan keeps stored dtypes, or in bf16 with bf16
    /// products on the AMX tile unit when the plan asks for those (any stored dtype, rounded to
    /// bf16; without AMX the bf16 weight is multiplied in f32).
    fn half_base(
        &self,
        path: &str,
        in_dim: usize,
        out_dim: usize,
        bias: Option<Tensor>,
    ) -> Result<Option<Box<dyn Linear>>> {
        if self.full() || !self.device.is_cpu() || self.dtype != DType::F32 {
            return Ok(None);
        }
        let name = format!("{path}.weight");
        let (held, products) = match self.weights.stored_dtype(&name) {
            // Without a tile unit, rounding the inputs too would only cost time: the bf16 weight
            // is widened exactly and multiplied in f32.
            _ if self.plan.bf16_products => {
                (DType::BF16, if crate::ops::amx::available() { DType::BF16 } else { DType::F32 })
            }
            Some(stored @ (DType::BF16 | DType::F16)) if self.plan.keep_stored_dtype => (stored, DType::F32),
            _ => return Ok(None),
        };
        let w = self.tensor(&name, &[out_dim, in_dim], held)?;
        let Some(mut q) = QuantWeight::from_half_tensor(&w)? else { return Ok(None) };
        q.compute = products;
        // `frozen_dtype = "stored"` holds nothing but the stored values (half the memory, a
        // slower input gradient).
        if !self.plan.keep_stored_dtype {
            q.prepare_bf16_products();
        }
        Ok(Some(Box::new(QuantLinear::new(q, bias, self.dtype, self.device.clone()))))
    }

    /// The output head (`lm_head`): adapted only when a target names it.
    pub fn output_head(&self, path: &str, in_dim: usize, out_dim: usize) -> Result<Box<dyn Linear>> {
        let w = self.tensor(&format!("{path}.weight"), &[out_dim, in_dim], self.weight_dtype())?;
        let base: Box<dyn Linear> = if self.full() {
            Box::new(DenseLinear::trainable(w, None)?)
        } else {
            Box::new(DenseLinear::frozen(w, None))
        };
        self.wrap_as(path, base, true)
    }

    /// A projection from an already-loaded (e.g. transposed or split) weight `[out, in]`.
    pub fn linear_from(&self, path: &str, weight: Tensor, bias: Option<Tensor>) -> Result<Box<dyn Linear>> {
        let base: Box<dyn Linear> = if self.full() {
            Box::new(DenseLinear::trainable(weight.to_dtype(self.weight_dtype())?, bias)?)
        } else if let Some(spec) = self.quant_spec()? {
            let q = QuantWeight::quantize_tensor(&weight, &spec)?;
            drop(weight);
            Box::new(QuantLinear::new(q, bias, self.dtype, self.device.clone()))
        } else {
            Box::new(DenseLinear::frozen(weight, bias))
        };
        self.wrap(path, base)
    }

    /// Wraps a base with LoRA when the plan targets `path`.
    pub fn wrap(&self, path: &str, base: Box<dyn Linear>) -> Result<Box<dyn Linear>> {
        self.wrap_as(path, base, false)
    }

    fn wrap_as(&self, path: &str, base: Box<dyn Linear>, output_head: bool) -> Result<Box<dyn Linear>> {
        if !self.plan.wants_adapter(path, output_head) {
            return Ok(base);
        }
        let (in_dim, out_dim) = base.dims();
        let r = self.plan.r;
        let (a, b) = match &self.plan.init_from {
            Some(src) => {
                let a =
                    src.load_shaped(&peft_name(path, "lora_A"), &[r, in_dim], DType::F32, &self.device)?;
                let b =
                    src.load_shaped(&peft_name(path, "lora_B"), &[out_dim, r], DType::F32, &self.device)?;
                (a, b)
            }
            None => {
                // PEFT: A ~ kaiming_uniform(a=√5) = U(-1/√in, 1/√in), B = 0.
                let mut rng = Rng::stream(self.plan.seed, &[Rng::key("lora-init"), Rng::key(path)]);
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a: Vec<f32> =
                    (0..r * in_dim).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
                let a = Tensor::from_vec(a, (r, in_dim), &self.device)?;
                (a, Tensor::zeros((out_dim, r), DType::F32, &self.device)?)
            }
        };
        if let Ok(mut v) = self.adapted.lock() {
            v.push(path.to_string());
        }
        Ok(Box::new(LoraLinear {
            base,
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale: self.plan.scale(),
            dropout: self.plan.dropout,
            key: Rng::key(path),
        }))
    }

    /// Fails when an `init_from` adapter carries weights for modules this model did not wrap
    /// (an adapter for another model, or different targets).
    pub fn check_init_adapter_used(&self) -> Result<()> {
        let Some(src) = &self.plan.init_from else { return Ok(()) };
        let adapted = self.adapted_modules();
        for name in src.names() {
            let used =
                adapted.iter().any(|p| name == peft_name(p, "lora_A") || name == peft_name(p, "lora_B"));
            if !used {
                return Err(EngineError::tensor(
                    src.origin(&name),
                    &name,
                    "no matching module in this model (was the adapter trained for another model or other targets?)",
                ));
            }
        }
        Ok(())
    }
}
