//! Live events over a real socket: a client that stops reading never holds up the writer (the
//! store keeps committing at full speed), and when it reads again it gets every step, in order,
//! exactly once: what the broadcast dropped for it is re-read from SQLite.

use finetune_jobs::ingest::IngestOp;
use finetune_jobs::{NewJob, Transition, WorkerEvent};
use finetune_server::{Server, ServerConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn step(n: u64) -> WorkerEvent {
    WorkerEvent::parse_line(&format!(
        r#"{{"event":"step","step":{n},"total_steps":100000,"loss":{},"lr":0.001,"grad_norm":1.0,"tokens":64,"tokens_per_s":100.0,"elapsed_s":1.0,"eta_s":1.0,"mem":{{"process_rss_bytes":1}}}}"#,
        1.0 / n as f64
    ))
    .expect("step event")
}

struct Client {
    reader: BufReader<TcpStream>,
    text: String,
}

impl Client {
    fn open(addr: &str, path: &str) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = stream.try_clone().unwrap();
        write!(w, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        Self { reader, text: String::new() }
    }

    /// (event, data) of the next event.
    fn next(&mut self) -> (String, serde_json::Value) {
        loop {
            if let Some(pos) = self.text.find("\n\n") {
                let block: String = self.text.drain(..pos + 2).collect();
                let ev = block.lines().find_map(|l| l.strip_prefix("event:")).map(|e| e.trim().to_string());
                let data = block.lines().find_map(|l| l.strip_prefix("data:")).map(str::trim);
                if let (Some(ev), Some(data)) = (ev, data) {
                    return (ev, serde_json::from_str(data).unwrap());
                }
                continue;
            }
            let mut size = String::new();
            self.reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut buf = vec![0; n + 2];
            self.reader.read_exact(&mut buf).unwrap();
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_never_blocks_the_writer_and_catches_up_from_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(ServerConfig::new(dir.path().join("data"), "/bin/false")).await.unwrap();
    let addr = server.addr().to_string();
    let state = server.state().clone();
    let new = NewJob {
        name: "slow client".into(),
        method: "lora".into(),
        model_path: "/m".into(),
        dataset_path: "/d".into(),
        device: "cpu".into(),
        config_json: "{}".into(),
        max_restarts: 0,
        fault: None,
    };
    // Straight into the store and paused, so no worker is started for it.
    let job = state.store().create_job(&new, &dir.path().join("jobs")).unwrap();
    state.store().transition(&job.id, &Transition::Paused).unwrap();
    tokio::spawn(server.run(std::future::pending()));

    let path = format!("/api/v1/fine-tuning/jobs/{}/events", job.id);
    let total: u64 = 60_000;
    let id = job.id.clone();
    let ingest = state.sup.ingestor().clone();
    let (steps, writer_time) = tokio::task::spawn_blocking(move || {
        let mut client = Client::open(&addr, &path);
        assert_eq!(client.next().0, "status");
        // The client now stops reading while far more events than the broadcast holds arrive.
        let job_id: Arc<str> = id.as_str().into();
        let start = Instant::now();
        for n in 1..=total {
            ingest.send(IngestOp::Worker { job_id: job_id.clone(), event: step(n) }).unwrap();
        }
        ingest.flush_blocking().unwrap();
        let writer_time = start.elapsed();
        let mut steps = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(60);
        while steps.last() != Some(&total) && Instant::now() < deadline {
            let (ev, data) = client.next();
            if ev == "step" {
                steps.push(data["step"].as_u64().unwrap());
            }
        }
        (steps, writer_time)
    })
    .await
    .unwrap();
    assert_eq!(state.store().metric_count(&job.id).unwrap(), total);
    assert!(writer_time < Duration::from_secs(20), "the writer was held up: {writer_time:?}");
    assert_eq!(steps, (1..=total).collect::<Vec<_>>(), "every step once, in order, after lagging");
}
