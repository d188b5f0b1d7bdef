//! Turns a parsed record into token ids and labels: chats through the model's chat template with
//! the loss on assistant turns only, alpaca through the template or the classic Alpaca prompt,
//! text as is, tokens as given. Masks come from character spans mapped to tokens through the
//! offsets of one tokenization of the whole text, so the ids are exactly what the model would see
//! at inference (tokenizing the prompt and the answer separately can split differently).

use super::RowError;
use super::batch::Example;
use super::chat_template::ChatMessage;
use super::format::Record;
use crate::ops::IGNORE_INDEX;
use crate::tokenizer::TextTokenizer;

type RowResult<T> = std::result::Result<T, RowError>;

/// A rendered record: the example and, on request, the text that was tokenized.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    pub example: Example,
    pub text: Option<String>,
}

const ALPACA_PREAMBLE: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
const ALPACA_PREAMBLE_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.";

/// The classic Alpaca prompt (Taori et al. 2023). A `system` text replaces the preamble.
pub(crate) fn alpaca_prompt(system: Option<&str>, instruction: &str, input: &str) -> String {
    let preamble = system.unwrap_or(if input.is_empty() { ALPACA_PREAMBLE } else { ALPACA_PREAMBLE_INPUT });
    if input.is_empty() {
        format!("{preamble}\n\n### Instruction:\n{instruction}\n\n### Response:\n")
    } else {
        format!("{preamble}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
    }
}

/// The chat an alpaca record becomes when the model has a chat template.
pub(crate) fn alpaca_messages(
    system: Option<&str>,
    instruction: &str,
    input: &str,
    output: &str,
) -> Vec<ChatMessage> {
    let mut msgs = Vec::with_capacity(3);
    if let Some(s) = system {
        msgs.push(ChatMessage::new("system", s));
    }
    let user = if input.is_empty() { instruction.to_string() } else { format!("{instruction}\n\n{input}") };
    msgs.push(ChatMessage::new("user", user));
    msgs.push(ChatMessage::new("assistant", output));
    msgs
}

pub(crate) fn render(
    rec: Record,
    tok: &TextTokenizer,
    train_on_prompt: bool,
    want_text: bool,
) -> RowResult<Rendered> {
    let (example, text) = match rec {
        Record::Chat(msgs) => chat(&msgs, tok, train_on_prompt)?,
        Record::Alpaca { system, instruction, input, output } => {
            if tok.has_chat_template() {
                let msgs = alpaca_messages(system.as_deref(), &instruction, &input, &output);
                chat(&msgs, tok, train_on_prompt)?
            } else {
                classic_alpaca(
                    &alpaca_prompt(system.as_deref(), &instruction, &input),
                    &output,
                    tok,
                    train_on_prompt,
                )?
            }
        }
        Record::Text(text) => {
            let mut ids = tok.encode(&text, true).map_err(encode_err)?;
            if let Some(eos) = tok.eos_id().filter(|&e| ids.last() != Some(&e)) {
                ids.push(eos);
            }
            let labels = ids.iter().map(|&i| i as i64).collect();
            (Example { input_ids: ids, labels }, text)
        }
        Record::Tokens { input_ids, labels } => {
            let vocab = tok.vocab_size();
            if let Some((i, id)) = input_ids.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
                return Err(RowError::field(
                    "input_ids",
                    format!("`input_ids[{i}]` is {id}, outside the tokenizer's vocabulary of {vocab} ids"),
                ));
            }
            let labels = labels.unwrap_or_else(|| input_ids.iter().map(|&i| i as i64).collect());
            if let Some((i, l)) = labels.iter().enumerate().find(|&(_, &l)| l >= vocab as i64) {
                return Err(RowError::field(
                    "labels",
                    format!("`labels[{i}]` is {l}, outside the tokenizer's vocabulary of {vocab} ids"),
                ));
            }
            let text =
                if want_text { tok.decode(&input_ids, false).map_err(encode_err)? } else { String::new() };
            (Example { input_ids, labels }, text)
        }
    };
    Ok(Rendered { example, text: want_text.then_some(text) })
}

fn encode_err(e: crate::error::EngineError) -> RowError {
    RowError::new(e.to_string())
}

