// Job detail: live curves with the machine's telemetry beside them, alerts, progress, ETA,
// controls (pause / resume / cancel), output folder, report, metric export, adapter download,
// log tail and checkpoints. Reloading draws the stored history at once and follows on from it.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, type JobDetail } from '../../api';
import { AlertList } from '../../components/Alerts';
import { Badge, ErrorNote, Notice, ProgressBar, Spinner, Stat } from '../../components/ui';
import { isDesktop, openInBrowser } from '../../lib/desktop';
import { baseName, bytes, duration, num, when } from '../../lib/format';
import { useLiveJob } from '../useLiveJob';
import { Checkpoints } from './Checkpoints';
import { JobCharts } from './JobCharts';
import { TelemetryPanel } from './Telemetry';

const ACTIVE = new Set(['pending', 'running']);

export function JobPage({ id }: { id: string }) {
  const live = useLiveJob(id, { logs: true, monitor: true });
  const [job, setJob] = useState<JobDetail | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [opened, setOpened] = useState<string | null>(null);
  const logBox = useRef<HTMLPreElement>(null);

  const reload = () => api.jobs.get(id).then((j) => { setJob(j); setError(null); }, setError);
  useEffect(() => { void reload(); }, [id, live.status, live.checkpointsVersion]);
  useEffect(() => {
    if (!job || !ACTIVE.has(live.status ?? job.status)) return;
    const t = setInterval(reload, 5000);
    return () => clearInterval(t);
  }, [job?.status, live.status]);
  useEffect(() => { const el = logBox.current; if (el) el.scrollTop = el.scrollHeight; }, [live.logs.length]);

  if (error && !job) return <ErrorNote error={error} title="Could not load this job." />;
  if (!job) return <Spinner />;

  const status = live.status ?? job.status;
  const last = live.points[live.points.length - 1];
  const total = live.totalSteps ?? job.total_steps;
  const step = last?.step ?? job.current_step;
  const act = async (name: string, f: () => Promise<unknown>) => {
    setBusy(name); setActionError(null);
    try { await f(); await reload(); } catch (e) { setActionError(e); } finally { setBusy(null); }
  };
  const cfg = job.config;
  const running = status === 'running';
  const resumable = ['paused', 'interrupted', 'failed', 'cancelled'].includes(status);
  const hasAdapter = status === 'completed' || !!job.published_adapter;
  const lastSample = live.telemetry[live.telemetry.length - 1];
  const memNow = last?.mem_bytes ?? (running ? lastSample?.process_rss_bytes : undefined);
  // The desktop app has no tabs: the report opens in the system's browser.
  const openReport = (e: MouseEvent) => {
    if (!isDesktop()) return;
    e.preventDefault();
    openInBrowser(api.jobs.reportPath(id)).catch(setActionError);
  };
  const alertsNewestFirst = [...live.alerts].reverse();

  return (
    <div>
      <div class="page-head">
        <div>
          <h1 data-testid="job-name">{job.name}</h1>
          <div class="row muted small">
            <Badge kind={status} /><span data-testid="job-status" class="sr-only">{status}</span>
            <span>{job.method}</span>·<span>{baseName(job.model_path)}</span>·<span>{baseName(job.dataset_path)}</span>·<span>{job.device}</span>
          </div>
        </div>
        <div class="row">
          {running && <button type="button" onClick={() => act('pause', () => api.jobs.pause(id))} disabled={!!busy}>Pause</button>}
          {resumable && <button type="button" onClick={() => act('resume', () => api.jobs.resume(id))} disabled={!!busy}>Resume</button>}
          {ACTIVE.has(status) && <button type="button" class="danger" onClick={() => act('cancel', () => api.jobs.cancel(id))} disabled={!!busy}>{busy === 'cancel' ? 'Cancelling…' : 'Cancel'}</button>}
          <button type="button" onClick={() => act('open', async () => setOpened((await api.jobs.openFolder(id)).path))} disabled={!!busy}>Open output folder</button>
          <a class="button" href={api.jobs.reportUrl(id)} target="_blank" rel="noopener" onClick={openReport}
            title="Curves, setup, hardware and alerts as a page to share">Report</a>
          <a class="button" href={api.jobs.metricsExportUrl(id, 'csv')} download title="Every step's metrics as CSV">Export metrics</a>
          {hasAdapter ? <a class="button" href={api.jobs.adapterUrl(id)} download>Download adapter</a>
            : <button type="button" disabled title="Written when the job completes">Download adapter</button>}
        </div>
      </div>
      <ErrorNote error={actionError} />
      {opened && <Notice>Opened <code>{opened}</code> in the file manager.</Notice>}
      {live.reconnecting && <Notice kind="warn">Connection to the studio lost; reconnecting…</Notice>}
      {(live.error || job.error_message) && status === 'failed' && <Notice kind="error">The job failed: {live.error ?? job.error_message}</Notice>}

      <section class="card">
        <ProgressBar value={total ? step / total : 0} label="Training progress" />
        <div class="stats" style={{ marginTop: 12 }}>
          <Stat label="Step" value={`${step} / ${total || '—'}`} testid="stat-step" />
          <Stat label="Loss" value={num(last?.loss ?? job.current_loss)} />
          <Stat label="Best loss" value={num(job.best_loss)} />
          <Stat label="Eval loss" value={num(live.evals[live.evals.length - 1]?.loss ?? job.eval_loss)} />
          <Stat label="Tokens/s" value={num(last?.tokens_per_s ?? job.tokens_per_s, 3)} />
          <Stat label="Time left" value={running ? duration(live.etaS ?? job.eta_s) : '—'} />
          <Stat label="Elapsed" value={duration(last?.elapsed_s ?? job.elapsed_s)} />
          <Stat label="Memory" value={bytes(memNow)} />
        </div>
      </section>

      <div style={{ marginTop: 16 }}>
        <JobCharts points={live.points} evals={live.evals}
          side={<TelemetryPanel samples={live.telemetry} points={live.points} live={running} />}>
          <div class="grid two">
            <section class="card" aria-labelledby="alerts-title" data-testid="alerts-card">
              <h2 id="alerts-title" class="row between">
                <span>Alerts</span>
                {live.alerts.length > 0 && <span class="badge neutral">{live.alerts.length}</span>}
              </h2>
              {live.alerts.length === 0
                ? <p class="muted small" style={{ margin: 0 }}>None. The job is watched for NaN or exploding values, loss spikes, divergence, plateaus, memory pressure and slowdowns.</p>
                : <div class="alerts-scroll"><AlertList alerts={alertsNewestFirst} testid="alerts" /></div>}
            </section>
            <section class="card" aria-labelledby="log-title">
          <h2 id="log-title">Log</h2>
              <pre class="log" ref={logBox} tabIndex={0} aria-label="Job log" data-testid="log">
                {live.logs.length === 0 ? <span class="muted">No log lines yet.</span> : live.logs.map((l) => (
                  <div key={l.id} class={l.level}>{new Date(l.ts).toLocaleTimeString()} {l.message}</div>
                ))}
              </pre>
            </section>
          </div>
        </JobCharts>
      </div>

      <div class="stack" style={{ marginTop: 16 }}>
        <section class="card" aria-labelledby="setup-title">
          <h2 id="setup-title">Setup</h2>
          <dl class="kv two-col small">
            <dt>Model</dt><dd class="mono">{job.model_path}</dd>
            <dt>Dataset</dt><dd class="mono">{job.dataset_path}</dd>
            <dt>Output</dt><dd class="mono">{job.output_dir}</dd>
            <dt>Learning rate</dt><dd>{String(cfg.train?.lr ?? '—')} ({String(cfg.train?.scheduler ?? '')})</dd>
            <dt>Batch</dt><dd>{String(cfg.train?.batch_size ?? '—')} × {String(cfg.train?.grad_accum ?? 1)}</dd>
            <dt>LoRA</dt><dd>r {String(cfg.lora?.r ?? '—')}, alpha {String(cfg.lora?.alpha ?? '—')}</dd>
            <dt>Created</dt><dd>{when(job.created_at)}</dd>
            <dt>Finished</dt><dd>{when(job.finished_at)}</dd>
            <dt>Attempts</dt><dd>{job.attempts.length}{job.restarts ? ` (${job.restarts} restarts)` : ''}</dd>
          </dl>
        </section>
        <Checkpoints jobId={id} version={live.checkpointsVersion} canRestore={!ACTIVE.has(status)} />
      </div>
    </div>
  );
}
