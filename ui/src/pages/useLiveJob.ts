// A job's metric history followed live: loads every stored point first (so a reload draws the
// whole curve at once), then follows the SSE stream from the last stored step, so no step is
// missed or drawn twice. A resumed attempt that restarts from a checkpoint trims later points.
// With `monitor`, the job's telemetry samples and alerts too: the live ones from the same stream,
// and the stored ones over REST each time the stream (re)opens.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, followJob, type Alert, type LogLine, type MetricPoint, type TelemetrySample } from '../api';

export type LiveJob = {
  points: MetricPoint[];
  evals: { step: number; loss: number }[];
  status?: string;
  error?: string | null;
  totalSteps?: number;
  etaS?: number | null;
  reconnecting: boolean;
  /** Bumped on every change, for components that redraw. */
  version: number;
  logs: LogLine[];
  checkpointsVersion: number;
  /** Telemetry samples, oldest first, one per time stamp (with `monitor`). */
  telemetry: TelemetrySample[];
  /** Alerts, oldest first (with `monitor`). */
  alerts: Alert[];
  loadError?: string;
};

const empty = (): LiveJob => ({ points: [], evals: [], reconnecting: false, version: 0, logs: [], checkpointsVersion: 0, telemetry: [], alerts: [] });

export function useLiveJob(id: string | null, opts: { logs?: boolean; monitor?: boolean } = {}): LiveJob {
  const [state, setState] = useState<LiveJob>(empty);
  const ref = useRef(state);
  useEffect(() => {
    if (!id) return;
    let stop = () => {};
    let cancelled = false;
    let logTimer: ReturnType<typeof setInterval> | undefined;
    let alertTimer: ReturnType<typeof setTimeout> | undefined;
    const s: LiveJob = empty();
    ref.current = s;
    const push = (patch: Partial<LiveJob>) => {
      Object.assign(s, patch, { version: s.version + 1 });
      if (!cancelled) setState({ ...s });
    };
    let logAfter = 0;
    const pullLogs = async () => {
      try {
        const page = await api.jobs.logs(id, logAfter);
        if (page.logs.length) { logAfter = page.next_after_id; push({ logs: [...s.logs, ...page.logs].slice(-300) }); }
      } catch { /* shown by the stream's state */ }
    };
    // Alerts are few: on each live one the list is read again, so it has the stored time and
    // source; if that fails the event itself is shown.
    const pullAlerts = async (live?: { step: number; kind: string; message: string; suggestion: string }) => {
      try {
        const { alerts } = await api.jobs.alerts(id);
        if (!cancelled) push({ alerts });
      } catch {
        if (live) push({ alerts: [...s.alerts, { ...live, id: 0, job_id: id, ts_ms: Date.now(), source: 'worker' }] });
      }
    };
    // Telemetry: the stream sends only live samples, so each time it opens (it is subscribed by
    // then) the stored samples after `historyTs` are read and merged in by time stamp: no gap
    // between history and live, on the first load and after a reconnection alike.
    let historyTs = 0;
    let backfill: 'idle' | 'running' | 'failed' = 'idle';
    const mergeSamples = (more: TelemetrySample[]) => {
      if (!more.length) return;
      const byTs = new Map(s.telemetry.map((t) => [t.ts_ms, t]));
      for (const t of more) byTs.set(t.ts_ms, t);
      push({ telemetry: [...byTs.values()].sort((a, b) => a.ts_ms - b.ts_ms) });
    };
    const addSample = (t: TelemetrySample) => {
      const lastTs = s.telemetry.length ? s.telemetry[s.telemetry.length - 1].ts_ms : -1;
      if (t.ts_ms > lastTs) push({ telemetry: [...s.telemetry, t] });
      else mergeSamples([t]);
    };
    const catchUp = async () => {
      backfill = 'running';
      try {
        const [more] = await Promise.all([api.jobs.allTelemetry(id, historyTs), pullAlerts()]);
        if (cancelled) return;
        mergeSamples(more);
        if (more.length) historyTs = Math.max(historyTs, more[more.length - 1].ts_ms);
        backfill = 'idle';
      } catch {
        backfill = 'failed';
      }
    };
    const onConnection = (lost: boolean) => {
      push({ reconnecting: lost });
      if (!opts.monitor) return;
      if (!lost) void catchUp();
      // What was drawn so far has no gap (unless the last catch-up failed): the next one can
      // start at its end.
      else if (backfill === 'idle' && s.telemetry.length) historyTs = s.telemetry[s.telemetry.length - 1].ts_ms;
    };
    (async () => {
      try {
        const points = await api.jobs.allMetrics(id);
        if (cancelled) return;
        const evals = points.filter((p) => p.eval_loss != null).map((p) => ({ step: p.step, loss: p.eval_loss as number }));
        push({ points, evals });
        const last = points.length ? points[points.length - 1].step : 0;
        stop = followJob(id, last, {
          step: (p) => push({ points: [...s.points, p], totalSteps: p.total_steps ?? s.totalSteps, etaS: p.eta_s ?? s.etaS }),
          eval: (e) => push({ evals: [...s.evals.filter((x) => x.step !== e.step), { step: e.step, loss: e.eval_loss }] }),
          status: (st) => push({ status: st.status, error: st.error_message, totalSteps: st.total_steps ?? s.totalSteps }),
          started: (st) => {
            if (typeof st.start_step === 'number') {
              const from = st.start_step;
              push({ points: s.points.filter((p) => p.step <= from), evals: s.evals.filter((e) => e.step <= from) });
            }
          },
          checkpoint: () => push({ checkpointsVersion: s.checkpointsVersion + 1 }),
          telemetry: (t) => { if (opts.monitor) addSample(t); },
          alert: (a) => {
            if (!opts.monitor) return;
            clearTimeout(alertTimer);
            alertTimer = setTimeout(() => void pullAlerts(a), 300);
          },
          log: () => { if (opts.logs) void pullLogs(); },
          connection: onConnection,
        });
        if (opts.logs) { void pullLogs(); logTimer = setInterval(pullLogs, 3000); }
      } catch (e) {
        push({ loadError: (e as Error).message });
      }
    })();
    return () => { cancelled = true; stop(); clearInterval(logTimer); clearTimeout(alertTimer); };
  }, [id]);
  return state;
}
