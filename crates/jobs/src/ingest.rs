//! The single writer of worker output. Readers of worker stdout/stderr send [`IngestOp`]s into a
//! channel; one thread takes whatever has queued up (at least one op, at most [`MAX_BATCH`]),
//! writes it in one transaction, and only then broadcasts the matching [`LiveEvent`]s, so a
//! listener never sees an event that SQLite does not have. Broadcasting never blocks: a listener
//! that falls behind loses live events and re-reads them from the store.

use crate::error::{JobsError, Result};
use crate::events::{LiveEvent, WorkerEvent};
use crate::store::{Store, dir_size};
use crate::time::now_ms;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::{broadcast, oneshot};

/// Ops written per transaction at most.
pub const MAX_BATCH: usize = 4096;
/// Live events buffered per listener before it lags.
pub const LIVE_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub enum IngestOp {
    Worker { job_id: Arc<str>, event: WorkerEvent },
    Log { job_id: Arc<str>, level: &'static str, source: &'static str, message: String },
}

enum Msg {
    Op(IngestOp),
    Flush(oneshot::Sender<()>),
}

/// A handle on the writer thread and the live broadcast. Cloning is cheap.
#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<Msg>,
    live: broadcast::Sender<LiveEvent>,
}

impl Ingestor {
    /// Starts the writer thread. It stops when every handle is dropped.
    pub fn start(store: Arc<Store>) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let sender = live.clone();
        std::thread::Builder::new()
            .name("studio-ingest".into())
            .spawn(move || writer_loop(&store, &rx, &sender))
            .map_err(|e| JobsError::io("studio-ingest thread", e))?;
        Ok(Self { tx, live })
    }

    pub fn send(&self, op: IngestOp) -> Result<()> {
        self.tx.send(Msg::Op(op)).map_err(|_| JobsError::WriterGone)
    }

    /// Waits until everything sent before this call is committed and broadcast.
    pub async fn flush(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Msg::Flush(done)).map_err(|_| JobsError::WriterGone)?;
        wait.await.map_err(|_| JobsError::WriterGone)
    }

    /// [`Ingestor::flush`] for callers outside an async runtime.
    pub fn flush_blocking(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Msg::Flush(done)).map_err(|_| JobsError::WriterGone)?;
        wait.blocking_recv().map_err(|_| JobsError::WriterGone)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.live.subscribe()
    }

    /// Broadcasts an event that was written elsewhere (a status change).
    pub fn publish(&self, event: LiveEvent) {
        // No listener is not an error.
        let _ = self.live.send(event);
    }
}

fn writer_loop(store: &Store, rx: &mpsc::Receiver<Msg>, live: &broadcast::Sender<LiveEvent>) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Op(op) => ops.push(op),
                Msg::Flush(done) => flushes.push(done),
            }
            if ops.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !ops.is_empty() {
            write_batch(store, &ops, live);
            ops.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes `ops` in one transaction, then broadcasts them. A failing op (say, for a job deleted
/// meanwhile) is reported and skipped; the others still commit.
pub fn write_batch(store: &Store, ops: &[IngestOp], live: &broadcast::Sender<LiveEvent>) {
    // Measured before taking the lock: a checkpoint folder can hold many files.
    let sizes: Vec<Option<u64>> = ops
        .iter()
        .map(|op| match op {
            IngestOp::Worker { event: WorkerEvent::Checkpoint { path, .. }, .. } => {
                Some(dir_size(Path::new(path)))
            }
            _ => None,
        })
        .collect();
    let now = now_ms();
    let committed = {
        let mut conn = store.lock();
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                eprintln!("studio: cannot begin a metrics transaction: {e}");
                return;
            }
        };
        for (op, size) in ops.iter().zip(&sizes) {
            let res = match op {
                IngestOp::Worker { job_id, event } => {
                    crate::store::write_event(&tx, job_id, event, *size, now)
                }
                IngestOp::Log { job_id, level, source, message } => {
                    crate::store::write_log(&tx, job_id, level, source, message, now)
                }
            };
            if let Err(e) = res {
                eprintln!("studio: dropped an event of job {}: {e}", op_job(op));
            }
        }
        tx.commit()
    };
    if let Err(e) = committed {
        eprintln!("studio: cannot commit {} events: {e}", ops.len());
        return;
    }
    if live.receiver_count() == 0 {
        return;
    }
    let at = now_ms();
    for op in ops {
        let event =
            match op {
                IngestOp::Worker { job_id, event } => event.live_payload().map(|(kind, step, data)| {
                    LiveEvent { job_id: job_id.clone(), kind, step, data, committed_at_ms: at }
                }),
                IngestOp::Log { job_id, level, source, message } => Some(LiveEvent {
                    job_id: job_id.clone(),
                    kind: "log",
                    step: None,
                    data: json!({"level": level, "source": source, "message": message}),
                    committed_at_ms: at,
                }),
            };
        if let Some(e) = event {
            let _ = live.send(e);
        }
    }
}

fn op_job(op: &IngestOp) -> &str {
    match op {
        IngestOp::Worker { job_id, .. } | IngestOp::Log { job_id, .. } => job_id,
    }
}
