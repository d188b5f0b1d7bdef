//! Reads the rows of a dataset file, JSON Lines or one JSON array, with the location of each row
//! so every later error can name its line. Kept apart from format parsing so that both formats
//! of file feed the same record parser, and so a hostile file (invalid UTF-8, a huge line, deep
//! nesting, an unclosed array) fails with a message instead of a panic or an out-of-memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value as Json;

use super::RowError;
use crate::error::{EngineError, Result};

/// Longest JSONL line we read into memory (a larger one is reported, not loaded).
const MAX_LINE: usize = 256 << 20;

/// Where a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    /// The 1-based line (JSONL) or 1-based element number (JSON array): what errors report.
    pub line: usize,
    /// For a JSON array element: the file line its value starts on.
    pub array_line: Option<usize>,
}

impl Loc {
    /// A prefix for messages that explains a JSON array's "line" numbers.
    pub fn prefix(&self) -> String {
        match self.array_line {
            Some(l) => format!("JSON array element {} (starting on line {l}): ", self.line),
            None => String::new(),
        }
    }
}

/// One row: a parsed JSON value, or why it could not be parsed.
pub(crate) type Row = (Loc, std::result::Result<Json, RowError>);

/// The rows of a dataset file, in file order. Blank lines are skipped.
pub(crate) enum Rows {
    Lines {
        reader: BufReader<File>,
        line: usize,
        buf: Vec<u8>,
    },
    Array {
        bytes: Vec<u8>,
        pos: usize,
        element: usize,
        /// `line` is the line number at byte `line_pos`.
        line_pos: usize,
        line: usize,
        /// First invalid UTF-8 byte of the file, if any.
        bad_utf8: Option<usize>,
        done: bool,
    },
}

impl Rows {
    /// Opens `path`; a file whose first non-blank character is `[` is read as a JSON array.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut first = true;
        let mut lines_skipped = 0;
        let is_array = loop {
            let buf = reader.fill_buf().map_err(|e| EngineError::io(path, e))?;
            if buf.is_empty() {
                break false;
            }
            if first && buf.starts_with(b"\xEF\xBB\xBF") {
                reader.consume(3);
                first = false;
                continue;
            }
            first = false;
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => {
                    let is_array = buf[i] == b'[';
                    lines_skipped += buf[..i].iter().filter(|&&b| b == b'\n').count();
                    reader.consume(if is_array { i + 1 } else { i });
                    break is_array;
                }
                None => {
                    lines_skipped += buf.iter().filter(|&&b| b == b'\n').count();
                    let n = buf.len();
                    reader.consume(n);
                }
            }
        };
        if !is_array {
            return Ok(Rows::Lines { reader, line: lines_skipped, buf: Vec::new() });
        }
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|e| EngineError::io(path, e))?;
        let bad_utf8 = std::str::from_utf8(&bytes).err().map(|e| e.valid_up_to());
        Ok(Rows::Array {
            bytes,
            pos: 0,
            element: 0,
            line_pos: 0,
            line: lines_skipped + 1,
            bad_utf8,
            done: false,
        })
    }
}

/// serde_json's message without its "at line 1 column 7" (our line is the file's).
pub(crate) fn json_error(e: &serde_json::Error) -> RowError {
    let text = e.to_string();
    let msg = text.split(" at line ").next().unwrap_or(&text);
    RowError::new(format!("malformed JSON at column {}: {msg}", e.column()))
}

fn next_line(reader: &mut BufReader<File>, line: &mut usize, buf: &mut Vec<u8>) -> Option<Row> {
    loop {
        buf.clear();
        let read = reader.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf);
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                *line += 1;
                let loc = Loc { line: *line, array_line: None };
                return Some((loc, Err(RowError::new(format!("read error: {e}")))));
            }
        };
        if n == 0 {
            return None;
        }
        *line += 1;
        let loc = Loc { line: *line, array_line: None };
        if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
            // Skip the rest of the line so the next row starts on the next line.
            loop {
                buf.clear();
                match reader.by_ref().take(1 << 20).read_until(b'\n', buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if buf.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
            let msg = format!("line is longer than {} MiB", MAX_LINE >> 20);
            return Some((loc, Err(RowError::new(msg))));
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let text = match std::str::from_utf8(buf) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1);
                return Some((loc, Err(RowError::new(msg))));
            }
        };
        return Some((loc, serde_json::from_str(text).map_err(|e| json_error(&e))));
    }
}

