// Dashboard: this machine (CPU, memory and GPUs, live from the studio's own telemetry), the
// running job with a live mini loss chart, the queue, recent alerts across jobs, recent jobs,
// and on first run an offer to try the demo. Everything but the chart is re-read every 4 s.
import { useEffect, useState } from 'preact/hooks';
import { api, type JobView, type Alert, type SystemInfo } from '../api';
import { AlertList } from '../components/Alerts';
import { Chart, chartColors } from '../components/Chart';
import { Badge, ErrorNote, Meter, ProgressBar, Spinner, Stat } from '../components/ui';
import { baseName, bytes, duration, num, percent } from '../lib/format';
import { navigate } from '../lib/router';
import { GpuList } from './job/Telemetry';
import { useLiveJob } from './useLiveJob';

/** This machine: CPU and memory in use, each GPU (or why there is no GPU telemetry). */
function Device({ sys }: { sys: SystemInfo }) {
  const t = sys.telemetry;
  const memUsed = t?.system_memory_used_bytes ?? (sys.memory_total_bytes != null && sys.memory_available_bytes != null ? sys.memory_total_bytes - sys.memory_available_bytes : null);
  const memTotal = t?.system_memory_total_bytes ?? sys.memory_total_bytes;
  return (
    <div class="stack tight device" data-testid="device">
      <div>
        <div class="row between small"><span><span class="muted">CPU</span> {sys.cpu} ({sys.cpu_threads} threads)</span><span data-testid="device-cpu">{percent(t?.system_cpu_percent)}</span></div>
        <Meter used={t?.system_cpu_percent} total={t?.system_cpu_percent != null ? 100 : null} label="CPU use" plain />
      </div>
      <div>
        <div class="row between small"><span class="muted">Memory</span><span data-testid="device-memory">{bytes(memUsed)} / {bytes(memTotal)}</span></div>
        <Meter used={memUsed} total={memTotal} label="Memory in use" />
      </div>
      {t ? <GpuList sample={t} /> : (
        <div class="small"><span class="muted">GPU</span> {sys.gpus[0] ? `${sys.gpus[0].name} (${bytes(sys.gpus[0].memory_bytes)})` : 'none found: training runs on the CPU'}</div>
      )}
      <dl class="kv small">
        <dt>Data</dt><dd class="mono small">{sys.data_dir}</dd>
        <dt>Version</dt><dd>{sys.version}</dd>
      </dl>
    </div>
  );
}

function RunningJob({ job }: { job: JobView }) {
  const live = useLiveJob(job.job_id);
  const last = live.points[live.points.length - 1];
  const total = live.totalSteps ?? job.total_steps;
  const step = last?.step ?? job.current_step;
  const data = [live.points.map((p) => p.step), live.points.map((p) => p.loss ?? null)];
  return (
    <section class="card" aria-labelledby="running-title">
      <div class="row between">
        <h2 id="running-title"><a href={`#/jobs/${job.job_id}`}>{job.name}</a></h2>
        <Badge kind={live.status ?? job.status} />
      </div>
      <ProgressBar value={total ? step / total : 0} label="Progress" />
      <div class="stats" style={{ margin: '12px 0' }}>
        <Stat label="Step" value={`${step} / ${total || '—'}`} />
        <Stat label="Loss" value={num(last?.loss ?? job.current_loss)} />
        <Stat label="Tokens/s" value={num(last?.tokens_per_s ?? job.tokens_per_s, 3)} />
        <Stat label="Time left" value={duration(live.etaS ?? job.eta_s)} />
      </div>
      <Chart testid="mini-loss" height={140} series={[{ label: 'loss', color: chartColors()[0] }]} data={data} />
    </section>
  );
}

