//! Turns the `[method]` and `[lora]` config sections into the [`AdapterPlan`] the layer factory
//! follows, checking target names against the family's linear layers.

use crate::arch::TargetInfo;
use crate::config::{MethodKind, Targets, TrainConfig};
use crate::error::{EngineError, Result};
use crate::layers::{AdapterPlan, TargetSet};
use crate::peft::PeftAdapter;

/// The plan for a config on a family, plus notes worth logging.
pub fn adapter_plan(cfg: &TrainConfig, spec: &TargetInfo) -> Result<(AdapterPlan, Vec<String>)> {
    let mut notes = Vec::new();
    let targets = match &cfg.lora.targets {
        Targets::Keyword(k) if k == "all-linear" => TargetSet::AllLinear,
        Targets::Keyword(_) => {
            TargetSet::Modules(spec.default_targets.iter().map(|s| s.to_string()).collect())
        }
        Targets::Modules(m) => {
            for name in m {
                let last = name.rsplit('.').next().unwrap_or(name);
                if !spec.linear_modules.contains(&last) && last != spec.lm_head {
                    return Err(EngineError::config(
                        "lora.targets",
                        format!(
                            "`{name}` is not a linear layer of the {} family; its linear layers are: {}",
                            spec.family,
                            spec.linear_modules.join(", ")
                        ),
                    ));
                }
            }
            TargetSet::Modules(m.clone())
        }
    };
    let mut plan = AdapterPlan {
        method: cfg.method.kind,
        r: cfg.lora.r,
        alpha: cfg.lora.alpha,
        dropout: cfg.lora.dropout,
        use_rslora: cfg.lora.use_rslora,
        targets,
        seed: cfg.train.seed,
        init_from: None,
        keep_stored_dtype: cfg.model.keeps_stored_dtype(),
        bf16_products: false,
    };
    if let (Some(dir), true) = (&cfg.lora.init_from, cfg.method.kind != MethodKind::Full) {
        let adapter = PeftAdapter::read(dir)?;
        let a = &adapter.config;
        if a.r != plan.r || a.lora_alpha != plan.alpha || a.use_rslora != plan.use_rslora {
            notes.push(format!(
                "lora.init_from: using the adapter's r={}, alpha={}, use_rslora={} (config said r={}, alpha={})",
                a.r, a.lora_alpha, a.use_rslora, plan.r, plan.alpha
            ));
        }
        let dropout = plan.dropout;
        plan = adapter.plan(cfg.method.kind, cfg.train.seed);
        plan.dropout = dropout;
        plan.keep_stored_dtype = cfg.model.keeps_stored_dtype();
    }
    Ok((plan, notes))
}
