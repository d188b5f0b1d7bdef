//! Reports of a job recorded in a real SQLite store: every format renders, the PNG has the
//! right size and each panel actually holds its curve (pixels of the series' colour inside the
//! panel), the SVG and HTML carry the chart, the Markdown the facts and alerts; the exports hold
//! one row per step.

use finetune_jobs::ingest::write_batch;
use finetune_jobs::{IngestOp, NewJob, Store, Transition, WorkerEvent};
use finetune_monitor::export;
use finetune_monitor::report::{HEIGHT, ReportFormat, RunRecord, WIDTH, render};
use std::sync::Arc;

fn recorded_run(dir: &std::path::Path) -> (Store, String) {
    let store = Store::open(&dir.join("s.db")).unwrap();
    let job = store
        .create_job(
            &NewJob {
                name: "report-demo".into(),
                method: "lora".into(),
                model_path: "/models/llama".into(),
                dataset_path: "/data/alpaca.jsonl".into(),
                device: "cpu".into(),
                config_json: r#"{"model":{"path":"/models/llama"},"data":{"path":"/data/alpaca.jsonl"}}"#
                    .into(),
                max_restarts: 0,
                fault: None,
            },
            &dir.join("jobs"),
        )
        .unwrap();
    store.transition(&job.id, &Transition::Running { attempt: 1, pid: 1, resume: false }).unwrap();
    let mut lines = vec![r#"{"event":"started","total_steps":60,"start_step":0,"epochs":1.0}"#.to_string()];
    for s in 1..=60u64 {
        let loss = 3.0 * (-(s as f64) / 20.0).exp() + 0.4 + 0.05 * ((s * 7 % 5) as f64 - 2.0);
        let lr = 1e-3 * (1.0 - s as f64 / 60.0);
        lines.push(format!(
            r#"{{"event":"step","step":{s},"total_steps":60,"epoch":{e},"loss":{loss},"lr":{lr},"grad_norm":0.8,"tokens":100,"tokens_per_s":500.0,"elapsed_s":{t},"eta_s":1.0,"mem":{{"process_rss_bytes":{m}}}}}"#,
            e = s as f64 / 60.0,
            t = s as f64 * 0.2,
            m = (1u64 << 30) + s * (1 << 22),
        ));
        if s % 20 == 0 {
            lines.push(format!(
                r#"{{"event":"eval","step":{s},"eval_loss":{},"perplexity":3.0}}"#,
                loss + 0.1
            ));
        }
        if s % 10 == 0 {
            lines.push(format!(
                r#"{{"event":"telemetry","ts_ms":{},"step":{s},"process_rss_bytes":1000,"system_memory_used_bytes":5,"system_memory_total_bytes":34359738368,"gpu_status":"unavailable: no NVIDIA driver","gpus":[]}}"#,
                1_000_000 + s
            ));
        }
    }
    lines.push(r#"{"event":"alert","step":33,"kind":"loss_spike","message":"the loss spiked to 9.1","suggestion":"lower train.lr"}"#.into());
    lines.push(r#"{"event":"finished","status":"completed","step":60,"final_loss":0.5,"best_loss":0.45,"eval_loss":0.6}"#.into());
    let ops: Vec<IngestOp> = lines
        .iter()
        .map(|l| IngestOp::Worker {
            job_id: Arc::from(job.id.as_str()),
            event: WorkerEvent::parse_line(l).unwrap(),
        })
        .collect();
    let (live, _rx) = tokio::sync::broadcast::channel(1024);
    write_batch(&store, &ops, &live);
    store.transition(&job.id, &Transition::Completed).unwrap();
    (store, job.id)
}

/// Pixels close to `rgb` in the rows `rows` of the image.
fn count_colour(img: &[u8], rows: std::ops::Range<u32>, rgb: [u8; 3]) -> usize {
    rows.flat_map(|y| (0..WIDTH).map(move |x| ((y * WIDTH + x) * 3) as usize))
        .filter(|&i| (0..3).all(|c| (img[i + c] as i32 - rgb[c] as i32).abs() < 40))
        .count()
}

#[test]
fn every_format_renders_and_each_panel_holds_its_curve() {
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = recorded_run(dir.path());
    let run = RunRecord::load(&store, &id).unwrap();
    assert_eq!(run.points.len(), 60);
    assert_eq!(run.evals().len(), 3);

    let png = render(&run, ReportFormat::Png).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(&png));
    let mut reader = decoder.read_info().unwrap();
    let mut img = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut img).unwrap();
    assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    // Three stacked panels below the title: loss (blue), learning rate (green), memory (purple).
    let third = HEIGHT / 3;
    let blue = count_colour(&img, 40..third, [37, 99, 235]);
    let green = count_colour(&img, third..2 * third, [22, 163, 74]);
    let purple = count_colour(&img, 2 * third..HEIGHT, [147, 51, 234]);
    let orange = count_colour(&img, 40..third, [234, 88, 12]);
    assert!(blue > 500 && green > 500 && purple > 500, "curves: {blue} {green} {purple}");
    assert!(orange > 30, "eval points: {orange}");
    // Curves stay in their own panel.
    assert_eq!(count_colour(&img, 2 * third..HEIGHT, [22, 163, 74]), 0);
    // Text was drawn (the bundled font): dark pixels in the title band.
    assert!(count_colour(&img, 0..40, [0, 0, 0]) > 100);

    let svg = String::from_utf8(render(&run, ReportFormat::Svg).unwrap()).unwrap();
    assert!(svg.contains("<svg") && svg.contains("polyline") && svg.contains("learning rate"));

    let html = String::from_utf8(render(&run, ReportFormat::Html).unwrap()).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("<svg") && !html.contains("<?xml"));
    assert!(html.contains("report-demo") && html.contains("loss_spike"));

    let md = String::from_utf8(render(&run, ReportFormat::Markdown).unwrap()).unwrap();
    for needle in [
        "# Training report: report-demo",
        "| Status | completed |",
        "| Steps | 60 of 60 |",
        "| Best loss | 0.4500 |",
        "## Alerts (1)",
        "step 33 · loss_spike (worker)",
        "![loss, learning rate and memory](report.svg)",
        "GPU telemetry unavailable: no NVIDIA driver",
        "system memory: 32.0 GiB",
        "```toml",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in\n{md}");
    }
}

