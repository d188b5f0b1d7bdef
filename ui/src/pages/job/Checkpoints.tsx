// A job's checkpoints: step, loss, size; deploy one as the job's adapter or continue from it.
import { useEffect, useState } from 'preact/hooks';
import { api, type Checkpoint } from '../../api';
import { ErrorNote } from '../../components/ui';
import { bytes, num } from '../../lib/format';

export function Checkpoints({ jobId, version, canRestore }: { jobId: string; version: number; canRestore: boolean }) {
  const [list, setList] = useState<Checkpoint[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    api.jobs.checkpoints(jobId).then((r) => setList(r.checkpoints), setError);
  }, [jobId, version, tick]);
  const act = async (f: () => Promise<unknown>) => {
    setError(null);
    try { await f(); setTick((t) => t + 1); } catch (e) { setError(e); }
  };
  return (
    <section class="card" aria-labelledby="ck-title">
      <h2 id="ck-title">Checkpoints</h2>
      <ErrorNote error={error} />
      {!list?.length ? <p class="muted" style={{ margin: 0 }}>None yet. They are written every <code>checkpoint.every_steps</code> steps.</p> : (
        <table>
          <thead><tr><th>Step</th><th class="num">Loss</th><th class="num">Eval loss</th><th class="num">Size</th><th /></tr></thead>
          <tbody>
            {list.map((c) => (
              <tr key={c.checkpoint_id}>
                <td>{c.step} {c.published && <span class="badge ok">deployed</span>} {!c.exists && <span class="badge neutral">removed</span>}</td>
                <td class="num">{num(c.loss)}</td>
                <td class="num">{num(c.eval_loss)}</td>
                <td class="num">{bytes(c.size_bytes)}</td>
                <td class="row end">
                  <button type="button" disabled={!c.exists || c.published} onClick={() => act(() => api.checkpoints.deploy(c.checkpoint_id))}>Deploy</button>
                  <button type="button" disabled={!c.exists || !canRestore} title={canRestore ? '' : 'Stop the job first'}
                    onClick={() => act(() => api.checkpoints.restore(c.checkpoint_id))}>Continue from here</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
