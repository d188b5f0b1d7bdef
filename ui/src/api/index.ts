// The one module that talks to the studio: every fetch and EventSource in the UI is here.
// Types come from schema.d.ts, generated from the server's OpenAPI document (ui/openapi.json).
// The connection (API base and token) comes from the desktop shell (window.__STUDIO__), or a
// `?token=` in the page URL for a studio that requires one, else the page's own origin.
import type { components } from './schema';

type S = components['schemas'];
export type JobView = S['JobView'];
export type JobDetail = Omit<S['JobDetail'], 'config' | 'state'> & { config: TrainConfig; state: { status: string; [k: string]: unknown } };
export type JobList = S['JobList'];
export type MetricPoint = S['MetricPointView'];
export type LogLine = S['LogView'];
export type Checkpoint = S['CheckpointView'];
export type ModelView = S['ModelView'];
export type ModelValidation = S['ModelValidation'];
export type Estimate = S['Estimate'];
export type DatasetView = S['DatasetView'];
export type Preset = Omit<S['PresetView'], 'config'> & { config: TrainConfig };
export type FieldError = S['FieldError'];
export type SystemInfo = S['SystemInfo'];
export type DemoSetup = S['DemoSetup'];
export type Progress = S['Progress'];
export type ConfigValidation = Omit<S['ConfigValidation'], 'config'> & { config?: TrainConfig | null };
export type DatasetValidation = { valid: boolean; errors: RecordError[]; checked_with_tokenizer: boolean };
export type RecordError = { line: number; field?: string | null; message: string };
export type PreviewToken = { id: number; text: string; learned: boolean };
export type PreviewRow = { line: number; text: string; tokens: PreviewToken[]; truncated: boolean; skipped?: string | null };
export type DataReport = { format?: string | null; rows: number; examples: number; train_examples: number; eval_examples: number; truncated: number; skipped: number; total_tokens: number };
export type DatasetDetail = Omit<S['DatasetDetail'], 'preview' | 'report'> & { preview: PreviewRow[]; report?: DataReport | null };
/** One GPU as NVML reports it; every reading may be missing (the driver does not report it). */
export type GpuTelemetry = S['GpuTelemetryView'];
/** A sample of the machine (and the training process) while a job runs, or the studio's own;
 *  `gpu_status` is `ok` or `unavailable: <why>`. */
export type TelemetrySample = S['TelemetrySampleView'];
/** A warning raised for a job: by the worker's anomaly rules or by the studio's decisions
 *  (`job_id` and `job_name` tell whose, on the dashboard). */
export type Alert = S['AlertView'];
/** A training config: sections (model, method, lora, quant, data, train, checkpoint) of keys. */
export type TrainConfig = Record<string, Record<string, unknown>>;

const PREFIX = '/api/v1/fine-tuning';

declare global {
  interface Window { __STUDIO__?: { base: string; token: string } }
}

function connection(): { base: string; token: string | null } {
  if (window.__STUDIO__) return { base: window.__STUDIO__.base.replace(/\/$/, ''), token: window.__STUDIO__.token };
  const fromUrl = new URLSearchParams(location.search).get('token');
  if (fromUrl) sessionStorage.setItem('studio-token', fromUrl);
  return { base: '', token: fromUrl ?? sessionStorage.getItem('studio-token') };
}
const conn = connection();

/** An error from the studio, in words for the user, with the fields it concerns. */
export class ApiError extends Error {
  constructor(public status: number, public code: string, message: string, public fields: FieldError[] = []) {
    super(message);
  }
  /** The message for one field (`train.lr`), if the error names it. */
  field(key: string): string | undefined {
    return this.fields.find((f) => f.key === key)?.message;
  }
}

async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (conn.token) headers.Authorization = `Bearer ${conn.token}`;
  let payload: BodyInit | undefined;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let resp: Response;
  try {
    resp = await fetch(conn.base + path, { method, headers, body: payload });
  } catch {
    throw new ApiError(0, 'network', 'The studio is not reachable. Is it still running?');
  }
  if (resp.status === 204) return undefined as T;
  const text = await resp.text();
  let json: unknown = undefined;
  try { json = text ? JSON.parse(text) : undefined; } catch { /* not JSON */ }
  if (!resp.ok) {
    const err = (json as { error?: { code: string; message: string; fields?: FieldError[] } } | undefined)?.error;
    throw new ApiError(resp.status, err?.code ?? 'http', err?.message ?? `The studio answered ${resp.status}.`, err?.fields ?? []);
  }
  return json as T;
}