fn template_err(e: crate::error::EngineError) -> RowError {
    RowError::field("messages", format!("cannot render the conversation: {e}"))
}

fn classic_alpaca(
    prompt: &str,
    output: &str,
    tok: &TextTokenizer,
    all: bool,
) -> RowResult<(Example, String)> {
    let text = format!("{prompt}{output}");
    let enc = tok.encode_with_offsets(&text, true).map_err(encode_err)?;
    let mut labels = mask(&enc.ids, &enc.offsets, &[(prompt.len(), text.len())], all);
    let mut ids = enc.ids;
    if let Some(eos) = tok.eos_id().filter(|&e| ids.last() != Some(&e)) {
        ids.push(eos);
        labels.push(eos as i64);
    }
    Ok((Example { input_ids: ids, labels }, text))
}

fn chat(msgs: &[ChatMessage], tok: &TextTokenizer, all: bool) -> RowResult<(Example, String)> {
    let text = tok.render_chat(msgs, false).map_err(template_err)?;
    let spans = if all { Vec::new() } else { assistant_spans(msgs, &text, tok)? };
    // Like apply_chat_template(tokenize=True): the template writes BOS itself.
    let enc = tok.encode_with_offsets(&text, false).map_err(encode_err)?;
    let labels = mask(&enc.ids, &enc.offsets, &spans, all);
    Ok((Example { input_ids: enc.ids, labels }, text))
}

/// Byte spans of `text` holding each assistant turn: from the end of the prompt that precedes it
/// (the conversation so far rendered with `add_generation_prompt=true`) to the end of the
/// conversation rendered through it. When a template is not prefix-stable (it renders earlier
/// turns differently once more follow), the turn's content is searched in the text instead and
/// the span extended over an EOS token that directly follows it.
pub(crate) fn assistant_spans(
    msgs: &[ChatMessage],
    text: &str,
    tok: &TextTokenizer,
) -> RowResult<Vec<(usize, usize)>> {
    let mut spans = Vec::new();
    let mut cursor = 0;
    for (i, m) in msgs.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
        let by_prefix = || -> Option<(usize, usize)> {
            let before = tok.render_chat(&msgs[..i], true).ok()?;
            let through = tok.render_chat(&msgs[..=i], false).ok()?;
            let ok = before.len() >= cursor
                && before.len() < through.len()
                && text.starts_with(&before)
                && text.starts_with(&through);
            ok.then_some((before.len(), through.len()))
        };
        let span = match by_prefix() {
            Some(s) => s,
            None => {
                let Some(at) = text[cursor..].find(&m.content).map(|p| p + cursor) else {
                    return Err(RowError::field(
                        "messages",
                        format!(
                            "the chat template does not reproduce assistant message {i} verbatim, so its \
                             tokens cannot be found; set data.train_on_prompt = true to learn every token"
                        ),
                    ));
                };
                let mut end = at + m.content.len();
                if let Some(eos) = tok.eos_token().filter(|e| text[end..].starts_with(e)) {
                    end += eos.len();
                }
                (at, end)
            }
        };
        cursor = span.1;
        spans.push(span);
    }
    Ok(spans)
}

