//! The training loop: loads the model and data, then for each optimizer step accumulates
//! gradients over micro-batches, clips, updates, reports, evaluates and checkpoints. The data
//! order and every random draw are functions of (seed, step), so a run resumed from a checkpoint
//! continues exactly as it would have.

use super::checkpoint::{self, TrainerState};
use super::eta::{Eta, EtaPlan};
use super::events::{EventSink, Interrupter, MemoryStats, StopRequest, TrainEvent};
use super::faults::{Fault, Faults};
use super::optim::{self, AdamW, AdamWConfig, clip_coefficient};
use super::plan::adapter_plan;
use super::recovery::{LossGuard, Verdict, lr_factor, rollback_suggestion};
use super::schedule::{ScheduleKind, lr_at};
use super::step::{GradAccumulator, StepBatch, accumulate_any};
use crate::arch::{ArchSpec, Family};
use crate::config::{MethodKind, TrainConfig};
use crate::data::{self, Dataset, Example};
use crate::device;
use crate::error::{EngineError, Result};
use crate::eval::evaluate_any;
use crate::export;
use crate::fsutil;
use crate::layers::ForwardCtx;
use crate::model::{AnyModel, CausalLm, LanguageModel, ModelDims, ModelSource, Seq2SeqDims};
use crate::peft;
use crate::quant::QuantSpec;
use candle_core::{DType, Tensor, Var};
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainStatus {
    Completed,
    Paused,
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub status: TrainStatus,
    pub step: u64,
    pub final_loss: f64,
    pub best_loss: f64,
    pub eval_loss: Option<f64>,
}

/// A log line on how the frozen projections are stored (dense, quantized on load, GGUF blocks).
fn describe_base(model: &CausalLm) -> Option<String> {
    let linears = model.linears();
    let weights: usize = linears.iter().map(|(_, l)| l.dims().0 * l.dims().1).sum();
    let bytes: usize = linears.iter().map(|(_, l)| l.base_bytes()).sum();
    (weights > 0 && bytes > 0).then(|| {
        format!(
            "frozen projections: {:.1} MiB for {weights} weights ({:.2} bytes per weight)",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / weights as f64
        )
    })
}

fn log(sink: &mut dyn EventSink, message: impl Into<String>) {
    sink.emit(&TrainEvent::Log { level: "info".into(), message: message.into() });
}

/// The family row and sizes of the model to train.
enum Resolved {
    Causal(ArchSpec, ModelDims),
    Seq2Seq(crate::arch::Seq2SeqSpec, Seq2SeqDims),
}

/// Where one micro-batch of the run comes from.
struct DataCursor<'a> {
    train: &'a [Example],
    batch_size: usize,
    per_epoch: usize,
    shuffle: bool,
    seed: u64,
    order: Option<(u64, Vec<usize>)>,
}

impl<'a> DataCursor<'a> {
    /// The examples of global micro-batch `g`.
    fn micro_batch(&mut self, g: u64) -> Vec<&'a Example> {
        let epoch = g / self.per_epoch as u64;
        let pos = (g % self.per_epoch as u64) as usize;
        if self.order.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.order = Some((epoch, data::epoch_order(self.train.len(), self.shuffle, self.seed, epoch)));
        }
        let order = &self.order.as_ref().expect("order was just set").1;
        let end = ((pos + 1) * self.batch_size).min(order.len());
        order[pos * self.batch_size..end].iter().map(|&i| &self.train[i]).collect()
    }
}

/// How a run starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Continue from the newest valid checkpoint in the output folder.
    pub resume: bool,
    /// Resume even when result-affecting settings changed since the checkpoint.
    pub force: bool,
}

/// The most rollbacks a run makes before it gives up.
const MAX_ROLLBACKS: u32 = 5;

fn alert(sink: &mut dyn EventSink, step: u64, kind: &str, message: String, suggestion: &str) {
    sink.emit(&TrainEvent::Alert { step, kind: kind.into(), message, suggestion: suggestion.into() });
}

