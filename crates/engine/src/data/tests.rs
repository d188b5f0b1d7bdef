//! End-to-end tests of the data pipeline on the committed fixtures (tiny ChatML tokenizer and
//! datasets) and on hostile files written to a temporary folder.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::*;
use crate::config::DataSection;
use crate::tokenizer::TextTokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn llama() -> TextTokenizer {
    TextTokenizer::from_dir(&fixtures().join("models/llama")).unwrap()
}

fn cfg() -> DataSection {
    DataSection { eval_fraction: 0.0, max_len: 4096, ..DataSection::default() }
}

fn data(name: &str) -> PathBuf {
    fixtures().join("data").join(name)
}

fn jsonl(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn learned_text(tok: &TextTokenizer, ex: &Example) -> String {
    let ids: Vec<u32> = ex.labels.iter().filter(|&&l| l >= 0).map(|&l| l as u32).collect();
    tok.decode(&ids, false).unwrap()
}

#[test]
fn fixtures_load_and_formats_are_detected() {
    let tok = llama();
    for (file, format, rows) in [
        ("alpaca.jsonl", DataFormat::Alpaca, 20),
        ("alpaca.json", DataFormat::Alpaca, 20),
        ("chat.jsonl", DataFormat::Chat, 20),
        ("text.jsonl", DataFormat::Text, 20),
        ("tokens.jsonl", DataFormat::Tokens, 10),
    ] {
        let ds = load_dataset(&data(file), &cfg(), &tok, 0).unwrap();
        let r = &ds.report;
        assert_eq!(r.format, Some(format), "{file}");
        assert_eq!((r.rows, r.examples, r.skipped, r.truncated), (rows, rows, 0, 0), "{file}");
        assert_eq!(ds.train.len(), rows);
        assert_eq!(r.total_tokens, ds.train.iter().map(Example::len).sum::<usize>());
        assert!(r.learned_tokens > 0 && r.learned_tokens < r.total_tokens, "{file}");
        assert!(r.min_len <= r.max_len && r.mean_len > 0.0);
        for ex in &ds.train {
            assert_eq!(ex.input_ids.len(), ex.labels.len());
            assert!(ex.labels.iter().zip(&ex.input_ids).all(|(&l, &i)| l == -100 || l == i as i64), "{file}");
        }
    }
}

#[test]
fn chat_masks_cover_exactly_the_assistant_turns() {
    let tok = llama();
    let ds = load_dataset(&data("chat.jsonl"), &cfg(), &tok, 0).unwrap();
    let rows = jsonl(&data("chat.jsonl"));
    assert_eq!(ds.train.len(), rows.len());
    for (ex, row) in ds.train.iter().zip(&rows) {
        let msgs: Vec<ChatMessage> = serde_json::from_value(row["messages"].clone()).unwrap();
        let want: String = msgs
            .iter()
            .filter(|m| m.role == "assistant")
            .map(|m| format!("{}<|im_end|>\n", m.content))
            .collect();
        assert_eq!(learned_text(&tok, ex), want);
        assert_eq!(ex.input_ids, tok.encode(&tok.render_chat(&msgs, false).unwrap(), false).unwrap());
    }
    let all =
        load_dataset(&data("chat.jsonl"), &DataSection { train_on_prompt: true, ..cfg() }, &tok, 0).unwrap();
    assert_eq!(all.report.learned_tokens, all.report.total_tokens - all.train.len());
}

#[test]
fn alpaca_uses_the_chat_template_and_both_file_kinds_agree() {
    let tok = llama();
    let a = load_dataset(&data("alpaca.jsonl"), &cfg(), &tok, 0).unwrap();
    let b = load_dataset(&data("alpaca.json"), &cfg(), &tok, 0).unwrap();
    assert_eq!(a.train, b.train);
    for (ex, row) in a.train.iter().zip(jsonl(&data("alpaca.jsonl"))) {
        let (ins, inp, out) = (
            row["instruction"].as_str().unwrap(),
            row["input"].as_str().unwrap(),
            row["output"].as_str().unwrap(),
        );
        assert_eq!(learned_text(&tok, ex), format!("{out}<|im_end|>\n"));
        let user = if inp.is_empty() { ins.to_string() } else { format!("{ins}\n\n{inp}") };
        let text = tok.decode(&ex.input_ids, false).unwrap();
        assert!(text.contains(&format!("<|im_start|>user\n{user}<|im_end|>")), "{text}");
    }
}

#[test]
fn text_and_tokens_are_taken_as_given() {
    let tok = llama();
    let ds = load_dataset(&data("text.jsonl"), &cfg(), &tok, 0).unwrap();
    for (ex, row) in ds.train.iter().zip(jsonl(&data("text.jsonl"))) {
        let mut want = tok.encode(row["text"].as_str().unwrap(), true).unwrap();
        want.push(2);
        assert_eq!(ex.input_ids, want);
        assert!(ex.labels.iter().all(|&l| l >= 0));
    }
    let ds = load_dataset(&data("tokens.jsonl"), &cfg(), &tok, 0).unwrap();
    for (ex, row) in ds.train.iter().zip(jsonl(&data("tokens.jsonl"))) {
        let ids: Vec<u32> = serde_json::from_value(row["input_ids"].clone()).unwrap();
        let labels: Option<Vec<i64>> = serde_json::from_value(row["labels"].clone()).unwrap();
        assert_eq!(ex.labels, labels.unwrap_or_else(|| ids.iter().map(|&i| i as i64).collect()));
        assert_eq!(ex.input_ids, ids);
    }
}

#[test]
fn eval_split_is_sized_and_seeded() {
    let tok = llama();
    let c = DataSection { eval_fraction: 0.1, ..cfg() };
    let a = load_dataset(&data("chat.jsonl"), &c, &tok, 5).unwrap();
    assert_eq!((a.train.len(), a.eval.len()), (18, 2));
    assert_eq!((a.report.train_examples, a.report.eval_examples), (18, 2));
    let b = load_dataset(&data("chat.jsonl"), &c, &tok, 5).unwrap();
    assert_eq!(a.eval, b.eval);
    let tiny = DataSection { eval_fraction: 0.01, ..cfg() };
    assert_eq!(load_dataset(&data("tokens.jsonl"), &tiny, &tok, 5).unwrap().eval.len(), 1);
}

#[test]
fn max_len_truncates_or_skips_and_counts() {
    let tok = llama();
    let full = load_dataset(&data("text.jsonl"), &cfg(), &tok, 0).unwrap();
    let mut lens: Vec<usize> = full.train.iter().map(Example::len).collect();
    lens.sort();
    let m = lens[10];
    let over = lens.iter().filter(|&&l| l > m).count();
    assert!(over > 0);
    let t = load_dataset(&data("text.jsonl"), &DataSection { max_len: m, ..cfg() }, &tok, 0).unwrap();
    assert_eq!((t.report.examples, t.report.truncated, t.report.skipped), (20, over, 0));
    assert!(t.train.iter().all(|e| e.len() <= m));
    let s = load_dataset(
        &data("text.jsonl"),
        &DataSection { max_len: m, overlong: "skip".into(), ..cfg() },
        &tok,
        0,
    )
    .unwrap();
    assert_eq!((s.report.examples, s.report.skipped, s.report.truncated), (20 - over, over, 0));
    assert_eq!(s.report.skipped_reasons.get(report::SKIP_TOO_LONG), Some(&over));

    // A chat's prompt (with the default system prompt) is longer than 20 tokens: nothing to learn.
    let err = load_dataset(&data("chat.jsonl"), &DataSection { max_len: 20, ..cfg() }, &tok, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no usable examples") && err.contains("20 no learned tokens"), "{err}");
}

#[test]
fn collate_pads_loaded_examples() {
    let tok = llama();
    let ds = load_dataset(&data("chat.jsonl"), &cfg(), &tok, 0).unwrap();
    let refs: Vec<&Example> = ds.train.iter().take(3).collect();
    let b = Batch::collate(&refs, tok.pad_id());
    let longest = refs.iter().map(|e| e.len()).max().unwrap();
    assert_eq!((b.batch, b.seq_len), (3, longest));
    for (r, e) in refs.iter().enumerate() {
        let row = &b.input_ids[r * longest..(r + 1) * longest];
        assert_eq!(&row[..e.len()], &e.input_ids[..]);
        assert!(row[e.len()..].iter().all(|&p| p == 0));
        assert!(b.labels[r * longest + e.len()..(r + 1) * longest].iter().all(|&l| l == -100));
    }
    assert_eq!(b.learned_tokens(), refs.iter().map(|e| e.learned_tokens()).sum::<usize>());
    assert_eq!(batches_per_epoch(ds.train.len(), 3), 7);
}

#[test]
fn preview_shows_pieces_and_masks() {
    let tok = llama();
    let rows = preview(&data("chat.jsonl"), &cfg(), &tok, 3).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].line, 1);
    for row in &rows {
        let all: String = row.tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(all, row.text);
        let learned: String = row.tokens.iter().filter(|t| t.learned).map(|t| t.text.as_str()).collect();
        assert!(learned.ends_with("<|im_end|>\n") && !learned.contains("<|im_start|>"), "{learned}");
        assert!(row.skipped.is_none() && !row.truncated);
    }
    let short =
        preview(&data("text.jsonl"), &DataSection { max_len: 5, overlong: "skip".into(), ..cfg() }, &tok, 2)
            .unwrap();
    assert_eq!(short[0].skipped.as_deref(), Some(report::SKIP_TOO_LONG));
}

