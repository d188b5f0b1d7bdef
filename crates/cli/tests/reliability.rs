//! Never lose a run, with real processes: SIGKILL at random points and resume (bit-exact),
//! injected NaN losses, failed and corrupted checkpoints, changed configs on resume, and
//! out-of-memory errors. Faults are injected with the test-only `FINETUNE_FAULT` variable.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// `train --json` on the qwen2 fixture with dropout, all-linear LoRA, cosine warmup, and a
/// checkpoint every `every` steps.
fn train_cmd(out: &Path, steps: u32, every: u32, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_finetune-studio"));
    c.env("RAYON_NUM_THREADS", "1").env_remove("FINETUNE_FAULT");
    c.args(["train", "--json", "--model"]).arg(fixtures().join("models/qwen2"));
    c.arg("--data").arg(fixtures().join("data/chat.jsonl")).arg("--output").arg(out);
    for s in [
        format!("train.max_steps={steps}"),
        format!("checkpoint.every_steps={every}"),
        "checkpoint.keep_last=0".into(),
        "lora.targets=all-linear".into(),
        "lora.dropout=0.1".into(),
        "train.lr=3e-3".into(),
        "train.warmup_steps=3".into(),
        "data.max_len=64".into(),
        "train.batch_size=2".into(),
    ] {
        c.arg("--set").arg(s);
    }
    c.args(extra);
    c
}

fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn kinds<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

fn adapter(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("adapter_model.safetensors")).expect("final adapter")
}

fn run_ok(mut c: Command) -> Vec<serde_json::Value> {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    events(&out)
}

/// 20 SIGKILLs at random points of one 120-step run: each attempt is killed after a random
/// number (0 to 4) of its own step events plus a random delay into the next step, or during
/// start-up, so the kills land whatever the machine's speed; each attempt resumes from the newest
/// checkpoint. The final adapter must equal the uninterrupted run's bit for bit.
#[test]
fn sigkill_twenty_times_then_resume_gives_the_same_adapter_bit_for_bit() {
    use std::io::BufRead;
    const STEPS: u32 = 120;
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    run_ok(train_cmd(&straight, STEPS, 1, &[]));

    let killed = tmp.path().join("killed");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut kills = 0;
    let mut steps_seen = Vec::new();
    while kills < 20 {
        let resume: &[&str] = if kills == 0 { &[] } else { &["--resume"] };
        let mut child = train_cmd(&killed, STEPS, 1, resume)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait_steps = next() % 5;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < wait_steps {
            match lines.next() {
                Some(Ok(l)) if l.starts_with(r#"{"event":"step""#) => seen += 1,
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        std::thread::sleep(Duration::from_millis(next() % 30));
        assert!(child.try_wait().unwrap().is_none(), "attempt {} finished before its kill", kills + 1);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        steps_seen.push(seen);
    }
    eprintln!("20 SIGKILLs after {steps_seen:?} step events of each attempt");
    assert!(steps_seen.contains(&0) && steps_seen.iter().any(|&s| s >= 3), "{steps_seen:?}");
    run_ok(train_cmd(&killed, STEPS, 1, &["--resume"]));
    assert!(
        adapter(&straight) == adapter(&killed),
        "after 20 kills the adapter differs from the uninterrupted run"
    );
}

#[test]
fn nan_loss_rolls_back_to_the_last_checkpoint_and_halves_the_learning_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = train_cmd(&tmp.path().join("o"), 10, 2, &[]);
    c.env("FINETUNE_FAULT", "nan@6");
    let ev = run_ok(c);
    // The anomaly (what went wrong) and the decision (what was done about it).
    let alerts = kinds(&ev, "alert");
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!((alerts[0]["kind"].as_str(), alerts[0]["step"].as_u64()), (Some("nan_loss"), Some(6)));
    assert!(alerts[0]["suggestion"].as_str().unwrap().contains("train.lr"), "{}", alerts[0]);
    let msg = alerts[1]["message"].as_str().unwrap();
    assert!(
        msg.contains("step 6") && msg.contains("NaN") && msg.contains("step 4") && msg.contains("0.5"),
        "{msg}"
    );
    assert_eq!(alerts[1]["kind"], "recovered");
    let steps = kinds(&ev, "step");
    let lr_of = |n: u64| steps.iter().rev().find(|s| s["step"] == n).unwrap()["lr"].as_f64().unwrap();
    // Steps 5 and 6 ran twice: before the NaN at full rate, after the rollback at half.
    let firsts: Vec<u64> = steps.iter().map(|s| s["step"].as_u64().unwrap()).collect();
    assert_eq!(firsts, vec![1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10]);
    let normal = run_ok(train_cmd(&tmp.path().join("n"), 10, 2, &[]));
    let normal_lr = kinds(&normal, "step").iter().find(|s| s["step"] == 7).unwrap()["lr"].as_f64().unwrap();
    assert!((lr_of(7) - 0.5 * normal_lr).abs() < 1e-12, "{} vs {}", lr_of(7), normal_lr);
    assert_eq!(kinds(&ev, "finished")[0]["status"], "completed");
}

#[test]
fn a_failed_checkpoint_write_is_an_alert_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let mut c = train_cmd(&out, 6, 2, &[]);
    c.env("FINETUNE_FAULT", "io@4");
    let ev = run_ok(c);
    let alerts = kinds(&ev, "alert");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["kind"], "checkpoint_failed");
    assert!(alerts[0]["message"].as_str().unwrap().contains("no space left"), "{}", alerts[0]);
    let ckpts = out.join("checkpoints");
    assert!(ckpts.join("step-2/checkpoint.json").exists());
    assert!(ckpts.join("step-6/checkpoint.json").exists());
    assert!(!ckpts.join("step-4").exists());
    assert!(out.join("adapter_model.safetensors").exists());
}

