// Small building blocks every page uses: status badges, notices, progress bars, spinners.
import type { ComponentChildren } from 'preact';
import { ApiError } from '../api';

export const Badge = ({ kind, children }: { kind: string; children?: ComponentChildren }) => (
  <span class={`badge ${kind}`}>{children ?? kind.replace('_', ' ')}</span>
);

export const FIT_WORDS: Record<string, string> = { fits: 'fits', tight: 'tight', wont_fit: "won't fit" };
export const FitBadge = ({ fit }: { fit?: string | null }) =>
  fit ? <Badge kind={fit}>{FIT_WORDS[fit] ?? fit}</Badge> : null;

/** An error in plain words, where the user acted. */
export function ErrorNote({ error, title }: { error: unknown; title?: string }) {
  if (!error) return null;
  const message = error instanceof ApiError || error instanceof Error ? error.message : String(error);
  const fields = error instanceof ApiError ? error.fields : [];
  return (
    <div class="notice error" role="alert">
      {title && <strong>{title} </strong>}
      {fields.length > 1 ? 'Some settings need fixing:' : message}
      {fields.length > 1 && <ul>{fields.map((f) => <li key={f.key}><code>{f.key}</code>: {f.message}</li>)}</ul>}
    </div>
  );
}

export const Notice = ({ kind = 'info', children }: { kind?: 'info' | 'warn' | 'error'; children: ComponentChildren }) => (
  <div class={`notice ${kind}`} role={kind === 'error' ? 'alert' : 'status'}>{children}</div>
);

export const ProgressBar = ({ value, label }: { value: number; label: string }) => (
  <div class="progress" role="progressbar" aria-label={label} aria-valuemin={0} aria-valuemax={100} aria-valuenow={Math.round(value * 100)}>
    <div style={{ width: `${Math.min(100, Math.max(0, value * 100))}%` }} />
  </div>
);

export const Spinner = ({ label = 'Loading' }: { label?: string }) => (
  <span class="row muted"><span class="spinner" aria-hidden="true" /> {label}…</span>
);

export const Stat = ({ label, value, testid }: { label: string; value: ComponentChildren; testid?: string }) => (
  <div class="stat"><span class="label">{label}</span><span class="value" data-testid={testid}>{value}</span></div>
);

/** How full something is (memory): a bar that turns amber past 80 % and red past 92 %, unless
 *  `plain` (CPU use, where full is normal while training). */
export function Meter({ used, total, label, plain = false, testid }: { used?: number | null; total?: number | null; label: string; plain?: boolean; testid?: string }) {
  const frac = used != null && total ? Math.min(1, Math.max(0, used / total)) : null;
  const level = frac == null || plain ? '' : frac >= 0.92 ? 'bad' : frac >= 0.8 ? 'warn' : 'ok';
  return (
    <div class={`meter ${level}`} role="meter" aria-label={label} aria-valuemin={0} aria-valuemax={100}
      aria-valuenow={frac == null ? undefined : Math.round(frac * 100)} data-testid={testid}>
      <div style={{ width: `${(frac ?? 0) * 100}%` }} />
    </div>
  );
}