// ---- hostile inputs ----

struct Tmp(tempfile::TempDir);

impl Tmp {
    fn new() -> Self {
        Tmp(tempfile::tempdir().unwrap())
    }
    fn file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

/// Loads `content` and checks the error names the file, the line and each expected fragment.
fn load_err(content: impl AsRef<[u8]>, name: &str, line: usize, want: &[&str]) -> String {
    let tmp = Tmp::new();
    let path = tmp.file(name, content);
    let err = load_dataset(&path, &cfg(), &llama(), 0).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("{}:{line}: ", path.display())), "{msg}");
    for w in want {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
    msg
}

const GOOD_CHAT: &str =
    r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;

#[test]
fn bad_records_name_file_line_and_field() {
    load_err(format!("{GOOD_CHAT}\n{{\"messages\": [\n"), "a.jsonl", 2, &["malformed JSON"]);
    load_err("{\"instruction\": \"i\", \"output\": 5}\n", "a.jsonl", 1, &["`output` must be a string"]);
    load_err("{\"text\": \"ok\"}\n\n{\"txt\": \"x\"}\n", "a.jsonl", 3, &["missing field `text`"]);
    let bad_role = GOOD_CHAT.replace("\"user\"", "\"robot\"");
    load_err(
        format!("{GOOD_CHAT}\n{bad_role}\n"),
        "a.jsonl",
        2,
        &["messages[0].role", "\"robot\"", "unknown role"],
    );
    load_err("{\"messages\": []}\n", "a.jsonl", 1, &["`messages` is empty"]);
    load_err("[1, 2]\n", "a.jsonl", 1, &["expected a JSON object"]);
    load_err("", "a.jsonl", 1, &["the file is empty"]);
    load_err("\n\n  \n", "a.jsonl", 1, &["the file is empty"]);
    load_err("[]", "a.json", 1, &["the file is empty"]);
    load_err(b"{\"text\": \"ok\"}\n{\"text\": \"caf\xe9\"}\n", "a.jsonl", 2, &["invalid UTF-8"]);
    load_err("{\"input_ids\": [1, 2, 400]}\n", "a.jsonl", 1, &["`input_ids[2]` is 400", "vocabulary of 384"]);
    load_err("{\"input_ids\": [1, 2], \"labels\": [-100]}\n", "a.jsonl", 1, &["`labels` has 1 entries"]);
    load_err(
        "[\n  {\"text\": \"a\"},\n  {\"text\": 7}\n]\n",
        "a.json",
        2,
        &["JSON array element 2 (starting on line 3)", "`text` must be a string"],
    );
}

