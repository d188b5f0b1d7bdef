// History: every job with status, model, method, final loss and duration; filter by text,
// status and method; tick two or more to overlay their loss curves.
import { useEffect, useMemo, useState } from 'preact/hooks';
import { api, type JobView, type MetricPoint } from '../api';
import { Chart, chartColors } from '../components/Chart';
import { Badge, ErrorNote, Spinner } from '../components/ui';
import { baseName, between, duration, num, when } from '../lib/format';

const STATUSES = ['', 'running', 'pending', 'paused', 'completed', 'failed', 'cancelled', 'interrupted'];

function Overlay({ jobs }: { jobs: JobView[] }) {
  const [curves, setCurves] = useState<Map<string, MetricPoint[]>>(new Map());
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let alive = true;
    Promise.all(jobs.map(async (j) => [j.job_id, await api.jobs.allMetrics(j.job_id)] as const))
      .then((all) => alive && setCurves(new Map(all)), setError);
    return () => { alive = false; };
  }, [jobs.map((j) => j.job_id).join()]);
  const data = useMemo(() => {
    const steps = [...new Set(jobs.flatMap((j) => (curves.get(j.job_id) ?? []).map((p) => p.step)))].sort((a, b) => a - b);
    const cols = jobs.map((j) => {
      const by = new Map((curves.get(j.job_id) ?? []).map((p) => [p.step, p.loss ?? null]));
      return steps.map((s) => by.get(s) ?? null);
    });
    return [steps, ...cols];
  }, [curves]);
  const colors = chartColors();
  return (
    <section class="card chart-card" aria-labelledby="cmp-title" style={{ marginBottom: 16 }}>
      <h2 id="cmp-title">Loss of {jobs.length} jobs</h2>
      <ErrorNote error={error} />
      <Chart testid="compare-chart" height={260} data={data}
        series={jobs.map((j, i) => ({ label: j.name, color: colors[i % colors.length], dash: i >= colors.length ? [6, 4] : undefined }))} />
    </section>
  );
}

export function History() {
  const [jobs, setJobs] = useState<JobView[] | null>(null);
  const [total, setTotal] = useState(0);
  const [text, setText] = useState('');
  const [status, setStatus] = useState('');
  const [method, setMethod] = useState('');
  const [picked, setPicked] = useState<Set<string>>(new Set());
  const [compare, setCompare] = useState(false);
  const [error, setError] = useState<unknown>(null);

  useEffect(() => {
    const t = setTimeout(() => {
      api.jobs.list({ q: text, status, method, limit: 200 }).then((r) => { setJobs(r.jobs); setTotal(r.total); setError(null); }, setError);
    }, 200);
    return () => clearTimeout(t);
  }, [text, status, method]);

  const toggle = (id: string) => {
    const next = new Set(picked);
    if (next.has(id)) next.delete(id); else next.add(id);
    setPicked(next);
    if (next.size < 2) setCompare(false);
  };
  const chosen = (jobs ?? []).filter((j) => picked.has(j.job_id));

  return (
    <div>
      <div class="page-head">
        <h1>History</h1>
        <button type="button" class="primary" disabled={picked.size < 2} onClick={() => setCompare(true)}>
          Compare {picked.size >= 2 ? picked.size : ''} loss curves
        </button>
      </div>
      <div class="card row" style={{ marginBottom: 16 }} role="search">
        <label class="sr-only" for="h-text">Search</label>
        <input id="h-text" type="search" placeholder="Search name, model or dataset" value={text} style={{ flex: 1 }}
          onInput={(e) => setText((e.target as HTMLInputElement).value)} />
        <label class="sr-only" for="h-status">Status</label>
        <select id="h-status" value={status} onChange={(e) => setStatus((e.target as HTMLSelectElement).value)}>
          {STATUSES.map((s) => <option key={s} value={s}>{s || 'Any status'}</option>)}
        </select>
        <label class="sr-only" for="h-method">Method</label>
        <select id="h-method" value={method} onChange={(e) => setMethod((e.target as HTMLSelectElement).value)}>
          <option value="">Any method</option><option value="lora">LoRA</option><option value="qlora">QLoRA</option><option value="full">Full</option>
        </select>
      </div>
      <ErrorNote error={error} />
      {compare && chosen.length >= 2 && <Overlay jobs={chosen} />}
      {!jobs ? <Spinner /> : jobs.length === 0 ? (
        <div class="card empty">{text || status || method ? 'No job matches these filters.' : <>No jobs yet. <a href="#/new">Start one</a>.</>}</div>
      ) : (
        <div class="card" style={{ padding: 0 }}>
          <table data-testid="history-table">
            <thead><tr><th><span class="sr-only">Compare</span></th><th>Job</th><th>Status</th><th>Model</th><th>Method</th><th class="num">Final loss</th><th class="num">Duration</th><th>Created</th></tr></thead>
            <tbody>
              {jobs.map((j) => (
                <tr key={j.job_id}>
                  <td><input type="checkbox" aria-label={`Compare ${j.name}`} checked={picked.has(j.job_id)} onChange={() => toggle(j.job_id)} /></td>
                  <td><a href={`#/jobs/${j.job_id}`}>{j.name}</a></td>
                  <td><Badge kind={j.status} /></td>
                  <td>{baseName(j.model_path)}</td>
                  <td>{j.method}</td>
                  <td class="num">{num(j.current_loss)}</td>
                  <td class="num">{duration(j.elapsed_s ?? between(j.started_at, j.finished_at))}</td>
                  <td class="small muted">{when(j.created_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {total > jobs.length && <p class="muted small" style={{ padding: 12, margin: 0 }}>Showing the newest {jobs.length} of {total}.</p>}
        </div>
      )}
    </div>
  );
}
