// Numbers, sizes and durations as people read them.
export const bytes = (n?: number | null): string => {
  if (n == null) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0; let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
};
export const duration = (s?: number | null): string => {
  if (s == null || !isFinite(s)) return '—';
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
};
export const num = (v?: number | null, digits = 4): string => (v == null || !isFinite(v) ? '—' : Number(v.toPrecision(digits)).toString());
export const params = (n?: number | null): string => {
  if (n == null) return '—';
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e8 ? 0 : 1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(0)}K`;
  return String(n);
};
export const when = (iso?: string | null): string => (iso ? new Date(iso).toLocaleString() : '—');
export const baseName = (p: string): string => p.replace(/\/+$/, '').split(/[\\/]/).pop() || p;
/** Seconds between two RFC 3339 times (or until now). */
export const between = (a?: string | null, b?: string | null): number | null =>
  a ? ((b ? Date.parse(b) : Date.now()) - Date.parse(a)) / 1000 : null;
/** A percentage as people read it ("97 %"), or a dash. */
export const percent = (v?: number | null): string => (v == null || !isFinite(v) ? '—' : `${v >= 10 ? v.toFixed(0) : v.toFixed(1)} %`);
/** How long ago a Unix time in milliseconds was, for recent things ("12 s ago"), else the date. */
export const ago = (tsMs: number, now = Date.now()): string => {
  const s = Math.max(0, (now - tsMs) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(tsMs).toLocaleString();
};
/** The clock time of a Unix time in milliseconds. */
export const clock = (tsMs: number): string => new Date(tsMs).toLocaleTimeString();