#[test]
fn huge_lines_do_not_blow_up() {
    let big: String = "lorem ipsum dolor sit amet ".repeat(5 * 1024 * 1024 / 27);
    let row = serde_json::json!({ "text": big }).to_string();
    assert!(row.len() > 5_000_000);
    let tmp = Tmp::new();
    let path = tmp.file("big.jsonl", format!("{{\"text\": \"short\"}}\n{row}\n"));
    let c = DataSection { max_len: 64, ..cfg() };
    let ds = load_dataset(&path, &c, &llama(), 0).unwrap();
    assert_eq!((ds.report.examples, ds.report.truncated), (2, 1));
    assert_eq!(ds.train[1].len(), 64);
    // A 5 MB line that is not valid JSON fails with its line number.
    let broken = format!("{{\"text\": \"short\"}}\n{}\n", &row[..row.len() - 2]);
    load_err(broken, "big.jsonl", 2, &["malformed JSON"]);
}

#[test]
fn a_raising_template_is_a_record_error() {
    let tmp = Tmp::new();
    let model = tmp.0.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(fixtures().join("models/llama/tokenizer.json"), model.join("tokenizer.json")).unwrap();
    let tpl = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}";
    let cfg_json = serde_json::json!({"eos_token": "<|im_end|>", "chat_template": tpl});
    std::fs::write(model.join("tokenizer_config.json"), cfg_json.to_string()).unwrap();
    let tok = TextTokenizer::from_dir(&model).unwrap();
    let sys = r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
    let path = tmp.file("c.jsonl", format!("{GOOD_CHAT}\n{sys}\n"));
    let msg = load_dataset(&path, &cfg(), &tok, 0).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("{}:2: ", path.display())), "{msg}");
    assert!(
        msg.contains("System role not supported") && msg.contains("cannot render the conversation"),
        "{msg}"
    );
    let errs = validate_file(&path, &cfg(), Some(&tok));
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].field.as_deref()), (2, Some("messages")));
}

