//! Test support for the studio: starts the real `finetune-studio serve` binary on a free port
//! with its own data dir, and talks to it over plain HTTP/1.1 on a `TcpStream` (so tests can
//! send any Host header or content type), including a streaming Server-Sent Events reader.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A training config for the tiny llama fixture: fast CPU steps.
pub fn tiny_job(max_steps: u64, checkpoint_every: u64) -> Value {
    let f = fixtures();
    serde_json::json!({
        "model": {"path": f.join("models/llama"), "device": "cpu", "dtype": "f32"},
        "data": {"path": f.join("data/alpaca.jsonl"), "max_len": 64},
        "lora": {"r": 4, "alpha": 8.0},
        "train": {"max_steps": max_steps, "batch_size": 2, "lr": 1e-3, "scheduler": "constant"},
        "checkpoint": {"every_steps": checkpoint_every, "keep_last": 0}
    })
}

pub struct Studio {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
}

impl Studio {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_finetune-studio"))
            .args(["serve", "--port", "0", "--cancel-grace-s", "5", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RAYON_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start finetune-studio serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(30)).expect("the server printed its address");
        let addr = first
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"));
        Self { child, addr: addr.to_string(), data_dir: data_dir.to_path_buf() }
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
    }

    /// Kills the server with SIGKILL (its workers survive it, as after a crash).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        raw_request(&self.addr, method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.raw("GET", path, &[], b"").json()
    }

    pub fn send_json(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let text = body.to_string();
        self.raw(method, path, &[("Content-Type", "application/json")], text.as_bytes()).json()
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send_json("POST", path, body)
    }

    pub fn api(&self, rest: &str) -> String {
        format!("/api/v1/fine-tuning{rest}")
    }

    pub fn create_job(&self, config: &Value) -> String {
        let (status, body) = self.post(&self.api("/jobs"), config);
        assert_eq!(status, 201, "create: {body}");
        body["job_id"].as_str().expect("job_id").to_string()
    }

    pub fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&self.api(&format!("/jobs/{id}")));
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls the job until `pred` holds, panicking with the job after `timeout`.
    pub fn wait_job(&self, id: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id);
            if pred(&job) {
                return job;
            }
            if start.elapsed() > timeout {
                panic!("timed out waiting for job {id}: {job:#}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        self.wait_job(id, timeout, |j| {
            let s = j["status"].as_str().unwrap_or("");
            let terminal = matches!(s, "completed" | "failed" | "cancelled");
            assert!(s == status || !terminal, "job ended {s} while waiting for {status}: {j:#}");
            s == status
        })
    }

    pub fn sse(&self, path: &str) -> SseStream {
        SseStream::open(&self.addr, path)
    }
}

impl Drop for Studio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(self) -> (u16, Value) {
        let v = if self.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
        };
        (self.status, v)
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"))
}

/// Reads one chunk of a chunked body; `None` at the last (empty) chunk.
fn read_chunk(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut size_line = String::new();
    if reader.read_line(&mut size_line)? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
    if size == 0 {
        return Ok(None);
    }
    let mut buf = vec![0; size];
    reader.read_exact(&mut buf)?;
    let mut crlf = [0u8; 2];
    reader.read_exact(&mut crlf)?;
    Ok(Some(buf))
}

pub fn raw_request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut w = stream.try_clone().expect("clone");
    let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !has_host {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).expect("write head");
    w.write_all(body).expect("write body");
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let mut out = Vec::new();
    if is_chunked(&headers) {
        while let Some(chunk) = read_chunk(&mut reader).expect("chunk") {
            out.extend(chunk);
        }
    } else {
        reader.read_to_end(&mut out).expect("body");
    }
    Response { status, headers, body: out }
}

/// A multipart/form-data body with one file part (and an optional `name` part).
pub fn multipart(file_name: &str, content: &[u8], name: Option<&str>) -> (String, Vec<u8>) {
    let boundary = "----studio-test-boundary-7d1f";
    let mut body = Vec::new();
    if let Some(n) = name {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{n}\r\n")
                .as_bytes(),
        );
    }
    body.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend(content);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: Value,
    pub id: Option<String>,
}

/// An open SSE response, read event by event.
pub struct SseStream {
    reader: BufReader<TcpStream>,
    pub status: u16,
    chunked: bool,
    text: String,
    ended: bool,
}

impl SseStream {
    pub fn open(addr: &str, path: &str) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let mut w = stream.try_clone().expect("clone");
        write!(w, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").expect("write");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        let chunked = is_chunked(&headers);
        Self { reader, status, chunked, text: String::new(), ended: false }
    }

    fn fill(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let got = if self.chunked {
            match read_chunk(&mut self.reader) {
                Ok(Some(c)) => Some(c),
                _ => None,
            }
        } else {
            let mut buf = vec![0; 4096];
            match self.reader.read(&mut buf) {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(buf[..n].to_vec()),
            }
        };
        match got {
            Some(bytes) => {
                self.text.push_str(&String::from_utf8_lossy(&bytes));
                true
            }
            None => {
                self.ended = true;
                false
            }
        }
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ended.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(pos) = self.text.find("\n\n") {
                let block: String = self.text.drain(..pos + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                let mut id = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    }
                }
                if data.is_empty() && id.is_none() {
                    continue;
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(SseEvent { event, data, id });
            }
            if !self.fill() {
                return None;
            }
        }
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}
