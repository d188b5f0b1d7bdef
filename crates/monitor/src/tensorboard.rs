//! TensorBoard event files written without protobuf tooling: TFRecord framing (length, masked
//! CRC-32C of the length, payload, masked CRC-32C of the payload) around hand-encoded `Event`
//! protos (`wall_time` = 1, `step` = 2, `file_version` = 3, `summary` = 5, `session_log` = 7;
//! `Summary.Value` with `tag` = 1 and `simple_value` = 2). TensorBoard reads such scalars as
//! ordinary scalar series; `tensorboard --logdir <data dir>/runs` shows one run per job.
//!
//! [`TensorBoardSink`] is one more consumer of the event stream: steps, evaluations and telemetry
//! become scalars. Each attempt of a job appends a new file to the job's run folder and starts it
//! with a `SessionLog START` at its first step, so TensorBoard drops what a crashed attempt wrote
//! past the checkpoint it resumed from. [`read_records`] and [`decode_event`] read the files back
//! (tests check framing and checksums without Python).

use finetune_engine::train::TrainEvent;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0x82f6_3b78 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32C: [u32; 256] = crc32c_table();

/// CRC-32C (Castagnoli), as TFRecord uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC32C[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// TFRecord's masked checksum: rotated right by 15 bits plus a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends one TFRecord to `out`.
pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    varint(out, ((field << 3) | 2) as u64);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// What an event carries besides its time and step.
#[derive(Debug, Clone, PartialEq)]
pub enum Body<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(String, f32)]),
    /// `SessionLog { status: START }`: a (re)start of the run at this event's step.
    SessionStart,
}

/// One `Event` proto.
pub fn encode_event(wall_time: f64, step: u64, body: &Body<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(0x09); // wall_time: field 1, fixed64
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(0x10); // step: field 2, varint
    varint(&mut out, step);
    match body {
        Body::FileVersion(v) => bytes_field(&mut out, 3, v.as_bytes()),
        Body::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, v) in values.iter() {
                let mut value = Vec::with_capacity(tag.len() + 8);
                bytes_field(&mut value, 1, tag.as_bytes());
                value.push(0x15); // simple_value: field 2, fixed32
                value.extend_from_slice(&v.to_le_bytes());
                bytes_field(&mut summary, 1, &value);
            }
            bytes_field(&mut out, 5, &summary);
        }
        Body::SessionStart => bytes_field(&mut out, 7, &[0x08, 0x01]),
    }
    out
}

/// Why an event file cannot be read back.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("record {0}: truncated")]
    Truncated(usize),
    #[error("record {0}: the length checksum does not match")]
    LengthCrc(usize),
    #[error("record {0}: the data checksum does not match")]
    DataCrc(usize),
}

/// The payloads of a TFRecord file, every checksum verified.
pub fn read_records(bytes: &[u8]) -> Result<Vec<&[u8]>, RecordError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = out.len();
        let head = bytes.get(at..at + 12).ok_or(RecordError::Truncated(n))?;
        let (len, crc) = head.split_at(8);
        if masked_crc32c(len).to_le_bytes() != crc {
            return Err(RecordError::LengthCrc(n));
        }
        let len = u64::from_le_bytes(len.try_into().map_err(|_| RecordError::Truncated(n))?) as usize;
        let end = at.checked_add(12 + len + 4).ok_or(RecordError::Truncated(n))?;
        let rec = bytes.get(at..end).ok_or(RecordError::Truncated(n))?;
        let (payload, crc) = rec[12..].split_at(len);
        if masked_crc32c(payload).to_le_bytes() != crc {
            return Err(RecordError::DataCrc(n));
        }
        out.push(payload);
        at = end;
    }
    Ok(out)
}

/// An event as [`decode_event`] reads it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecodedEvent {
    pub wall_time: f64,
    pub step: u64,
    pub file_version: Option<String>,
    pub scalars: Vec<(String, f32)>,
    pub session_start: bool,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }

    /// (field, wire type, payload for length-delimited and fixed fields, value for varints)
    fn field(&mut self) -> Option<(u32, u8, &'a [u8], u64)> {
        let key = self.varint()?;
        let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
        Some(match wire {
            0 => (field, wire, &[][..], self.varint()?),
            1 => (field, wire, self.take(8)?, 0),
            2 => {
                let n = self.varint()? as usize;
                (field, wire, self.take(n)?, 0)
            }
            5 => (field, wire, self.take(4)?, 0),
            _ => return None,
        })
    }
}