/// Runs (or, with `resume`, continues) the training described by `cfg`, writing to `output`.
pub fn train(
    cfg: &TrainConfig,
    output: &Path,
    resume: bool,
    sink: &mut dyn EventSink,
    stop: &Interrupter,
) -> Result<TrainOutcome> {
    train_with(cfg, output, RunOptions { resume, force: false }, sink, stop)
}

/// [`train`] with every option.
pub fn train_with(
    cfg: &TrainConfig,
    output: &Path,
    opts: RunOptions,
    sink: &mut dyn EventSink,
    stop: &Interrupter,
) -> Result<TrainOutcome> {
    let faults = Faults::from_env();
    let started = Instant::now();
    let device = device::resolve_device(&cfg.model.device)?;
    let dtype = device::resolve_dtype(&cfg.model.dtype, &device)?;
    let model_dir = cfg.model.path.as_path();
    if model_dir.as_os_str().is_empty() {
        return Err(EngineError::config("model.path", "no model given"));
    }
    if cfg.data.path.as_os_str().is_empty() {
        return Err(EngineError::config("data.path", "no dataset given"));
    }
    let source = ModelSource::open(model_dir)?;
    // Decoder-only and encoder-decoder models share the loop; they differ in data and step.
    let resolved = match source.family()? {
        Family::Decoder(_) => {
            let (spec, dims) = source.resolve()?;
            Resolved::Causal(spec, dims)
        }
        Family::Seq2Seq(s) => Resolved::Seq2Seq(*s, Seq2SeqDims::from_config(&source.config, s)?),
    };
    let (targets, max_positions) = match &resolved {
        Resolved::Causal(spec, dims) => (spec.targets(), dims.max_positions),
        Resolved::Seq2Seq(spec, dims) => (spec.targets(), dims.max_positions),
    };
    let tok = source.tokenizer()?;
    let (data_cfg, note) = cfg.data_for_context(max_positions);
    if let Some(note) = note {
        log(sink, note);
    }
    let dataset: Dataset = match &resolved {
        Resolved::Causal(..) => data::load_dataset(&cfg.data.path, &data_cfg, &tok, cfg.train.seed)?,
        Resolved::Seq2Seq(..) => data::load_seq2seq_dataset(&cfg.data.path, &data_cfg, &tok, cfg.train.seed)?,
    };
    if dataset.train.is_empty() {
        return Err(EngineError::file(&cfg.data.path, "no usable training example (all were skipped)"));
    }
    log(sink, format!("data: {}", serde_json::to_string(&dataset.report).unwrap_or_default()));

    let (mut plan, notes) = adapter_plan(cfg, &targets)?;
    for n in notes {
        log(sink, n);
    }
    // bf16 on the CPU: the projections (frozen, or trained in full fine-tuning along with the
    // embeddings) are held in bf16 and multiply in bf16 on the AMX tile unit where the CPU has
    // one (else in f32); everything else stays f32 (candle's bf16 CPU kernels widen to f32 on
    // every call, and the fused f32 kernels cover every op of a step).
    let dtype = if dtype == DType::BF16 && device.is_cpu() && crate::ops::cpu_kernels_enabled() {
        plan.bf16_products = true;
        let held = match cfg.method.kind {
            MethodKind::Full => "weights trained in bf16, norms and biases in f32",
            _ => "frozen projections held in bf16",
        };
        log(
            sink,
            format!(
                "bf16 on the CPU: {held} ({}), activations f32",
                if crate::ops::amx::available() {
                    "AMX tile unit"
                } else {
                    "no AMX here: the bf16 weights widened, f32 products"
                }
            ),
        );
        DType::F32
    } else {
        dtype
    };
    let quant = match cfg.method.kind {
        MethodKind::Qlora => Some(QuantSpec::from_config(&cfg.quant)?),
        _ => None,
    };
    let model = source.build_any(plan, quant, dtype, &device)?;
    drop(source); // unmaps the checkpoint files
    if let AnyModel::Causal(m) = &model
        && let Some(base) = describe_base(m)
    {
        log(sink, base);
    }
    let lm = model.as_dyn();
    let params: Vec<(String, Var)> = lm.trainable();
    if params.is_empty() {
        return Err(EngineError::config(
            "lora.targets",
            format!(
                "matched no linear layer; the {} family has: {}",
                targets.family,
                targets.linear_modules.join(", ")
            ),
        ));
    }
    let trainable_params: u64 = params.iter().map(|(_, v)| v.elem_count() as u64).sum();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            beta1: cfg.train.adam_beta1,
            beta2: cfg.train.adam_beta2,
            eps: cfg.train.adam_eps,
            weight_decay: cfg.train.weight_decay,
        },
    )?;

    let bs = cfg.train.batch_size;
    let accum = cfg.train.grad_accum as u64;
    let per_epoch = data::batches_per_epoch(dataset.train.len(), bs);
    let total_steps = if cfg.train.max_steps > 0 {
        cfg.train.max_steps as u64
    } else {
        ((per_epoch * cfg.train.epochs) as u64).div_ceil(accum).max(1)
    };
    let schedule = ScheduleKind::parse(&cfg.train.scheduler)
        .ok_or_else(|| EngineError::config("train.scheduler", "unknown schedule"))?;

    std::fs::create_dir_all(output).map_err(|e| EngineError::io(output, e))?;
    let mut state = TrainerState {
        step: 0,
        total_steps,
        epoch: 0.0,
        micro_batches: 0,
        best_loss: f64::INFINITY,
        last_loss: f64::NAN,
        tokens: 0,
        config_hash: cfg.result_hash(),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        seed: cfg.train.seed,
        lr_scale: 1.0,
        rollbacks: 0,
    };
    if opts.resume {
        let (found, warnings) = checkpoint::newest_valid(output, cfg.method.kind);
        for w in warnings {
            alert(
                sink,
                0,
                "corrupt_checkpoint",
                w,
                "the previous checkpoint is used instead; nothing was deleted",
            );
        }
        match found {
            Some(ckpt) => {
                let saved = TrainConfig::from_toml_file(&ckpt.dir.join("train_config.toml")).ok();
                if let (Some(old), false) = (&saved, opts.force) {
                    let changed = crate::config::result_affecting_changes(old, cfg);
                    if !changed.is_empty() {
                        return Err(EngineError::config(
                            changed.join(", "),
                            format!(
                                "changed since the checkpoint in {}; resuming would not continue the same run (force it to resume anyway)",
                                ckpt.dir.display()
                            ),
                        ));
                    }
                }
                ckpt.restore(&params, &mut opt)?;
                state = TrainerState { total_steps, ..ckpt.state.clone() };
                // A different micro-batch (the studio halves it after running out of memory)
                // continues at the same example: count the consumed micro-batches in the new size.
                if let Some(old_bs) = saved.map(|o| o.train.batch_size as u64).filter(|&b| b != bs as u64) {
                    state.micro_batches = state.micro_batches * old_bs / bs as u64;
                    log(
                        sink,
                        format!("micro-batch changed from {old_bs} to {bs}; the data position is kept"),
                    );
                }
                log(sink, format!("resumed from {}", ckpt.dir.display()));
            }
            None => log(sink, "no checkpoint to resume from; starting from step 0"),
        }
    }
    fsutil::write_atomic(&output.join("train_config.toml"), cfg.to_toml().as_bytes())?;

    sink.emit(&TrainEvent::Started {
        total_steps,
        start_step: state.step,
        epochs: total_steps as f64 * accum as f64 / per_epoch as f64,
        train_examples: dataset.train.len() as u64,
        eval_examples: dataset.eval.len() as u64,
        trainable_params,
        total_params: lm.parameter_count() as u64,
        method: format!("{:?}", cfg.method.kind).to_lowercase(),
        family: targets.family.to_string(),
        device: device::describe(&device),
        dtype: format!("{dtype:?}").to_lowercase(),
        output_dir: output.display().to_string(),
    });

    if matches!(device, candle_core::Device::Cpu)
        && let Err(why) = crate::ops::blas::status()
    {
        log(sink, format!("CPU matrix products through the gemm crate: {why}"));
    }

    let mut cursor = DataCursor {
        train: &dataset.train,
        batch_size: bs,
        per_epoch,
        shuffle: cfg.data.shuffle,
        seed: cfg.train.seed,
        order: None,
    };
    let checkpointing = cfg.grad_checkpointing();
    let pad = tok.pad_id();
    let mut last_checkpoint_step = None;
    let mut eval_loss = None;
    let mut guard = LossGuard::default();
    let mut last_failed = None;
    // The process-lifetime peak: the kernel's high-water mark is reset before every step.
    let mut lifetime_peak = device::process_memory().1;
    let trainable_bytes: u64 =
        params.iter().map(|(_, v)| (v.elem_count() * v.dtype().size_in_bytes()) as u64).sum();
    let mut eta = Eta::default();
    let eta_plan = EtaPlan {
        total_steps,
        eval_every: cfg.train.eval_every_steps as u64,
        eval_batches: dataset.eval.len().div_ceil(bs) as u64,
        micro_batches: accum,
        checkpoint_every: cfg.checkpoint.every_steps as u64,
        // Weights plus two f32 moments per weight.
        checkpoint_bytes: trainable_bytes * 3,
    };

    while state.step < total_steps {
        if let Some(req) = stop.requested() {
            return stop_early(req, output, lm, &params, &opt, &state, cfg, last_checkpoint_step, sink);
        }
        faults.before_step(state.step + 1)?;
        let step_start = Instant::now();
        let rss_before = device::process_memory().0;
        let peak_reset = device::reset_peak_memory();
        let batches: Vec<StepBatch> = (0..accum)
            .map(|k| StepBatch::collate(&model, &cursor.micro_batch(state.micro_batches + k), pad))
            .collect();
        let n_total: usize = batches.iter().map(StepBatch::targets).sum();
        let tokens: u64 = batches.iter().map(StepBatch::tokens).sum();
        let mut acc = GradAccumulator::new(&params);
        let mut loss_sum: Option<Tensor> = None;
        for (k, b) in batches.iter().enumerate() {
            let ctx = ForwardCtx { train: true, seed: cfg.train.seed, pass: state.micro_batches + k as u64 };
            let (sum, _) = accumulate_any(
                &model,
                &params,
                b,
                1.0 / n_total.max(1) as f64,
                &ctx,
                checkpointing,
                &mut acc,
            )?;
            loss_sum = Some(match loss_sum {
                Some(s) => (s + sum.to_dtype(DType::F32)?)?,
                None => sum.to_dtype(DType::F32)?,
            });
        }
        let grads = acc.finish(&params)?;
        // The step's host synchronisations: the metrics we report (the loss, the gradient norm,
        // which also gives the clipping coefficient), read before the update so that a bad step
        // never reaches the weights.
        let mut loss = match &loss_sum {
            Some(s) => s.to_scalar::<f32>()? as f64 / n_total.max(1) as f64,
            None => f64::NAN,
        };
        if faults.at(Fault::Nan, state.step + 1) {
            loss = f64::NAN;
        }
        let grad_norm = optim::grad_norm(&grads)?;
        if let Verdict::Rollback { kind, reason } = guard.observe(loss, grad_norm) {
            drop(grads);
            alert(
                sink,
                state.step + 1,
                kind,
                format!("step {}: {reason}", state.step + 1),
                rollback_suggestion(kind),
            );
            recover(&reason, output, &params, &mut opt, &mut state, &mut guard, &mut last_failed, cfg, sink)?;
            continue;
        }
        let lr = state.lr_scale
            * lr_at(
                schedule,
                cfg.train.lr,
                state.step as usize,
                cfg.train.warmup_steps,
                total_steps as usize,
            );
        opt.step(&grads, lr, clip_coefficient(grad_norm, cfg.train.max_grad_norm))?;
        drop(grads);
        state.step += 1;
        state.micro_batches += accum;
        state.tokens += tokens;
        state.epoch = state.micro_batches as f64 / per_epoch as f64;
        state.last_loss = loss;
        if loss < state.best_loss {
            state.best_loss = loss;
        }
        let step_s = step_start.elapsed().as_secs_f64();
        eta.record_step(step_s);
        let (rss, hwm) = device::process_memory();
        lifetime_peak = lifetime_peak.max(hwm);
        let step_peak = peak_reset.then_some(hwm);
        sink.emit(&TrainEvent::Step {
            step: state.step,
            total_steps,
            epoch: state.epoch,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / step_s.max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
            eta_s: eta.remaining_s(&eta_plan, state.step),
            mem: MemoryStats {
                base_bytes: lm.base_bytes() as u64,
                trainable_bytes,
                optimizer_bytes: opt.state_bytes() as u64,
                process_rss_bytes: rss,
                process_peak_bytes: lifetime_peak,
                step_peak_bytes: step_peak,
                activation_peak_bytes: step_peak.map(|p| p.saturating_sub(rss_before)),
                device_used_bytes: device::device_memory(&device).map(|(used, _)| used),
            },
        });

        let every_eval = cfg.train.eval_every_steps as u64;
        if every_eval > 0
            && state.step.is_multiple_of(every_eval)
            && state.step < total_steps
            && !dataset.eval.is_empty()
        {
            let t = Instant::now();
            let r = evaluate_any(&model, &dataset.eval, bs, pad)?;
            eta.record_eval(t.elapsed().as_secs_f64());
            sink.emit(&TrainEvent::Eval {
                step: state.step,
                eval_loss: r.loss,
                perplexity: r.perplexity,
                tokens: r.tokens,
            });
            eval_loss = Some(r.loss);
        }
        let every_ckpt = cfg.checkpoint.every_steps as u64;
        if every_ckpt > 0 && state.step.is_multiple_of(every_ckpt) {
            let t = Instant::now();
            let written = checkpoint::write_checkpoint(output, lm, &params, &opt, &state, cfg);
            eta.record_checkpoint(t.elapsed().as_secs_f64());
            match written {
                Ok(dir) => {
                    last_checkpoint_step = Some(state.step);
                    sink.emit(&TrainEvent::Checkpoint { step: state.step, path: dir.display().to_string() });
                }
                // Training goes on: the older checkpoints are intact and the next attempt may work.
                Err(e) => alert(
                    sink,
                    state.step,
                    "checkpoint_failed",
                    format!("the checkpoint at step {} could not be written: {e}", state.step),
                    "free disk space or fix the output folder's permissions; training continues",
                ),
            }
        }
    }

    if !dataset.eval.is_empty() {
        let r = evaluate_any(&model, &dataset.eval, bs, pad)?;
        sink.emit(&TrainEvent::Eval {
            step: state.step,
            eval_loss: r.loss,
            perplexity: r.perplexity,
            tokens: r.tokens,
        });
        eval_loss = Some(r.loss);
    }
    match cfg.method.kind {
        MethodKind::Full => export::write_hf_folder(lm, model_dir, output)?,
        _ => peft::write_adapter(output, lm, &cfg.lora, &model_dir.to_string_lossy())?,
    }
    fsutil::write_json(&output.join(checkpoint::STATE_FILE), &state)?;
    sink.emit(&TrainEvent::Finished {
        step: state.step,
        final_loss: state.last_loss,
        best_loss: state.best_loss,
        eval_loss,
        output_dir: output.display().to_string(),
        elapsed_s: started.elapsed().as_secs_f64(),
        tokens: state.tokens,
        status: "completed".into(),
    });
    Ok(TrainOutcome {
        status: TrainStatus::Completed,
        step: state.step,
        final_loss: state.last_loss,
        best_loss: state.best_loss,
        eval_loss,
    })
}

