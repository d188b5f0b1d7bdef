//! Synthetic streams for each rule of [`super::Detector`], and normal noisy runs that must raise
//! nothing.

use super::*;
use crate::train::events::{GpuTelemetry, MemoryStats, VecSink};

/// A deterministic uniform draw in [0, 1) per (stream, index).
fn noise(stream: u64, i: u64) -> f64 {
    let mut x =
        (stream.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xbf58_476d_1ce4_e5b9)).wrapping_add(1);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn step(step: u64, total: u64, loss: f64, grad_norm: f64, tokens_per_s: f64) -> TrainEvent {
    TrainEvent::Step {
        step,
        total_steps: total,
        epoch: 0.0,
        loss,
        lr: 1e-4,
        grad_norm,
        tokens: 512,
        tokens_per_s,
        elapsed_s: step as f64,
        eta_s: 0.0,
        mem: MemoryStats::default(),
    }
}

/// A healthy run's step `i`: falling loss with ±7.5 % noise, gradient norms with ±15 % noise,
/// throughput with ±10 % noise.
fn normal(i: u64, total: u64) -> TrainEvent {
    normal_seeded(0, i, total)
}

fn normal_seeded(seed: u64, i: u64, total: u64) -> TrainEvent {
    let loss = 3.0 * (-(i as f64) / 80.0).exp() + 0.5 + 0.15 * (noise(1 + 100 * seed, i) - 0.5);
    let grad = 0.8 * (0.3 * (noise(2 + 100 * seed, i) - 0.5)).exp();
    let tps = 1000.0 * (1.0 + 0.2 * (noise(3 + 100 * seed, i) - 0.5));
    step(i, total, loss, grad, tps)
}

fn kinds(alerts: &[Anomaly]) -> Vec<&'static str> {
    alerts.iter().map(|a| a.kind).collect()
}

fn run(d: &mut Detector, events: impl IntoIterator<Item = TrainEvent>) -> Vec<Anomaly> {
    events.into_iter().flat_map(|e| d.observe(&e)).collect()
}

