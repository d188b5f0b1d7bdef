// Dashboard: this machine (CPU, memory, GPUs), the running job with a live mini loss chart, the
// queue, recent jobs, and on first run an offer to try the demo.
import { useEffect, useState } from 'preact/hooks';
import { api, type JobView, type SystemInfo } from '../api';
import { Chart, chartColors } from '../components/Chart';
import { Badge, ErrorNote, ProgressBar, Spinner, Stat } from '../components/ui';
import { baseName, bytes, duration, num } from '../lib/format';
import { navigate } from '../lib/router';
import { useLiveJob } from './useLiveJob';

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
  const [error, setError] = useState<unknown>(null);
  const [demoBusy, setDemoBusy] = useState(false);
  const [demoError, setDemoError] = useState<unknown>(null);

  useEffect(() => {
    let alive = true;
    const load = async () => {
      try {
        const [s, j] = await Promise.all([api.system(), api.jobs.list({ limit: 20 })]);
        if (alive) { setSys(s); setJobs(j.jobs); setError(null); }
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
  const gpu = sys?.gpus[0];

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
            {!sys ? <Spinner /> : (
              <dl class="kv" data-testid="device">
                <dt>CPU</dt><dd>{sys.cpu} ({sys.cpu_threads} threads)</dd>
                <dt>Memory</dt><dd>{bytes(sys.memory_total_bytes)}{sys.memory_available_bytes != null && <span class="muted"> ({bytes(sys.memory_available_bytes)} free)</span>}</dd>
                <dt>GPU</dt><dd>{gpu ? `${gpu.name} (${bytes(gpu.memory_bytes)})` : 'none found: training runs on the CPU'}</dd>
                <dt>Data</dt><dd class="mono small">{sys.data_dir}</dd>
                <dt>Version</dt><dd>{sys.version}</dd>
              </dl>
            )}
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