#[test]
fn a_corrupt_newest_checkpoint_is_skipped_with_a_warning_and_the_result_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    run_ok(train_cmd(&straight, 8, 2, &[]));
    let out = tmp.path().join("o");
    let mut c = train_cmd(&out, 8, 2, &[]);
    c.env("FINETUNE_FAULT", "exit@6");
    let first = c.output().unwrap();
    assert!(!first.status.success());
    // Flip a byte in the newest checkpoint's optimizer state.
    let victim = out.join("checkpoints/step-4/optimizer.safetensors");
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let ev = run_ok(train_cmd(&out, 8, 2, &["--resume"]));
    let alerts = kinds(&ev, "alert");
    assert_eq!(alerts[0]["kind"], "corrupt_checkpoint");
    assert!(
        alerts[0]["message"].as_str().unwrap().contains("step-4")
            && alerts[0]["message"].as_str().unwrap().contains("checksum")
    );
    assert_eq!(kinds(&ev, "started")[0]["start_step"], 2);
    assert!(victim.exists(), "a corrupt checkpoint is kept for inspection, not deleted");
    assert!(adapter(&straight) == adapter(&out));
}

#[test]
fn resuming_with_a_changed_config_is_refused_naming_the_keys_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let mut c = train_cmd(&out, 6, 2, &[]);
    c.env("FINETUNE_FAULT", "exit@4");
    assert!(!c.output().unwrap().status.success());
    let refused =
        train_cmd(&out, 6, 2, &["--resume", "--set", "train.lr=1e-2", "--set", "lora.r=4"]).output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("lora.r") && err.contains("train.lr"), "{err}");
    let ok = train_cmd(&out, 6, 2, &["--resume", "--force", "--set", "train.lr=1e-2"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // Neutral settings may change freely.
    let out2 = tmp.path().join("o2");
    let mut c = train_cmd(&out2, 6, 2, &[]);
    c.env("FINETUNE_FAULT", "exit@4");
    assert!(!c.output().unwrap().status.success());
    run_ok(train_cmd(&out2, 6, 2, &["--resume", "--set", "checkpoint.keep_last=1"]));
}

#[test]
fn out_of_memory_fails_with_a_recognisable_error_event() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = train_cmd(&tmp.path().join("o"), 6, 2, &[]);
    c.env("FINETUNE_FAULT", "oom@3");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let ev = events(&out);
    let failed = kinds(&ev, "failed");
    assert!(failed[0]["error"].as_str().unwrap().starts_with("out of memory"), "{failed:?}");
}
