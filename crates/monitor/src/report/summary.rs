//! The report's words: a Markdown summary (config, hardware, duration, tokens, final and best
//! loss, alerts) and the same as one self-contained HTML page with the chart inlined as SVG, so
//! a report can be mailed or attached to an issue and read without the app.

use super::RunRecord;
use finetune_engine::config::TrainConfig;
use finetune_jobs::time::rfc3339;

fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "—".into();
    }
    let s = seconds.round() as u64;
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s:02} s"),
        (h, m, _) => format!("{h} h {m:02} min"),
    }
}

fn loss(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite()).map(|x| format!("{x:.4}")).unwrap_or_else(|| "—".into())
}

/// The config as TOML (what the wizard's editor shows), or the stored JSON when it no longer
/// parses with this engine.
fn config_text(run: &RunRecord) -> (&'static str, String) {
    let json: Option<serde_json::Value> = serde_json::from_str(&run.job.config_json).ok();
    match json.clone().and_then(|v| TrainConfig::from_json(v).ok()) {
        Some(cfg) => ("toml", cfg.to_toml()),
        None => ("json", json.map(|v| format!("{v:#}")).unwrap_or_else(|| run.job.config_json.clone())),
    }
}

/// `(label, value)` rows of the summary table.
pub fn facts(run: &RunRecord) -> Vec<(&'static str, String)> {
    let j = &run.job;
    let wall = match (j.started_at, j.finished_at) {
        (Some(s), Some(f)) => duration((f - s) as f64 / 1000.0),
        _ => "—".into(),
    };
    let train_s = run.points.last().and_then(|p| p.elapsed_s).or(j.elapsed_s);
    let throughput = RunRecord::median(run.points.iter().filter_map(|p| p.tokens_per_s));
    let peak = run.memory_gib().1.iter().map(|(_, g)| *g).fold(f64::NAN, f64::max);
    let restarts = if j.restarts > 0 { format!(" ({} restarts)", j.restarts) } else { String::new() };
    let mut rows = vec![
        ("Status", j.status.as_str().to_string()),
        ("Model", j.model_path.clone()),
        ("Method", j.method.clone()),
        ("Dataset", j.dataset_path.clone()),
        ("Device", j.device.clone()),
        ("Created", rfc3339(j.created_at)),
        (
            "Duration",
            format!("{wall} wall clock, {} training (last attempt)", duration(train_s.unwrap_or(f64::NAN))),
        ),
        ("Steps", format!("{} of {}", j.current_step, j.total_steps)),
        ("Tokens", j.tokens.to_string()),
        ("Throughput", throughput.map(|t| format!("{t:.0} tokens/s (median)")).unwrap_or_else(|| "—".into())),
        ("Final loss", loss(run.points.iter().rev().find_map(|p| p.loss).or(j.current_loss))),
        ("Best loss", loss(j.best_loss)),
        ("Final eval loss", loss(j.eval_loss)),
        ("Peak memory", if peak.is_finite() { format!("{peak:.2} GiB") } else { "—".into() }),
        ("Attempts", format!("{}{restarts}", run.attempts.len())),
        ("Alerts", run.alerts.len().to_string()),
    ];
    if let Some(e) = &j.error_message {
        rows.push(("Error", e.clone()));
    }
    rows
}

fn alert_lines(run: &RunRecord) -> Vec<String> {
    run.alerts
        .iter()
        .map(|a| format!("step {} · {} ({}): {} — {}", a.step, a.kind, a.source, a.message, a.suggestion))
        .collect()
}

/// The Markdown summary; `chart` is the file name of the chart image next to it, if any.
pub fn markdown(run: &RunRecord, chart: Option<&str>) -> String {
    let mut md = format!(
        "# Training report: {}\n\nJob `{}`, report made {}.\n\n",
        run.job.name,
        run.job.id,
        rfc3339(finetune_jobs::time::now_ms())
    );
    md.push_str("| | |\n|---|---|\n");
    for (k, v) in facts(run) {
        md.push_str(&format!("| {k} | {} |\n", v.replace('|', "\\|").replace('\n', " ")));
    }
    if let Some(c) = chart {
        md.push_str(&format!("\n![loss, learning rate and memory]({c})\n"));
    }
    md.push_str(&format!("\n## Alerts ({})\n\n", run.alerts.len()));
    let alerts = alert_lines(run);
    if alerts.is_empty() {
        md.push_str("None.\n");
    }
    for a in alerts {
        md.push_str(&format!("- {a}\n"));
    }
    let hw = run.hardware();
    if !hw.is_empty() {
        md.push_str("\n## Hardware\n\n");
        for h in hw {
            md.push_str(&format!("- {h}\n"));
        }
    }
    let (lang, cfg) = config_text(run);
    md.push_str(&format!("\n## Config\n\n```{lang}\n{}\n```\n", cfg.trim_end()));
    md
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One self-contained HTML page: the summary with the chart inlined.
pub fn html(run: &RunRecord, chart_svg: &str) -> String {
    let rows: String =
        facts(run).into_iter().map(|(k, v)| format!("<tr><th>{k}</th><td>{}</td></tr>", esc(&v))).collect();
    let alerts: String = if run.alerts.is_empty() {
        "<p>None.</p>".into()
    } else {
        format!(
            "<ul>{}</ul>",
            alert_lines(run).iter().map(|a| format!("<li>{}</li>", esc(a))).collect::<String>()
        )
    };
    let hw: String = run.hardware().iter().map(|h| format!("<li>{}</li>", esc(h))).collect();
    let (_, cfg) = config_text(run);
    // The SVG document's XML declaration is not allowed inside HTML.
    let svg = chart_svg.trim_start_matches(|c| c != '<').trim_start();
    let svg = if svg.starts_with("<?xml") { svg.split_once("?>").map_or(svg, |(_, rest)| rest) } else { svg };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Training report: {name}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 1240px; margin: 2rem auto; padding: 0 1rem; color: #1f2937; }}
table {{ border-collapse: collapse; }} th {{ text-align: left; padding: .25rem 1.5rem .25rem 0; color: #6b7280; font-weight: 500; }}
td {{ padding: .25rem 0; }} pre {{ background: #f3f4f6; padding: 1rem; overflow: auto; border-radius: 6px; }}
svg {{ max-width: 100%; height: auto; border: 1px solid #e5e7eb; border-radius: 6px; }}
</style></head>
<body>
<h1>Training report: {name}</h1>
<p>Job <code>{id}</code>, report made {made}.</p>
<table>{rows}</table>
<h2>Curves</h2>
{svg}
<h2>Alerts ({n_alerts})</h2>
{alerts}
<h2>Hardware</h2>
<ul>{hw}</ul>
<h2>Config</h2>
<pre>{cfg}</pre>
</body></html>
"#,
        name = esc(&run.job.name),
        id = esc(&run.job.id),
        made = rfc3339(finetune_jobs::time::now_ms()),
        n_alerts = run.alerts.len(),
        cfg = esc(cfg.trim_end()),
    )
}
