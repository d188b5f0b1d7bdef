// A job's metric history followed live: loads every stored point first (so a reload draws the
// whole curve at once), then follows the SSE stream from the last stored step, so no step is
// missed or drawn twice. A resumed attempt that restarts from a checkpoint trims later points.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, followJob, type LogLine, type MetricPoint } from '../api';

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
  loadError?: string;
};

export function useLiveJob(id: string | null, opts: { logs?: boolean } = {}): LiveJob {
  const [state, setState] = useState<LiveJob>({ points: [], evals: [], reconnecting: false, version: 0, logs: [], checkpointsVersion: 0 });
  const ref = useRef(state);
  useEffect(() => {
    if (!id) return;
    let stop = () => {};
    let cancelled = false;
    let logTimer: ReturnType<typeof setInterval> | undefined;
    const s: LiveJob = { points: [], evals: [], reconnecting: false, version: 0, logs: [], checkpointsVersion: 0 };
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
          log: () => { if (opts.logs) void pullLogs(); },
          connection: (lost) => push({ reconnecting: lost }),
        });
        if (opts.logs) { void pullLogs(); logTimer = setInterval(pullLogs, 3000); }
      } catch (e) {
        push({ loadError: (e as Error).message });
      }
    })();
    return () => { cancelled = true; stop(); clearInterval(logTimer); };
  }, [id]);
  return state;
}