const get = <T>(p: string) => request<T>('GET', PREFIX + p);
const post = <T>(p: string, body: unknown = {}) => request<T>('POST', PREFIX + p, body);
const del = (p: string) => request<void>('DELETE', PREFIX + p);
const q = (params: Record<string, string | number | undefined | null>) => {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') s.set(k, String(v));
  const t = s.toString();
  return t ? `?${t}` : '';
};
/** A URL the browser opens itself (downloads), with the token in the query when there is one. */
const directUrl = (p: string, params: Record<string, string> = {}) => conn.base + PREFIX + p + q({ ...params, access_token: conn.token });

export const api = {
  system: () => get<SystemInfo>('/system'),
  demo: () => post<DemoSetup>('/demo'),
  jobs: {
    list: (f: { status?: string; q?: string; method?: string; limit?: number; offset?: number } = {}) => get<JobList>('/jobs' + q(f)),
    get: (id: string) => get<JobDetail>(`/jobs/${id}`),
    create: (body: Record<string, unknown>) => post<{ job_id: string; status: string }>('/jobs', body),
    cancel: (id: string) => post<JobView>(`/jobs/${id}/cancel`),
    pause: (id: string) => post<JobView>(`/jobs/${id}/pause`),
    resume: (id: string) => post<JobView>(`/jobs/${id}/resume`),
    remove: (id: string) => del(`/jobs/${id}`),
    progress: (id: string) => get<Progress>(`/jobs/${id}/progress`),
    metrics: (id: string, afterStep = 0, limit = 10000) => get<{ points: MetricPoint[] }>(`/jobs/${id}/metrics` + q({ after_step: afterStep, limit })),
    logs: (id: string, afterId = 0, limit = 500) => get<{ logs: LogLine[]; next_after_id: number }>(`/jobs/${id}/logs` + q({ after_id: afterId, limit })),
    checkpoints: (id: string) => get<{ checkpoints: Checkpoint[] }>(`/jobs/${id}/checkpoints`),
    openFolder: (id: string) => post<{ path: string }>(`/jobs/${id}/open-folder`),
    adapterUrl: (id: string) => directUrl(`/jobs/${id}/adapter`),
    /** The shareable report: an HTML page, Markdown, or the chart as PNG/SVG. */
    reportUrl: (id: string, format: 'html' | 'md' | 'png' | 'svg' = 'html') => directUrl(`/jobs/${id}/report`, { format }),
    /** The API path of the report (the desktop shell opens it in the system's browser). */
    reportPath: (id: string, format: 'html' | 'md' | 'png' | 'svg' = 'html') => `${PREFIX}/jobs/${id}/report?format=${format}`,
    /** The metric history as a download (CSV or JSON). */
    metricsExportUrl: (id: string, format: 'csv' | 'json' = 'csv') => directUrl(`/jobs/${id}/metrics/export`, { format }),
    telemetry: (id: string, afterTsMs = 0, limit = 20000) => get<S['TelemetryPage']>(`/jobs/${id}/telemetry` + q({ after_ts_ms: afterTsMs, limit })),
    alerts: (id: string) => get<S['AlertList']>(`/jobs/${id}/alerts`),
    /** Every telemetry sample of a job after `afterTsMs`, oldest first, paging through long histories. */
    async allTelemetry(id: string, afterTsMs = 0): Promise<TelemetrySample[]> {
      const out: TelemetrySample[] = [];
      for (;;) {
        const { samples } = await api.jobs.telemetry(id, afterTsMs);
        out.push(...samples);
        if (samples.length < 20000) return out;
        afterTsMs = samples[samples.length - 1].ts_ms;
      }
    },
    /** Every metric point of a job, paging through long histories. */
    async allMetrics(id: string, afterStep = 0): Promise<MetricPoint[]> {
      const out: MetricPoint[] = [];
      for (;;) {
        const { points } = await api.jobs.metrics(id, afterStep);
        out.push(...points);
        if (points.length < 10000) return out;
        afterStep = points[points.length - 1].step;
      }
    },
  },
  alerts: {
    /** The newest alerts across jobs, newest first. */
    recent: (limit = 10) => get<S['AlertList']>('/alerts' + q({ limit })),
  },
  checkpoints: {
    deploy: (checkpointId: string) => post<JobView>(`/checkpoints/${checkpointId}/deploy`),
    restore: (checkpointId: string) => post<JobView>(`/checkpoints/${checkpointId}/restore`),
  },
  models: {
    list: () => get<{ models: ModelView[] }>('/models'),
    register: (path: string, name?: string) => post<ModelView>('/models', { path, name }),
    validate: (body: { path?: string; model_id?: string; batch_size?: number; seq_len?: number; dtype?: string; lora_r?: number; available_memory_gb?: number }) =>
      post<ModelValidation>('/models/validate', body),
  },
  presets: {
    list: () => get<{ templates: Preset[] }>('/configs/templates'),
    save: (body: { name: string; description: string; hardware: string; min_memory_gb?: number | null; config: TrainConfig }) => post<Preset>('/configs/templates', body),
    remove: (id: string) => del(`/configs/templates/${id}`),
  },
  configs: {
    validate: (config: Record<string, unknown>) => post<ConfigValidation>('/configs/validate', config),
  },
  datasets: {
    list: () => get<{ datasets: DatasetView[] }>('/datasets'),
    upload: (file: File) => {
      const form = new FormData();
      form.append('file', file, file.name);
      return request<DatasetView>('POST', PREFIX + '/datasets', form);
    },
    register: (path: string) => post<DatasetView>('/datasets', { path }),
    get: (id: string, model?: string, preview = 3) => get<DatasetDetail>(`/datasets/${id}` + q({ model, preview })),
    validate: (id: string, model?: string) => post<DatasetValidation>(`/datasets/${id}/validate`, model ? { model } : {}),
    remove: (id: string) => del(`/datasets/${id}`),
  },
};