export function Dashboard() {
  const [sys, setSys] = useState<SystemInfo | null>(null);
  const [jobs, setJobs] = useState<JobView[] | null>(null);
  const [alerts, setAlerts] = useState<Alert[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [demoBusy, setDemoBusy] = useState(false);
  const [demoError, setDemoError] = useState<unknown>(null);

  useEffect(() => {
    let alive = true;
    const load = async () => {
      try {
        const [s, j, a] = await Promise.all([
          api.system(), api.jobs.list({ limit: 20 }),
          api.alerts.recent(6).then((r) => r.alerts, () => null),
        ]);
        if (alive) { setSys(s); setJobs(j.jobs); if (a) setAlerts(a); setError(null); }
      } catch (e) { if (alive) setError(e); }
    };
    void load();
    const t = setInterval(load, 4000);
    return () => { alive = false; clearInterval(t); };
  }, []);

  const tryDemo = async () => {
    setDemoBusy(true); setDemoError(null);
    try { await api.demo(); navigate('/new?demo=1'); } catch (e) { setDemoError(e); } finally { setDemoBusy(false); }
  };

  const running = jobs?.filter((j) => j.status === 'running') ?? [];
  const queued = jobs?.filter((j) => j.status === 'pending') ?? [];
  const recent = jobs?.filter((j) => j.status !== 'running' && j.status !== 'pending').slice(0, 6) ?? [];

  return (
    <div>
      <div class="page-head"><h1>Dashboard</h1><a class="button primary" href="#/new">New job</a></div>
      <ErrorNote error={error} title="Could not load the dashboard." />
      {sys?.first_run && (
        <section class="card hero" aria-labelledby="demo-title">
          <div>
            <h2 id="demo-title">Welcome! Try the demo</h2>
            <p class="muted" style={{ margin: 0 }}>Teach SmolLM2-135M to answer in JSON in a few minutes on this computer. The model (98 MB) is downloaded once.</p>
            {demoError != null && <div style={{ marginTop: 12 }}><ErrorNote error={demoError} title="The demo could not be set up." /></div>}
          </div>
          <button class="primary" type="button" onClick={tryDemo} disabled={demoBusy}>
            {demoBusy ? <Spinner label="Preparing the demo" /> : 'Try the demo'}
          </button>
        </section>
      )}
      <div class="grid two" style={{ marginTop: 16 }}>
        <div class="stack">
          {running.length ? running.map((j) => <RunningJob key={j.job_id} job={j} />) : (
            <section class="card"><h2>Running</h2><p class="muted" style={{ margin: 0 }}>No job is running. <a href="#/new">Start one</a>.</p></section>
          )}
          <section class="card" aria-labelledby="queue-title">
            <h2 id="queue-title">Queue</h2>
            {queued.length === 0 ? <p class="muted" style={{ margin: 0 }}>Nothing is waiting.</p> : (
              <ul style={{ margin: 0, paddingLeft: 18 }}>
                {queued.map((j) => <li key={j.job_id}><a href={`#/jobs/${j.job_id}`}>{j.name}</a> <span class="muted small">({j.device})</span></li>)}
              </ul>
            )}
          </section>
        </div>
        <div class="stack">
          <section class="card" aria-labelledby="device-title">
            <h2 id="device-title">This machine</h2>
            {!sys ? <Spinner /> : <Device sys={sys} />}
          </section>
          <section class="card" aria-labelledby="alerts-title">
            <h2 id="alerts-title">Recent alerts</h2>
            {alerts.length === 0 ? <p class="muted" style={{ margin: 0 }}>No alerts. Jobs are watched for NaN values, loss spikes, divergence, plateaus, memory pressure and slowdowns.</p>
              : <AlertList alerts={alerts} job compact testid="recent-alerts" />}
          </section>
          <section class="card" aria-labelledby="recent-title">
            <div class="row between"><h2 id="recent-title">Recent jobs</h2><a href="#/history">All jobs</a></div>
            {recent.length === 0 ? <p class="muted" style={{ margin: 0 }}>No finished jobs yet.</p> : (
              <table>
                <tbody>
                  {recent.map((j) => (
                    <tr key={j.job_id}>
                      <td><a href={`#/jobs/${j.job_id}`}>{j.name}</a><div class="muted small">{baseName(j.model_path)}</div></td>
                      <td><Badge kind={j.status} /></td>
                      <td class="num">{num(j.current_loss)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </section>
        </div>
      </div>
    </div>
  );
}