/// Reads the fields [`encode_event`] writes (enough for tests and tools; others are skipped).
pub fn decode_event(payload: &[u8]) -> Option<DecodedEvent> {
    let mut e = DecodedEvent::default();
    let mut r = Reader(payload);
    while !r.0.is_empty() {
        match r.field()? {
            (1, 1, b, _) => e.wall_time = f64::from_le_bytes(b.try_into().ok()?),
            (2, 0, _, v) => e.step = v,
            (3, 2, b, _) => e.file_version = Some(String::from_utf8_lossy(b).into_owned()),
            (5, 2, summary, _) => {
                let mut s = Reader(summary);
                while !s.0.is_empty() {
                    let (_, _, value, _) = s.field()?;
                    let (mut tag, mut v) = (String::new(), f32::NAN);
                    let mut f = Reader(value);
                    while !f.0.is_empty() {
                        match f.field()? {
                            (1, 2, b, _) => tag = String::from_utf8_lossy(b).into_owned(),
                            (2, 5, b, _) => v = f32::from_le_bytes(b.try_into().ok()?),
                            _ => {}
                        }
                    }
                    e.scalars.push((tag, v));
                }
            }
            (7, 2, log, _) => e.session_start = Reader(log).field()? == (1, 0, &[][..], 1),
            _ => {}
        }
    }
    Some(e)
}

/// Appends events to one `events.out.tfevents.*` file.
pub struct EventWriter {
    file: BufWriter<std::fs::File>,
    path: PathBuf,
    buf: Vec<u8>,
}

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn host_name() -> String {
    let raw = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let clean: String = raw.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    if clean.is_empty() { "localhost".into() } else { clean }
}

