//! `GET /jobs/{id}/events`: live events as Server-Sent Events.
//!
//! The stream subscribes to the broadcast first, then replays the job's metric points after
//! `?after_step=N` (or the `Last-Event-ID` header) from SQLite, sends the job's `status`, and
//! then follows live events, skipping steps it already sent. The broadcast never waits for a
//! client: one that falls behind is told it lagged by the channel and simply re-reads from
//! SQLite, which has every event before it is broadcast. The stream ends after a terminal
//! status (completed, failed, cancelled).
//!
//! Event names: `step` (id = step; data = a metric point plus `total_steps`, `eta_s`), `eval`,
//! `checkpoint`, `log`, `alert`, `telemetry`, `started`, `finished`, `failed`, `status`. Only
//! steps are replayed; alerts and telemetry samples before the stream opened are read from
//! `/jobs/{id}/alerts` and `/jobs/{id}/telemetry`.

use crate::error::{ApiResult, ErrorBody};
use crate::state::AppState;
use crate::views::MetricPointView;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use finetune_jobs::{JobStatus, LiveEvent};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use tokio::sync::broadcast::{Receiver, error::RecvError};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(job_events))
}

/// Points read from SQLite per query while replaying.
const PAGE: u32 = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Replay steps after this one (default 0: the whole history).
    after_step: Option<u64>,
}

/// Live events of a job (Server-Sent Events), after a replay of its history from SQLite.
#[utoipa::path(get, path = "/jobs/{id}/events", tag = "monitoring",
    params(("id" = String, Path, description = "Job id"), EventsQuery),
    responses(
        (status = 200, description = "text/event-stream of step, eval, checkpoint, log, alert, telemetry, started, finished, failed and status events", content_type = "text/event-stream"),
        (status = 404, body = ErrorBody),
    ))]
async fn job_events(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    // Subscribe before reading history, so nothing committed in between is missed.
    let rx = st.sup.subscribe();
    st.store().require_job(&id)?;
    let last_event_id =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let after = q.after_step.or(last_event_id).unwrap_or(0);
    let follow = Follow { st, id, rx, last_step: after, queue: VecDeque::new(), phase: Phase::Replay };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let event = f.next().await?;
        Some((Ok(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

enum Phase {
    Replay,
    Live,
    End,
}

struct Follow {
    st: AppState,
    id: String,
    rx: Receiver<LiveEvent>,
    last_step: u64,
    queue: VecDeque<Event>,
    phase: Phase,
}

fn event(kind: &str, data: &Value) -> Event {
    Event::default().event(kind).data(data.to_string())
}

impl Follow {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            match self.phase {
                Phase::End => return None,
                Phase::Replay => self.replay_page(),
                Phase::Live => match self.rx.recv().await {
                    Ok(ev) if *ev.job_id == *self.id => self.live(ev),
                    Ok(_) => {}
                    // Fell behind: everything missed is in SQLite.
                    Err(RecvError::Lagged(_)) => self.phase = Phase::Replay,
                    Err(RecvError::Closed) => self.phase = Phase::End,
                },
            }
        }
    }

    fn replay_page(&mut self) {
        let store = self.st.store();
        let job = match store.job(&self.id) {
            Ok(Some(j)) => j,
            Ok(None) => {
                self.queue.push_back(event("status", &json!({"status": "deleted"})));
                self.phase = Phase::End;
                return;
            }
            Err(e) => {
                eprintln!("studio: events of {}: {e}", self.id);
                self.phase = Phase::End;
                return;
            }
        };
        let points = store.metrics(&self.id, self.last_step, PAGE).unwrap_or_default();
        for p in &points {
            let mut data = serde_json::to_value(MetricPointView::from(p)).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut data {
                m.insert("total_steps".into(), json!(job.total_steps));
            }
            self.queue.push_back(event("step", &data).id(p.step.to_string()));
            self.last_step = p.step;
        }
        if points.len() as u32 == PAGE {
            return;
        }
        self.queue.push_back(event(
            "status",
            &json!({
                "status": job.status,
                "current_step": job.current_step,
                "total_steps": job.total_steps,
                "progress": job.progress(),
                "error_message": job.error_message,
            }),
        ));
        self.phase = if job.status.is_terminal() { Phase::End } else { Phase::Live };
    }

    fn live(&mut self, ev: LiveEvent) {
        match ev.kind {
            "step" => {
                let step = ev.step.unwrap_or(0);
                if step > self.last_step {
                    self.last_step = step;
                    self.queue.push_back(event("step", &ev.data).id(step.to_string()));
                }
            }
            "started" => {
                // A resumed attempt restarts the count at its checkpoint.
                if let Some(start) = ev.data.get("start_step").and_then(Value::as_u64) {
                    self.last_step = self.last_step.min(start);
                }
                self.queue.push_back(event("started", &ev.data));
            }
            "status" => {
                let terminal = ev
                    .data
                    .get("status")
                    .and_then(Value::as_str)
                    .and_then(JobStatus::parse)
                    .is_some_and(JobStatus::is_terminal);
                self.queue.push_back(event("status", &ev.data));
                if terminal {
                    self.phase = Phase::End;
                }
            }
            kind => self.queue.push_back(event(kind, &ev.data)),
        }
    }
}
