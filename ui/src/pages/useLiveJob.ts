// A job's metric history followed live: loads every stored point first (so a reload draws the
// whole curve at once), then follows the SSE stream from the last stored step, so no step is
// missed or drawn twice. A resumed attempt that restarts from a checkpoint trims later points.
// With `monitor`, the job's telemetry samples and alerts too: history over REST, then the live
// ones from the same stream (samples it replays that are already drawn are dropped by time).
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
    // source, and an alert the stream replays is not shown twice.
    const pullAlerts = async (live?: { step: number; kind: string; message: string; suggestion: string }) => {
      try {
        const { alerts } = await api.jobs.alerts(id);
        push({ alerts });
      } catch {
        if (live) push({ alerts: [...s.alerts, { ...live, ts_ms: Date.now(), source: 'worker' }] });
      }
    };
    const addSample = (t: TelemetrySample) => {
      const lastTs = s.telemetry.length ? s.telemetry[s.telemetry.length - 1].ts_ms : -1;
      if (t.ts_ms > lastTs) push({ telemetry: [...s.telemetry, t] });
    };
    (async () => {
      try {
        const points = await api.jobs.allMetrics(id);
        if (cancelled) return;
        const evals = points.filter((p) => p.eval_loss != null).map((p) => ({ step: p.step, loss: p.eval_loss as number }));
        push({ points, evals });
        if (opts.monitor) {
          // Read after the metrics: the stream opened next replays whatever came in between.
          const [telemetry, alerts] = await Promise.all([
            api.jobs.allTelemetry(id).catch(() => [] as TelemetrySample[]),
            api.jobs.alerts(id).then((r) => r.alerts, () => [] as Alert[]),
          ]);
          if (cancelled) return;
          push({ telemetry, alerts });
        }
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
          connection: (lost) => push({ reconnecting: lost }),
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