/// Handles a bad step: back to the newest valid checkpoint (or, without one, just skips the
/// update, which never reached the weights) with the learning rate halved.
#[allow(clippy::too_many_arguments)]
fn recover(
    reason: &str,
    output: &Path,
    params: &[(String, Var)],
    opt: &mut AdamW,
    state: &mut TrainerState,
    guard: &mut LossGuard,
    last_failed: &mut Option<u64>,
    cfg: &TrainConfig,
    sink: &mut dyn EventSink,
) -> Result<()> {
    let at = state.step + 1;
    if state.rollbacks >= MAX_ROLLBACKS {
        return Err(EngineError::Other(format!(
            "step {at}: {reason}, and {MAX_ROLLBACKS} recoveries did not help; lower train.lr or check the data"
        )));
    }
    let rollbacks = state.rollbacks + 1;
    let lr_scale = lr_factor(rollbacks);
    let (found, warnings) = checkpoint::newest_valid(output, cfg.method.kind);
    for w in warnings {
        alert(sink, at, "corrupt_checkpoint", w, "the previous checkpoint is used instead");
    }
    let back_to = match found {
        Some(ckpt) => {
            ckpt.restore(params, opt)?;
            *state = TrainerState { total_steps: state.total_steps, ..ckpt.state.clone() };
            format!("rolled back to the checkpoint of step {}", ckpt.state.step)
        }
        // The update never reached the weights: retry the step at the lower rate; if the same
        // step fails again, skip its batch so one bad batch cannot stop the run.
        None if *last_failed != Some(at) => "retried the step (no checkpoint yet)".to_string(),
        None => {
            state.step += 1;
            state.micro_batches += cfg.train.grad_accum as u64;
            "skipped this step's batch, which failed twice (no checkpoint yet)".to_string()
        }
    };
    *last_failed = Some(at);
    state.rollbacks = rollbacks;
    state.lr_scale = lr_scale;
    guard.reset();
    alert(
        sink,
        at,
        "recovered",
        format!("step {at}: {reason}; {back_to} and lowered the learning rate to {lr_scale}x"),
        "if this repeats, lower train.lr or raise train.warmup_steps",
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn stop_early(
    req: StopRequest,
    output: &Path,
    model: &dyn LanguageModel,
    params: &[(String, Var)],
    opt: &AdamW,
    state: &TrainerState,
    cfg: &TrainConfig,
    last_checkpoint_step: Option<u64>,
    sink: &mut dyn EventSink,
) -> Result<TrainOutcome> {
    let status = match req {
        StopRequest::Pause => {
            if state.step > 0 && last_checkpoint_step != Some(state.step) {
                let dir = checkpoint::write_checkpoint(output, model, params, opt, state, cfg)?;
                sink.emit(&TrainEvent::Checkpoint { step: state.step, path: dir.display().to_string() });
            }
            TrainStatus::Paused
        }
        StopRequest::Cancel => TrainStatus::Cancelled,
    };
    let label = if status == TrainStatus::Paused { "paused" } else { "cancelled" };
    sink.emit(&TrainEvent::Finished {
        step: state.step,
        final_loss: state.last_loss,
        best_loss: state.best_loss,
        eval_loss: None,
        output_dir: output.display().to_string(),
        elapsed_s: 0.0,
        tokens: state.tokens,
        status: label.into(),
    });
    Ok(TrainOutcome {
        status,
        step: state.step,
        final_loss: state.last_loss,
        best_loss: state.best_loss,
        eval_loss: None,
    })
}
