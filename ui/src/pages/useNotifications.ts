// Desktop notifications while the studio is open on any page: a new alert of any job, and a
// job that completes or fails. Only where notifications can be shown (the desktop app, or a
// browser whose user already allowed this site); the studio is polled every 4 s, and what
// happened before the window opened is not announced.
import { useEffect } from 'preact/hooks';
import { api } from '../api';
import { alertLabel } from '../lib/alerts';
import { canNotify, notify } from '../lib/desktop';
import { duration, num } from '../lib/format';

/** At most this many alert notifications per poll; the rest are counted in one more. */
const BURST = 3;

export function useNotifications() {
  useEffect(() => {
    if (!canNotify()) return;
    let alive = true;
    let since: number | null = null;
    const statuses = new Map<string, string>();
    const poll = async () => {
      try {
        const [{ alerts }, { jobs }] = await Promise.all([api.alerts.recent(20), api.jobs.list({ limit: 50 })]);
        if (!alive) return;
        const first = since === null;
        const fresh = alerts.filter((a) => since !== null && a.ts_ms > since).reverse();
        since = Math.max(since ?? 0, ...alerts.map((a) => a.ts_ms));
        for (const a of fresh.slice(0, BURST)) {
          void notify(`${a.job_name ?? a.job_id}: ${alertLabel(a.kind)}`, a.suggestion ? `${a.message}. ${a.suggestion}` : a.message);
        }
        if (fresh.length > BURST) void notify('More alerts', `${fresh.length - BURST} more alerts: see the dashboard.`);
        for (const j of jobs) {
          const before = statuses.get(j.job_id);
          statuses.set(j.job_id, j.status);
          if (first || !before || before === j.status || !['running', 'pending'].includes(before)) continue;
          if (j.status === 'completed') {
            void notify(`${j.name} completed`, `${j.current_step} steps in ${duration(j.elapsed_s)}, final loss ${num(j.current_loss)}.`);
          } else if (j.status === 'failed') {
            void notify(`${j.name} failed`, j.error_message ?? 'The job stopped with an error: see its log.');
          }
        }
      } catch { /* the pages show the studio's state; try again at the next poll */ }
    };
    void poll();
    const t = setInterval(poll, 4000);
    return () => { alive = false; clearInterval(t); };
  }, []);
}
