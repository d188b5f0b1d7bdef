//! The console progress bar: one consumer of the engine's event stream.

use finetune_engine::train::TrainEvent;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    enabled: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Self { bar: None, enabled }
    }

    pub fn on_event(&mut self, e: &TrainEvent) {
        if !self.enabled {
            return;
        }
        match e {
            TrainEvent::Started { total_steps, start_step, family, method, trainable_params, total_params, device, .. } => {
                eprintln!(
                    "training {family} with {method}: {trainable_params} trainable of {total_params} parameters on {device}"
                );
                let bar = ProgressBar::new(*total_steps);
                bar.set_style(
                    ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_position(*start_step);
                self.bar = Some(bar);
            }
            TrainEvent::Step { step, loss, tokens_per_s, lr, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*step);
                    bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {tokens_per_s:.0} tok/s"));
                }
            }
            TrainEvent::Eval { step, eval_loss, perplexity, .. } => {
                self.println(format!("step {step}: eval loss {eval_loss:.4} (perplexity {perplexity:.2})"));
            }
            TrainEvent::Checkpoint { path, .. } => self.println(format!("checkpoint: {path}")),
            TrainEvent::Log { message, .. } => self.println(message.clone()),
            TrainEvent::Alert { message, suggestion, .. } => self.println(format!("warning: {message} — {suggestion}")),
            TrainEvent::Finished { .. } | TrainEvent::Failed { .. } => self.finish(),
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}
