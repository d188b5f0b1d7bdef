// Alerts as a list: a severity-coloured label for the kind, the message, what to do about it,
// the step and the time; on the dashboard also the job it belongs to.
import type { Alert } from '../api';
import { alertLabel, alertSeverity } from '../lib/alerts';
import { ago, clock } from '../lib/format';

export function AlertItem({ alert, job, compact }: { alert: Alert; job?: boolean; compact?: boolean }) {
  const severity = alertSeverity(alert.kind);
  return (
    <li class={`alert ${severity}`} data-testid="alert" data-kind={alert.kind} title={compact ? alert.suggestion : undefined}>
      <div class="row between">
        <span class="row">
          <span class={`badge sev-${severity}`}>{alertLabel(alert.kind)}</span>
          {job && <a href={`#/jobs/${alert.job_id}`} class="small">{alert.job_name || alert.job_id}</a>}
        </span>
        <span class="muted small" title={new Date(alert.ts_ms).toLocaleString()}>
          step {alert.step} · {job ? ago(alert.ts_ms) : clock(alert.ts_ms)}{alert.source === 'studio' ? ' · studio' : ''}
        </span>
      </div>
      <div class="alert-message">{alert.message}</div>
      {alert.suggestion && !compact && <div class="muted small">{alert.suggestion}</div>}
    </li>
  );
}

/** `job`: name the job of each alert (the dashboard); `compact`: the suggestion only on hover. */
export function AlertList({ alerts, job = false, compact = false, testid }: { alerts: Alert[]; job?: boolean; compact?: boolean; testid?: string }) {
  return (
    <ul class="alerts" data-testid={testid} data-count={alerts.length}>
      {alerts.map((a, i) => <AlertItem key={a.id || `${a.ts_ms}-${a.kind}-${i}`} alert={a} job={job} compact={compact} />)}
    </ul>
  );
}