export type LiveHandlers = {
  step?: (p: MetricPoint & { total_steps?: number; eta_s?: number | null }) => void;
  eval?: (e: { step: number; eval_loss: number }) => void;
  status?: (s: { status: string; error_message?: string | null; current_step?: number; total_steps?: number }) => void;
  started?: (s: { start_step?: number; total_steps?: number }) => void;
  log?: (l: { level?: string; message: string }) => void;
  checkpoint?: (c: { step: number }) => void;
  /** A live telemetry sample (those stored before the stream opened are read over REST). */
  telemetry?: (t: TelemetrySample) => void;
  alert?: (a: { step: number; kind: string; message: string; suggestion: string }) => void;
  /** The connection dropped and is being retried (false when back). */
  connection?: (lost: boolean) => void;
};

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/**
 * Follows a job's live events from `afterStep`. When the connection drops it reconnects from
 * the last step received, so the caller sees every step once. Returns a function that stops it.
 */
export function followJob(id: string, afterStep: number, h: LiveHandlers): () => void {
  let last = afterStep;
  let source: EventSource | null = null;
  let stopped = false;
  let ended = false;
  let retry: ReturnType<typeof setTimeout> | undefined;
  const parse = (e: MessageEvent) => { try { return JSON.parse(e.data); } catch { return {}; } };
  const open = () => {
    const params = q({ after_step: last, access_token: conn.token });
    const es = new EventSource(`${conn.base}${PREFIX}/jobs/${id}/events${params}`);
    source = es;
    es.addEventListener('open', () => h.connection?.(false));
    es.addEventListener('step', (e) => {
      const p = parse(e as MessageEvent);
      if (typeof p.step === 'number' && p.step > last) { last = p.step; h.step?.(p); }
    });
    es.addEventListener('eval', (e) => h.eval?.(parse(e as MessageEvent)));
    es.addEventListener('log', (e) => h.log?.(parse(e as MessageEvent)));
    es.addEventListener('checkpoint', (e) => h.checkpoint?.(parse(e as MessageEvent)));
    es.addEventListener('telemetry', (e) => { const t = parse(e as MessageEvent); if (typeof t.ts_ms === 'number') h.telemetry?.(t); });
    es.addEventListener('alert', (e) => h.alert?.(parse(e as MessageEvent)));
    es.addEventListener('started', (e) => {
      const s = parse(e as MessageEvent);
      if (typeof s.start_step === 'number') last = Math.min(last, s.start_step);
      h.started?.(s);
    });
    es.addEventListener('status', (e) => {
      const s = parse(e as MessageEvent);
      if (TERMINAL.has(s.status)) ended = true;
      h.status?.(s);
    });
    es.addEventListener('error', () => {
      es.close();
      if (stopped || ended) return;
      h.connection?.(true);
      retry = setTimeout(open, 1500);
    });
  };
  open();
  return () => { stopped = true; clearTimeout(retry); source?.close(); };
}