impl Iterator for Rows {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        match self {
            Rows::Lines { reader, line, buf } => next_line(reader, line, buf),
            Rows::Array { bytes, pos, element, line_pos, line, bad_utf8, done } => {
                if *done {
                    return None;
                }
                let skip_ws = |p: &mut usize| {
                    while *p < bytes.len() && bytes[*p].is_ascii_whitespace() {
                        *p += 1;
                    }
                };
                let mut line_at = |p: usize| {
                    *line += bytes[*line_pos..p].iter().filter(|&&b| b == b'\n').count();
                    *line_pos = p;
                    *line
                };
                skip_ws(pos);
                if *element == 0 && bytes.get(*pos) == Some(&b']') {
                    *done = true;
                    return after_array(bytes, *pos + 1, &mut line_at, 1);
                }
                *element += 1;
                let start = *pos;
                let loc = Loc { line: *element, array_line: Some(line_at(start)) };
                let mut stream = serde_json::Deserializer::from_slice(&bytes[start..]).into_iter::<Json>();
                let parsed = stream.next();
                let end = start + stream.byte_offset();
                let value = match parsed {
                    Some(Ok(v)) => v,
                    other => {
                        *done = true;
                        let err = match (other, *bad_utf8) {
                            (_, Some(b)) if b >= start => {
                                let l = line_at(b);
                                RowError::new(format!("invalid UTF-8 on line {l}"))
                            }
                            (Some(Err(e)), _) => json_error(&e),
                            _ => RowError::new("unexpected end of file: the JSON array is not closed"),
                        };
                        return Some((loc, Err(err)));
                    }
                };
                *pos = end;
                skip_ws(pos);
                match bytes.get(*pos) {
                    Some(b',') => *pos += 1,
                    Some(b']') => {
                        *done = true;
                        if let Some((_, Err(e))) = after_array(bytes, *pos + 1, &mut line_at, 0) {
                            return Some((loc, Err(e)));
                        }
                    }
                    Some(_) => {
                        *done = true;
                        let msg = "expected `,` or `]` after this element of the JSON array";
                        return Some((loc, Err(RowError::new(msg))));
                    }
                    None => {
                        *done = true;
                        let msg = "unexpected end of file: the JSON array is not closed";
                        return Some((loc, Err(RowError::new(msg))));
                    }
                }
                Some((loc, Ok(value)))
            }
        }
    }
}

/// Checks that only whitespace follows the closing `]`.
fn after_array(
    bytes: &[u8],
    from: usize,
    line_at: &mut impl FnMut(usize) -> usize,
    element: usize,
) -> Option<Row> {
    let rest = bytes.get(from..).unwrap_or(&[]);
    let i = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let l = line_at(from + i);
    let loc = Loc { line: element, array_line: Some(l) };
    Some((loc, Err(RowError::new(format!("unexpected text after the JSON array on line {l}")))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(content: &[u8], name: &str) -> Vec<Row> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        Rows::open(&p).unwrap().collect()
    }

    #[test]
    fn jsonl_skips_blank_lines_and_counts_them() {
        let r = rows(b"\xEF\xBB\xBF\n{\"a\": 1}\r\n\n  \n{\"a\": 2}\n", "x.jsonl");
        let lines: Vec<usize> = r.iter().map(|(l, _)| l.line).collect();
        assert_eq!(lines, vec![2, 5]);
        assert!(r.iter().all(|(_, v)| v.is_ok()));
    }

    #[test]
    fn jsonl_reports_bad_lines_and_keeps_going() {
        let r = rows(b"{\"a\": 1}\n{\"a\": \n\xff\xfe\n[1]\n", "x.jsonl");
        assert_eq!(r.len(), 4);
        let e = r[1].1.as_ref().unwrap_err();
        assert!(e.message.starts_with("malformed JSON at column"), "{}", e.message);
        let e = r[2].1.as_ref().unwrap_err();
        assert!(e.message.contains("invalid UTF-8 at byte 1"), "{}", e.message);
        assert!(r[3].1.is_ok());
    }

    #[test]
    fn array_elements_carry_their_index_and_line() {
        let r = rows(b"\n[\n  {\"a\": 1},\n  {\"a\": 2}\n]\n", "x.json");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].0, Loc { line: 2, array_line: Some(4) });
        assert!(r[1].0.prefix().contains("element 2"));
    }

    #[test]
    fn broken_arrays_fail_with_a_message() {
        for (content, want) in [
            (&b"[{\"a\": 1}, {\"a\": "[..], "malformed JSON"),
            (&b"[{\"a\": 1} {\"a\": 2}]"[..], "expected `,` or `]`"),
            (&b"[{\"a\": 1},"[..], "not closed"),
            (&b"[{\"a\": 1}] x"[..], "unexpected text after"),
            (&b"[{\"a\": 1},\n{\"a\": \"\xff\"}]"[..], "invalid UTF-8 on line 2"),
        ] {
            let r = rows(content, "x.json");
            let err = r.iter().find_map(|(_, v)| v.as_ref().err()).expect("an error");
            assert!(err.message.contains(want), "{} vs {want}", err.message);
        }
        assert!(rows(b"[ ]", "x.json").is_empty());
        assert!(rows(b"\n \n", "x.jsonl").is_empty());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut s = b"{\"a\": ".to_vec();
        s.extend("[".repeat(100_000).into_bytes());
        s.extend(b"\n");
        let r = rows(&s, "x.jsonl");
        assert!(r[0].1.as_ref().unwrap_err().message.contains("recursion limit"));
    }
}