#[test]
fn validate_collects_errors_and_keeps_going() {
    let tmp = Tmp::new();
    let mut content = String::new();
    for i in 0..150 {
        content.push_str(if i % 2 == 0 {
            "{\"instruction\": \"i\", \"output\": \"o\"}\n"
        } else {
            "{\"instruction\": \"i\"}\n"
        });
    }
    let path = tmp.file("a.jsonl", &content);
    let errs = validate_file(&path, &cfg(), None);
    assert_eq!(errs.len(), 75);
    assert_eq!(
        errs[0],
        RecordError { line: 2, field: Some("output".into()), message: "missing field `output`".into() }
    );

    let lines = "{\"text\": 1}\n".repeat(250);
    let errs = validate_file(&tmp.file("b.jsonl", lines), &cfg(), None);
    assert_eq!(errs.len(), MAX_RECORD_ERRORS);

    let path = tmp.file("c.jsonl", "{\"input_ids\": [1, 999]}\n{\"input_ids\": [3]}\n");
    assert!(validate_file(&path, &cfg(), None).is_empty(), "vocabulary needs a tokenizer");
    let errs = validate_file(&path, &cfg(), Some(&llama()));
    assert_eq!((errs.len(), errs[0].line, errs[0].field.as_deref()), (1, 1, Some("input_ids")));

    assert_eq!(validate_file(&tmp.file("e.jsonl", ""), &cfg(), None)[0].line, 1);
    let missing = validate_file(&tmp.0.path().join("nope.jsonl"), &cfg(), None);
    assert_eq!(missing[0].line, 0);
    let bad_cfg = validate_file(&path, &DataSection { format: "csv".into(), ..cfg() }, None);
    assert_eq!(bad_cfg[0].field.as_deref(), Some("data.format"));
    assert!(validate_file(&data("chat.jsonl"), &cfg(), Some(&llama())).is_empty());
}

#[test]
fn forced_format_reports_mismatched_rows() {
    let c = DataSection { format: "chat".into(), ..cfg() };
    let tmp = Tmp::new();
    let path = tmp.file("a.jsonl", "{\"text\": \"hello\"}\n");
    let msg = load_dataset(&path, &c, &llama(), 0).unwrap_err().to_string();
    assert!(
        msg.contains(":1: missing field `messages`") && msg.contains("looks like the text format"),
        "{msg}"
    );
}