fn gpu_sample(step: u64, used_gib: f64, in_use: bool) -> TrainEvent {
    let gib = (1u64 << 30) as f64;
    TrainEvent::Telemetry(TelemetrySample {
        ts_ms: 0,
        step,
        process_rss_bytes: 2 << 30,
        system_memory_used_bytes: 8 << 30,
        system_memory_total_bytes: 64 << 30,
        gpu_status: "ok".into(),
        gpus: vec![GpuTelemetry {
            index: 0,
            name: "Test GPU".into(),
            in_use,
            memory_used_bytes: Some((used_gib * gib) as u64),
            memory_total_bytes: Some((80.0 * gib) as u64),
            process_memory_bytes: Some((used_gib * gib * 0.9) as u64),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn system_sample(step: u64, used_fraction: f64) -> TrainEvent {
    let total = 32u64 << 30;
    TrainEvent::Telemetry(TelemetrySample {
        step,
        process_rss_bytes: 4 << 30,
        system_memory_used_bytes: (total as f64 * used_fraction) as u64,
        system_memory_total_bytes: total,
        gpu_status: "unavailable: no NVIDIA driver".into(),
        ..Default::default()
    })
}

#[test]
fn a_normal_noisy_run_raises_nothing() {
    // 20 draws of the noise each, so a rule that is only lucky on one draw fails.
    for seed in 0..20 {
        let mut d = Detector::default();
        let total = 300;
        let mut events = Vec::new();
        for i in 1..=total {
            events.push(normal_seeded(seed, i, total));
            if i % 3 == 0 {
                events.push(gpu_sample(i, 60.0 + 10.0 * noise(4 + 100 * seed, i), true));
            }
        }
        let alerts = run(&mut d, events);
        assert!(alerts.is_empty(), "false alarms (seed {seed}): {alerts:#?}");

        // A fine-tuning curve with heavier noise (±15 %), still improving at the end, on the CPU.
        let mut d = Detector::default();
        let n = |k: u64, i: u64| noise(k + 100 * seed, i);
        let alerts = run(
            &mut d,
            (1..=total).flat_map(|i| {
                let loss = (1.0 + (-(i as f64) / 150.0).exp()) * (1.0 + 0.3 * (n(5, i) - 0.5));
                let tps = 300.0 * (1.0 + 0.3 * (n(6, i) - 0.5));
                [step(i, total, loss, 2.0 * (1.0 + n(7, i)), tps), system_sample(i, 0.5 + 0.3 * n(8, i))]
            }),
        );
        assert!(alerts.is_empty(), "false alarms (seed {seed}): {alerts:#?}");
    }
}

#[test]
fn a_sustained_rise_is_a_divergence_once() {
    let mut d = Detector::default();
    let total = 1000;
    let mut alerts = run(&mut d, (1..=100).map(|i| normal(i, total)));
    assert!(alerts.is_empty());
    // From its level at step 100 the loss climbs 1 % per step, with the same noise.
    let base = 3.0 * (-100f64 / 80.0).exp() + 0.5;
    for i in 101..=220u64 {
        let loss = base * 1.01f64.powi((i - 100) as i32) + 0.15 * (noise(1, i) - 0.5);
        alerts.extend(d.observe(&step(i, total, loss, 0.8, 1000.0)));
    }
    assert_eq!(kinds(&alerts), vec![DIVERGENCE], "{alerts:#?}");
    let at = alerts[0].step;
    assert!((115..=150).contains(&at), "divergence noticed at step {at}");
    assert!(alerts[0].message.contains("rising") && alerts[0].suggestion.contains("train.lr"));
}

#[test]
fn a_rollback_is_not_a_divergence() {
    let mut d = Detector::default();
    let total = 1000;
    let mut alerts = run(&mut d, (1..=120).map(|i| normal(i, total)));
    // The trainer rolled back to older weights: the loss is back up, and falls again.
    alerts.extend(d.observe(&TrainEvent::Alert {
        step: 121,
        kind: "recovered".into(),
        message: String::new(),
        suggestion: String::new(),
    }));
    alerts.extend(run(&mut d, (60..=180).map(|i| normal(i, total))));
    assert!(alerts.is_empty(), "{alerts:#?}");
}

#[test]
fn a_flat_loss_is_a_plateau_once() {
    let mut d = Detector::default();
    let total = 250; // patience: 100 steps
    let mut alerts = run(&mut d, (1..=60).map(|i| normal(i, total)));
    assert!(alerts.is_empty());
    let flat = 3.0 * (-60.0f64 / 80.0).exp() + 0.5;
    for i in 61..=250u64 {
        alerts.extend(d.observe(&step(i, total, flat + 0.1 * (noise(9, i) - 0.5), 0.8, 1000.0)));
    }
    assert_eq!(kinds(&alerts), vec![PLATEAU], "{alerts:#?}");
    // The rolling median reaches the flat level about 50 steps later, then 100 steps of patience.
    assert!((190..=230).contains(&alerts[0].step), "plateau noticed at step {}", alerts[0].step);

    // An explicit patience.
    let mut d = Detector::new(RuleConfig { plateau_steps: 20, ..Default::default() });
    let alerts =
        run(&mut d, (1..=60).map(|i| step(i, 10_000, 1.0 + 0.01 * (noise(10, i) - 0.5), 1.0, 100.0)));
    assert_eq!(kinds(&alerts), vec![PLATEAU]);
}

#[test]
fn an_exploding_gradient_norm_is_flagged_with_a_cooldown() {
    let mut d = Detector::default();
    let total = 1000;
    let mut alerts = run(&mut d, (1..=40).map(|i| normal(i, total)));
    assert!(alerts.is_empty());
    // 5x is within what clipping absorbs quietly; 60x is not.
    alerts.extend(d.observe(&step(41, total, 0.9, 4.0, 1000.0)));
    assert!(alerts.is_empty(), "{alerts:#?}");
    alerts.extend(d.observe(&step(42, total, 0.9, 48.0, 1000.0)));
    alerts.extend(d.observe(&step(43, total, 0.9, 55.0, 1000.0)));
    assert_eq!(kinds(&alerts), vec![EXPLODING_GRADIENT], "one alert per cooldown: {alerts:#?}");
    assert!(alerts[0].message.contains("48.000"), "{}", alerts[0].message);
    alerts.extend(run(&mut d, (44..=100).map(|i| normal(i, total))));
    alerts.extend(d.observe(&step(101, total, 0.9, 80.0, 1000.0)));
    assert_eq!(kinds(&alerts), vec![EXPLODING_GRADIENT, EXPLODING_GRADIENT]);
}

#[test]
fn memory_close_to_the_limit_is_flagged_once_until_it_clears() {
    let mut d = Detector::default();
    let alerts = run(
        &mut d,
        [
            gpu_sample(1, 64.0, true),
            gpu_sample(2, 77.0, true), // 96 %
            gpu_sample(3, 78.0, true),
            gpu_sample(4, 70.0, true), // 87.5 %: cleared
            gpu_sample(5, 76.5, true),
        ],
    );
    assert_eq!(kinds(&alerts), vec![MEMORY_PRESSURE, MEMORY_PRESSURE]);
    assert_eq!((alerts[0].step, alerts[1].step), (2, 5));
    assert!(alerts[0].message.contains("GPU 0 (Test GPU) memory is 96% full"), "{}", alerts[0].message);

    // A full GPU that this run does not use is not its problem; system memory is.
    let mut d = Detector::default();
    let alerts = run(&mut d, [gpu_sample(1, 79.0, false), system_sample(2, 0.5), system_sample(3, 0.95)]);
    assert_eq!(kinds(&alerts), vec![MEMORY_PRESSURE]);
    assert!(alerts[0].message.starts_with("system memory is 95% used"), "{}", alerts[0].message);
}

#[test]
fn a_throughput_collapse_is_flagged_but_one_slow_step_is_not() {
    let mut d = Detector::default();
    let total = 1000;
    let mut alerts = run(&mut d, (1..=30).map(|i| normal(i, total)));
    // One slow step (a page fault storm, a checkpoint elsewhere): nothing.
    alerts.extend(d.observe(&step(31, total, 0.9, 0.8, 90.0)));
    alerts.extend(run(&mut d, (32..=40).map(|i| normal(i, total))));
    assert!(alerts.is_empty(), "{alerts:#?}");
    for i in 41..=50 {
        alerts.extend(d.observe(&step(i, total, 0.9, 0.8, 250.0 + noise(11, i) * 20.0)));
    }
    assert_eq!(kinds(&alerts), vec![THROUGHPUT_DROP], "{alerts:#?}");
    assert!((43..=46).contains(&alerts[0].step), "noticed at {}", alerts[0].step);
}

#[test]
fn the_alerting_sink_passes_events_then_their_alerts() {
    let mut sink = AlertingSink::new(VecSink::default());
    sink.emit(&gpu_sample(1, 10.0, true));
    sink.emit(&gpu_sample(2, 79.0, true));
    let names: Vec<&str> = sink
        .inner
        .0
        .iter()
        .map(|e| match e {
            TrainEvent::Telemetry(_) => "telemetry",
            TrainEvent::Alert { .. } => "alert",
            _ => "other",
        })
        .collect();
    assert_eq!(names, vec!["telemetry", "telemetry", "alert"]);
}

#[test]
fn a_second_of_hiccups_in_a_run_of_fast_steps_is_not_a_collapse() {
    // 20 ms steps: a checkpoint or a busy neighbour slows 20 steps (0.4 s) to a fifth.
    let mut d = Detector::default();
    let fast = |i: u64, tps: f64| TrainEvent::Step {
        step: i,
        total_steps: 2000,
        epoch: 0.0,
        loss: 1.0,
        lr: 1e-4,
        grad_norm: 0.8,
        tokens: 128,
        tokens_per_s: tps,
        elapsed_s: i as f64 * 0.02,
        eta_s: 0.0,
        mem: MemoryStats::default(),
    };
    let mut alerts = run(&mut d, (1..=600).map(|i| fast(i, 6400.0 + noise(5, i) * 300.0)));
    alerts.extend(run(&mut d, (601..=620).map(|i| fast(i, 1300.0))));
    alerts.extend(run(&mut d, (621..=900).map(|i| fast(i, 6400.0 + noise(6, i) * 300.0))));
    // (The loss is flat here; only the throughput rule is under test.)
    alerts.retain(|a| a.kind == THROUGHPUT_DROP);
    assert!(alerts.is_empty(), "{alerts:#?}");
    // Sustained for longer than the recent span (10 s = 500 steps), it is one.
    alerts.extend(run(&mut d, (901..=1500).map(|i| fast(i, 1300.0))));
    alerts.retain(|a| a.kind == THROUGHPUT_DROP);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert!((1150..=1410).contains(&alerts[0].step), "noticed at {}", alerts[0].step);
}
