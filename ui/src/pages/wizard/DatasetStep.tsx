// Wizard step 3: the dataset. Upload a file (or drop it, or choose it with the native dialog
// in the desktop app) or pick one already known. The chosen file is checked record by record
// with the model's tokenizer: bad records are listed by line, and a preview shows each example
// as training sees it, the tokens the loss covers highlighted and the masked prompt dimmed.
import { useEffect, useState } from 'preact/hooks';
import { api, type DatasetDetail, type DatasetValidation, type DatasetView } from '../../api';
import { ErrorNote, Notice, Spinner } from '../../components/ui';
import { isDesktop, pickDataset } from '../../lib/desktop';
import { bytes } from '../../lib/format';

export type DatasetChoice = { dataset: DatasetView; valid: boolean };

function Preview({ detail }: { detail: DatasetDetail }) {
  const r = detail.report;
  return (
    <section class="card" aria-labelledby="preview-title" data-testid="dataset-preview">
      <h2 id="preview-title">Preview</h2>
      {r && <p class="muted small">{r.format ?? 'auto'} format · {r.rows} records · {r.examples} examples ({r.train_examples} train, {r.eval_examples} held out) · {r.total_tokens} tokens{r.truncated ? ` · ${r.truncated} truncated` : ''}{r.skipped ? ` · ${r.skipped} skipped` : ''}</p>}
      <p class="small"><span class="tokens" style={{ padding: '1px 6px' }}><span class="learned">learned</span> <span class="masked">masked prompt</span></span></p>
      {detail.preview.map((row) => (
        <div key={row.line} style={{ marginBottom: 12 }}>
          <div class="muted small">Line {row.line}{row.truncated ? ' (truncated)' : ''}{row.skipped ? ` — skipped: ${row.skipped}` : ''}</div>
          <div class="tokens">{row.tokens.map((t, i) => <span key={i} class={t.learned ? 'learned' : 'masked'}>{t.text}</span>)}</div>
        </div>
      ))}
      {detail.note && <p class="muted">{detail.note}</p>}
    </section>
  );
}

export function DatasetStep({ modelPath, value, onChange }: { modelPath: string; value: DatasetChoice | null; onChange: (c: DatasetChoice | null) => void }) {
  const [list, setList] = useState<DatasetView[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [uploadError, setUploadError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [over, setOver] = useState(false);
  const [detail, setDetail] = useState<DatasetDetail | null>(null);
  const [check, setCheck] = useState<DatasetValidation | null>(null);
  const [checkError, setCheckError] = useState<unknown>(null);

  const load = () => api.datasets.list().then((r) => setList(r.datasets), setError);
  useEffect(() => { void load(); }, []);
  useEffect(() => { if (value) void inspect(value.dataset); }, [value?.dataset.dataset_id, modelPath]);

  async function inspect(d: DatasetView) {
    setDetail(null); setCheck(null); setCheckError(null);
    const [v, det] = await Promise.allSettled([api.datasets.validate(d.dataset_id, modelPath), api.datasets.get(d.dataset_id, modelPath, 3)]);
    if (v.status === 'fulfilled') { setCheck(v.value); onChange({ dataset: d, valid: v.value.valid }); } else setCheckError(v.reason);
    if (det.status === 'fulfilled') setDetail(det.value); else if (v.status === 'fulfilled' && v.value.valid) setCheckError(det.reason);
  }
  const added = async (p: Promise<DatasetView>) => {
    setBusy(true); setUploadError(null);
    try { const d = await p; await load(); onChange({ dataset: d, valid: false }); } catch (e) { setUploadError(e); } finally { setBusy(false); }
  };
  const upload = (files: FileList | null) => { if (files?.[0]) void added(api.datasets.upload(files[0])); };
  const browse = async () => { const p = await pickDataset(); if (p) void added(api.datasets.register(p)); };

  return (
    <div class="stack">
      <div class={`dropzone${over ? ' over' : ''}`} onDragOver={(e) => { e.preventDefault(); setOver(true); }} onDragLeave={() => setOver(false)}
        onDrop={(e) => { e.preventDefault(); setOver(false); upload(e.dataTransfer?.files ?? null); }}>
        <p>Drop a <code>.jsonl</code> or <code>.json</code> file here (chat, alpaca, text or tokens records), or</p>
        <div class="row" style={{ justifyContent: 'center' }}>
          <label class="button" for="ds-file">Upload a file…</label>
          <input id="ds-file" class="sr-only" type="file" accept=".jsonl,.json" onChange={(e) => upload((e.target as HTMLInputElement).files)} />
          {isDesktop() && <button type="button" onClick={browse}>Use a file on this computer…</button>}
        </div>
        {busy && <Spinner label="Uploading" />}
      </div>
      <ErrorNote error={uploadError} title="Not uploaded." />
      <ErrorNote error={error} />
      {list && list.length > 0 && (
        <div class="grid cards" role="radiogroup" aria-label="Dataset">
          {list.map((d) => (
            <label class="choice" key={d.dataset_id}>
              <input type="radio" name="dataset" checked={value?.dataset.dataset_id === d.dataset_id} onChange={() => onChange({ dataset: d, valid: false })} />
              <div class="card"><h3><span>{d.name}</span></h3><div class="muted small">{bytes(d.size_bytes)} · {d.uploaded ? 'uploaded' : 'on disk'}</div></div>
            </label>
          ))}
        </div>
      )}
      {value && !check && !checkError && <Spinner label="Checking every record" />}
      <ErrorNote error={checkError} title="The dataset could not be read:" />
      {check && !check.valid && (
        <div class="notice error" role="alert" data-testid="dataset-errors">
          <strong>{check.errors.length === 1 ? 'One record needs fixing' : `${check.errors.length} records need fixing`} in {value?.dataset.name}:</strong>
          <ul>{check.errors.map((e, i) => <li key={i}>Line {e.line}{e.field ? ` (${e.field})` : ''}: {e.message}</li>)}</ul>
        </div>
      )}
      {check?.valid && <Notice>Every record is valid{check.checked_with_tokenizer ? ' and fits the model’s chat template' : ''}.</Notice>}
      {detail && <Preview detail={detail} />}
    </div>
  );
}
