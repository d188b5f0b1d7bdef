//! Text generation with a KV cache: greedy at temperature 0, otherwise temperature sampling with
//! optional nucleus (top-p) filtering from a seeded stream.

use crate::error::Result;
use crate::model::CausalLm;
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Generation stops after any of these tokens (it is included in the output).
    pub stop_ids: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 128, temperature: 0.0, top_p: 1.0, seed: 0, stop_ids: vec![] }
    }
}

/// New tokens continuing `prompt`.
pub fn generate(model: &CausalLm, prompt: &[u32], opts: &GenerateOptions) -> Result<Vec<u32>> {
    let mut cache = model.new_cache();
    let mut rng = Rng::new(opts.seed);
    let mut out = Vec::new();
    let mut feed: Vec<u32> = prompt.to_vec();
    let limit = model.dims.max_positions;
    for _ in 0..opts.max_new_tokens {
        if feed.is_empty() || cache.first().map(|c| c.len()).unwrap_or(0) + feed.len() > limit {
            break;
        }
        let logits = model.step_with_cache(&feed, &mut cache)?.to_vec1::<f32>()?;
        let next = pick(&logits, opts, &mut rng);
        out.push(next);
        if opts.stop_ids.contains(&next) {
            break;
        }
        feed = vec![next];
    }
    Ok(out)
}

fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
            .0 as u32
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i, ((l as f64 - max) / opts.temperature).exp())).collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    if opts.top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut acc = 0.0;
        let keep = probs.iter().take_while(|p| {
            let inside = acc < opts.top_p;
            acc += p.1;
            inside
        });
        probs = keep.cloned().collect();
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.uniform() * total;
    for (i, p) in &probs {
        if u < *p {
            return *i as u32;
        }
        u -= p;
    }
    probs.last().map(|p| p.0 as u32).unwrap_or_else(argmax)
}