/// Labels for `ids`: the id where the token overlaps a span (or `all`), -100 elsewhere.
pub(crate) fn mask(ids: &[u32], offsets: &[(usize, usize)], spans: &[(usize, usize)], all: bool) -> Vec<i64> {
    let mut span = 0;
    ids.iter()
        .zip(offsets)
        .map(|(&id, &(s, e))| {
            if all {
                return id as i64;
            }
            while span < spans.len() && spans[span].1 <= s {
                span += 1;
            }
            let learned = spans[span..].iter().take_while(|&&(a, _)| a < e).any(|&(a, b)| s < b && e > a);
            if learned { id as i64 } else { IGNORE_INDEX }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn llama() -> TextTokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/llama");
        TextTokenizer::from_dir(&dir).unwrap()
    }

    fn learned_text(tok: &TextTokenizer, ex: &Example) -> String {
        let ids: Vec<u32> = ex.labels.iter().filter(|&&l| l >= 0).map(|&l| l as u32).collect();
        tok.decode(&ids, false).unwrap()
    }

    #[test]
    fn mask_marks_overlapping_tokens() {
        let ids = [10, 11, 12, 13];
        let offs = [(0, 2), (2, 4), (4, 6), (0, 0)];
        assert_eq!(mask(&ids, &offs, &[(3, 5)], false), vec![-100, 11, 12, -100]);
        assert_eq!(mask(&ids, &offs, &[], true), vec![10, 11, 12, 13]);
    }

    #[test]
    fn multi_turn_chat_learns_only_assistant_turns() {
        let tok = llama();
        let msgs = vec![
            ChatMessage::new("user", "Hi there"),
            ChatMessage::new("assistant", "Hello! How can I help?"),
            ChatMessage::new("user", "Tell me a joke."),
            ChatMessage::new("assistant", "No."),
        ];
        let r = render(Record::Chat(msgs.clone()), &tok, false, true).unwrap();
        assert_eq!(r.example.input_ids, tok.encode(r.text.as_deref().unwrap(), false).unwrap());
        assert_eq!(learned_text(&tok, &r.example), "Hello! How can I help?<|im_end|>\nNo.<|im_end|>\n");
        let all = render(Record::Chat(msgs), &tok, true, false).unwrap();
        assert!(all.example.labels.iter().all(|&l| l >= 0));
    }

    #[test]
    fn non_prefix_stable_templates_fall_back_to_search() {
        // Renders the last message differently, so prefix renders are not prefixes of the text.
        let json = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/llama/tokenizer.json"),
        )
        .unwrap();
        let tpl = "{% for m in messages %}<{{ m.role }}{% if loop.last %}!{% endif %}>{{ m.content }}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}";
        let tok = TextTokenizer::from_parts(&json, Some(tpl.into()), None, Some("<|im_end|>")).unwrap();
        let msgs = vec![ChatMessage::new("user", "a b"), ChatMessage::new("assistant", "c d")];
        let r = render(Record::Chat(msgs), &tok, false, true).unwrap();
        assert_eq!(r.text.as_deref(), Some("<user>a b<assistant!>c d<|im_end|>"));
        assert_eq!(learned_text(&tok, &r.example), "c d<|im_end|>");

        // Earlier answers are hidden once the conversation goes on (as reasoning templates do).
        let hidden = "{% for m in messages %}{% if m.role == 'user' or loop.last %}{{ m.content }}{% else %}[answer]{% endif %}{% endfor %}";
        let tok = TextTokenizer::from_parts(&json, Some(hidden.into()), None, None).unwrap();
        let msgs = vec![
            ChatMessage::new("user", "q"),
            ChatMessage::new("assistant", "zzz"),
            ChatMessage::new("user", "q2"),
            ChatMessage::new("assistant", "yyy"),
        ];
        let e = render(Record::Chat(msgs), &tok, false, false).unwrap_err();
        assert!(e.message.contains("does not reproduce assistant message 1"), "{}", e.message);
    }

    #[test]
    fn classic_alpaca_learns_output_and_eos() {
        let json = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/llama/tokenizer.json"),
        )
        .unwrap();
        let tok = TextTokenizer::from_parts(&json, None, None, Some("<|im_end|>")).unwrap();
        let rec = Record::Alpaca {
            system: None,
            instruction: "Add.".into(),
            input: "1 and 2".into(),
            output: "3".into(),
        };
        let r = render(rec, &tok, false, true).unwrap();
        let text = r.text.unwrap();
        assert!(
            text.starts_with(ALPACA_PREAMBLE_INPUT)
                && text.ends_with("### Input:\n1 and 2\n\n### Response:\n3")
        );
        assert_eq!(learned_text(&tok, &r.example), "3<|im_end|>");
        assert_eq!(*r.example.input_ids.last().unwrap(), 2);
    }

    #[test]
    fn tokens_are_checked_against_the_vocabulary() {
        let tok = llama();
        let e =
            render(Record::Tokens { input_ids: vec![5, 384], labels: None }, &tok, false, false).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("input_ids"));
        assert!(e.message.contains("`input_ids[1]` is 384, outside the tokenizer's vocabulary of 384 ids"));
        let e = render(
            Record::Tokens { input_ids: vec![5, 6], labels: Some(vec![-100, 999]) },
            &tok,
            false,
            false,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("labels"));
    }
}
