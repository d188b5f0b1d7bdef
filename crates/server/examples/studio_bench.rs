//! Studio benchmarks (no `cargo bench` needed):
//!
//! 1. **Metric ingestion**: step events through the real writer (`Ingestor`: batched
//!    transactions into a WAL SQLite file, then broadcast), with and without parsing the worker's
//!    NDJSON lines first. Target: >= 20 000 events/s.
//! 2. **SSE latency**: a real server on loopback, a client on `GET /jobs/{id}/events`; the time
//!    from handing a step event to the writer until the client has read it. Target: < 50 ms.
//!
//! Run: `cargo run --release -p finetune-server --example studio_bench [-- EVENTS SAMPLES]`.

use finetune_jobs::ingest::IngestOp;
use finetune_jobs::{Ingestor, NewJob, Store, Transition, WorkerEvent};
use finetune_server::{Server, ServerConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn step_line(step: u64) -> String {
    format!(
        r#"{{"event":"step","step":{step},"total_steps":1000000,"epoch":0.5,"loss":1.2345,"lr":0.0002,"grad_norm":0.75,"tokens":2048,"tokens_per_s":5000.0,"elapsed_s":12.5,"eta_s":100.0,"mem":{{"base_bytes":1,"trainable_bytes":2,"optimizer_bytes":3,"process_rss_bytes":123456789,"process_peak_bytes":223456789}}}}"#
    )
}

fn new_job() -> NewJob {
    NewJob {
        name: "bench".into(),
        method: "lora".into(),
        model_path: "/m".into(),
        dataset_path: "/d".into(),
        device: "cpu".into(),
        config_json: "{}".into(),
        max_restarts: 0,
        fault: None,
    }
}

fn ingestion(events: u64, parse: bool) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&dir.path().join("studio.db")).expect("store"));
    let job = store.create_job(&new_job(), dir.path()).expect("job");
    let ingest = Ingestor::start(store.clone()).expect("ingestor");
    let _listener = ingest.subscribe();
    let job_id: Arc<str> = job.id.as_str().into();
    let lines: Vec<String> = (1..=events).map(step_line).collect();
    let parsed: Vec<WorkerEvent> =
        if parse { Vec::new() } else { lines.iter().filter_map(|l| WorkerEvent::parse_line(l)).collect() };
    let start = Instant::now();
    if parse {
        for l in &lines {
            let event = WorkerEvent::parse_line(l).expect("event");
            ingest.send(IngestOp::Worker { job_id: job_id.clone(), event }).expect("send");
        }
    } else {
        for event in parsed {
            ingest.send(IngestOp::Worker { job_id: job_id.clone(), event }).expect("send");
        }
    }
    ingest.flush_blocking().expect("flush");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(store.metric_count(&job.id).expect("count"), events, "every event committed");
    events as f64 / secs
}

/// Reads one SSE event (event name, data) from a chunked response.
struct Sse {
    reader: BufReader<TcpStream>,
    text: String,
}

impl Sse {
    fn open(addr: &str, path: &str) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).ok();
        let mut w = stream.try_clone().expect("clone");
        write!(w, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").expect("write");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("head");
            if line.trim().is_empty() {
                break;
            }
        }
        Self { reader, text: String::new() }
    }

    fn next(&mut self) -> (String, String) {
        loop {
            if let Some(pos) = self.text.find("\n\n") {
                let block: String = self.text.drain(..pos + 2).collect();
                let mut ev = String::new();
                let mut data = String::new();
                for l in block.lines() {
                    if let Some(v) = l.strip_prefix("event:") {
                        ev = v.trim().into();
                    } else if let Some(v) = l.strip_prefix("data:") {
                        data = v.trim().into();
                    }
                }
                if !ev.is_empty() {
                    return (ev, data);
                }
                continue;
            }
            let mut size = String::new();
            self.reader.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("hex size");
            let mut buf = vec![0; n + 2];
            self.reader.read_exact(&mut buf).expect("chunk");
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sse_latency(samples: usize) -> Vec<f64> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let server =
        rt.block_on(Server::bind(ServerConfig::new(dir.path().join("data"), "/bin/false"))).expect("server");
    let addr = server.addr().to_string();
    let state = server.state().clone();
    // A job that stays open: created straight in the store and paused, so no worker starts.
    let job = state.store().create_job(&new_job(), &dir.path().join("jobs")).expect("job");
    state.store().transition(&job.id, &Transition::Paused).expect("pause");
    rt.spawn(server.run(std::future::pending()));
    let mut sse = Sse::open(&addr, &format!("/api/v1/fine-tuning/jobs/{}/events", job.id));
    assert_eq!(sse.next().0, "status");
    let ingest = state.sup.ingestor().clone();
    let job_id: Arc<str> = job.id.as_str().into();
    let mut lat = Vec::with_capacity(samples);
    for step in 1..=samples as u64 {
        let event = WorkerEvent::parse_line(&step_line(step)).expect("event");
        let t0 = Instant::now();
        ingest.send(IngestOp::Worker { job_id: job_id.clone(), event }).expect("send");
        loop {
            let (ev, data) = sse.next();
            if ev == "step" && data.contains(&format!("\"step\":{step},")) {
                break;
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
        // Steps of a real run are milliseconds apart at the very least.
        std::thread::sleep(Duration::from_millis(2));
    }
    lat
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let events = args.first().copied().unwrap_or(200_000);
    let samples = args.get(1).copied().unwrap_or(1000) as usize;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("machine: {} ({cores} logical cores)", cpu_model());
    let best = |parse: bool| (0..3).map(|_| ingestion(events, parse)).fold(0.0f64, f64::max);
    let committed = best(false);
    let with_parse = best(true);
    println!(
        "ingestion, {events} step events, best of 3: {committed:.0} events/s committed; {with_parse:.0} events/s including NDJSON parsing"
    );
    let mut lat = sse_latency(samples);
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "SSE latency over {samples} step events: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
}