impl EventWriter {
    /// Creates `dir` and a new event file in it (names sort by creation time, as TensorBoard
    /// reads them), starting with the `brain.Event:2` version record.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        std::fs::create_dir_all(dir)?;
        let name = format!(
            "events.out.tfevents.{:010}.{}.{}.{}",
            now_s() as u64,
            host_name(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new().create_new(true).write(true).open(&path)?;
        let mut w = Self { file: BufWriter::new(file), path, buf: Vec::new() };
        w.write(now_s(), 0, &Body::FileVersion("brain.Event:2"))?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, wall_time: f64, step: u64, body: &Body<'_>) -> std::io::Result<()> {
        self.buf.clear();
        frame(&encode_event(wall_time, step, body), &mut self.buf);
        self.file.write_all(&self.buf)
    }

    /// Scalars at `step`, timed now. Non-finite values are skipped (TensorBoard would show them
    /// as gaps anyway, and a NaN never reaches the stream: the trainer rolls it back).
    pub fn add_scalars(&mut self, step: u64, values: &[(String, f64)]) -> std::io::Result<()> {
        let v: Vec<(String, f32)> =
            values.iter().filter(|(_, x)| x.is_finite()).map(|(t, x)| (t.clone(), *x as f32)).collect();
        if v.is_empty() {
            return Ok(());
        }
        self.write(now_s(), step, &Body::Scalars(&v))
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// The scalars a stream event becomes, with their step: `train/*` and `memory/*` per optimizer
/// step, `eval/*` per evaluation, `system/*` and `gpu<N>/*` per telemetry sample.
pub fn scalars_of(event: &TrainEvent) -> Option<(u64, Vec<(String, f64)>)> {
    let s = |t: &str, v: f64| (t.to_string(), v);
    match event {
        TrainEvent::Step { step, loss, lr, grad_norm, tokens_per_s, epoch, mem, .. } => {
            let mut v = vec![
                s("train/loss", *loss),
                s("train/learning_rate", *lr),
                s("train/grad_norm", *grad_norm),
                s("train/tokens_per_s", *tokens_per_s),
                s("train/epoch", *epoch),
                s("memory/process_rss_gib", mem.process_rss_bytes as f64 / GIB),
                s("memory/process_peak_gib", mem.process_peak_bytes as f64 / GIB),
            ];
            if let Some(b) = mem.step_peak_bytes {
                v.push(s("memory/step_peak_gib", b as f64 / GIB));
            }
            if let Some(b) = mem.device_used_bytes {
                v.push(s("memory/device_used_gib", b as f64 / GIB));
            }
            Some((*step, v))
        }
        TrainEvent::Eval { step, eval_loss, perplexity, .. } => {
            Some((*step, vec![s("eval/loss", *eval_loss), s("eval/perplexity", *perplexity)]))
        }
        TrainEvent::Telemetry(t) => {
            let mut v = vec![s("system/memory_used_gib", t.system_memory_used_bytes as f64 / GIB)];
            if let Some(c) = t.system_cpu_percent {
                v.push(s("system/cpu_percent", c));
            }
            for g in &t.gpus {
                let p = format!("gpu{}", g.index);
                let opt = [
                    ("utilization_percent", g.utilization_percent),
                    ("memory_used_gib", g.memory_used_bytes.map(|b| b as f64 / GIB)),
                    ("temperature_c", g.temperature_c),
                    ("power_w", g.power_w),
                    ("process_memory_gib", g.process_memory_bytes.map(|b| b as f64 / GIB)),
                ];
                v.extend(opt.into_iter().filter_map(|(k, x)| Some((format!("{p}/{k}"), x?))));
            }
            Some((t.step, v))
        }
        _ => None,
    }
}

/// Writes a run's events as TensorBoard scalars into `dir` (one new file per attempt). The file
/// is created lazily on the first event; an I/O error turns the sink off and is returned once
/// (the caller logs it: TensorBoard files must never stop a run).
pub struct TensorBoardSink {
    dir: PathBuf,
    writer: Option<EventWriter>,
    failed: bool,
}

impl TensorBoardSink {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), writer: None, failed: false }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records one event; `Err` only the first time writing fails.
    pub fn record(&mut self, event: &TrainEvent) -> Result<(), String> {
        if self.failed {
            return Ok(());
        }
        self.try_record(event).map_err(|e| {
            self.failed = true;
            self.writer = None;
            format!("TensorBoard files in {} are off: {e}", self.dir.display())
        })
    }

    fn try_record(&mut self, event: &TrainEvent) -> std::io::Result<()> {
        if self.writer.is_none() {
            self.writer = Some(EventWriter::create(&self.dir)?);
        }
        let Some(w) = self.writer.as_mut() else { return Ok(()) };
        match event {
            // Points past the checkpoint a resumed attempt starts from are dropped by TensorBoard.
            TrainEvent::Started { start_step, .. } => {
                w.write(now_s(), start_step + 1, &Body::SessionStart)?;
                w.flush()
            }
            TrainEvent::Finished { .. } | TrainEvent::Failed { .. } => w.flush(),
            e => match scalars_of(e) {
                Some((step, values)) => {
                    w.add_scalars(step, &values)?;
                    // Flushed per event: TensorBoard shows a live run, and a killed worker loses
                    // nothing it reported.
                    w.flush()
                }
                None => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_the_reference_values() {
        // CRC-32C check value, and TFRecord masked CRCs computed with tensorboard's own
        // `masked_crc32c` (tools/fixtures/check_tensorboard.py --vectors).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224b_7fa3);
    }

    #[test]
    fn records_round_trip_and_damage_is_caught() {
        let mut file = Vec::new();
        frame(&encode_event(1.5, 0, &Body::FileVersion("brain.Event:2")), &mut file);
        let values = vec![("train/loss".to_string(), 2.5f32), ("train/learning_rate".to_string(), 1e-4)];
        frame(&encode_event(1_700_000_000.25, 300, &Body::Scalars(&values)), &mut file);
        frame(&encode_event(2.0, 41, &Body::SessionStart), &mut file);
        let recs = read_records(&file).expect("valid");
        assert_eq!(recs.len(), 3);
        let e0 = decode_event(recs[0]).unwrap();
        assert_eq!((e0.wall_time, e0.file_version.as_deref()), (1.5, Some("brain.Event:2")));
        let e1 = decode_event(recs[1]).unwrap();
        assert_eq!((e1.step, e1.wall_time), (300, 1_700_000_000.25));
        assert_eq!(e1.scalars, values);
        let e2 = decode_event(recs[2]).unwrap();
        assert!(e2.session_start && e2.step == 41);

        let mut bad = file.clone();
        bad[20] ^= 1; // inside the first payload
        assert_eq!(read_records(&bad), Err(RecordError::DataCrc(0)));
        let mut bad = file.clone();
        bad[3] ^= 1; // the first length
        assert_eq!(read_records(&bad), Err(RecordError::LengthCrc(0)));
        assert_eq!(read_records(&file[..file.len() - 2]), Err(RecordError::Truncated(2)));
    }
}