#[test]
fn a_job_without_metrics_still_has_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let job = store
        .create_job(
            &NewJob {
                name: "empty".into(),
                method: "lora".into(),
                model_path: "m".into(),
                dataset_path: "d".into(),
                device: "cpu".into(),
                config_json: "not json".into(),
                max_restarts: 0,
                fault: None,
            },
            &dir.path().join("jobs"),
        )
        .unwrap();
    let run = RunRecord::load(&store, &job.id).unwrap();
    for f in ReportFormat::ALL {
        assert!(!render(&run, f).unwrap().is_empty(), "{f:?}");
    }
    let md = String::from_utf8(render(&run, ReportFormat::Markdown).unwrap()).unwrap();
    assert!(md.contains("```json\nnot json"), "{md}");
    assert!(RunRecord::load(&store, "no-such-job").is_err());
}

#[test]
fn exports_hold_one_row_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = recorded_run(dir.path());
    let run = RunRecord::load(&store, &id).unwrap();
    let csv = export::csv(&run);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], export::CSV_COLUMNS.join(","));
    assert_eq!(lines.len(), 61);
    let row20: Vec<&str> = lines[20].split(',').collect();
    assert_eq!(row20[0], "20");
    assert!(!row20[3].is_empty(), "eval loss at step 20: {}", lines[20]);
    assert!(lines[19].split(',').nth(3).unwrap().is_empty());
    let json = export::mlflow_json(&run);
    let metrics = json["metrics"].as_array().unwrap();
    // loss, lr, grad_norm, tokens/s and memory every step, eval loss three times.
    assert_eq!(metrics.len(), 60 * 5 + 3);
    assert!(metrics.iter().all(|m| m["key"].is_string() && m["step"].is_u64() && m["timestamp"].is_i64()));
}
