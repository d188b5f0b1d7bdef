// Wizard step 1: the model. Registered models and the Hugging Face cache as cards; a folder can
// be added by path (or the native dialog in the desktop app). The chosen model's family, size
// and memory estimate per method are shown against this machine's memory.
import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, type ModelValidation, type ModelView } from '../../api';
import { ErrorNote, FitBadge, Spinner } from '../../components/ui';
import { isDesktop, pickFolder } from '../../lib/desktop';
import { bytes, params } from '../../lib/format';

export type ModelChoice = { model: ModelView; validation: ModelValidation | null };

export function ModelStep({ value, availableGb, onChange }: { value: ModelChoice | null; availableGb: number | null; onChange: (c: ModelChoice | null) => void }) {
  const [models, setModels] = useState<ModelView[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [path, setPath] = useState('');
  const [addError, setAddError] = useState<unknown>(null);
  const [checking, setChecking] = useState(false);
  const [checkError, setCheckError] = useState<unknown>(null);

  const load = () => api.models.list().then((r) => setModels(r.models), setError);
  useEffect(() => { void load(); }, []);

  const choose = async (m: ModelView) => {
    onChange({ model: m, validation: null });
    setChecking(true); setCheckError(null);
    try {
      const v = await api.models.validate({ ...(m.model_id ? { model_id: m.model_id } : { path: m.path }), available_memory_gb: availableGb ?? undefined });
      onChange({ model: m, validation: v });
    } catch (e) { setCheckError(e); } finally { setChecking(false); }
  };
  const add = async (p: string) => {
    setAddError(null);
    try { const m = await api.models.register(p); setPath(''); await load(); await choose(m); } catch (e) { setAddError(e); }
  };
  const browse = async () => { const p = await pickFolder(); if (p) { setPath(p); await add(p); } };
  const v = value?.validation;
  const pathError = addError instanceof ApiError ? addError.field('path') ?? addError.message : addError ? String(addError) : undefined;

  return (
    <div class="stack">
      <ErrorNote error={error} title="Could not list the models." />
      {!models ? <Spinner /> : models.length === 0 ? <p class="muted">No models yet: add a Hugging Face model folder below.</p> : (
        <div class="grid cards" role="radiogroup" aria-label="Model">
          {models.map((m) => (
            <label class="choice" key={m.path}>
              <input type="radio" name="model" checked={value?.model.path === m.path} onChange={() => choose(m)} />
              <div class="card">
                <h3><span>{m.name}</span><span class="badge neutral">{m.source === 'hf-cache' ? 'HF cache' : 'added'}</span></h3>
                <div class="muted small">{m.family ?? 'unknown family'} · {params(m.parameters)} parameters</div>
                {m.problem && <div class="field-error">{m.problem}</div>}
              </div>
            </label>
          ))}
        </div>
      )}
      <div class="card">
        <div class="field">
          <label for="model-path">Add a model folder</label>
          <div class="row">
            <input id="model-path" style={{ flex: 1 }} placeholder="/path/to/hf-model (config.json, *.safetensors, tokenizer.json)" value={path}
              aria-invalid={pathError ? 'true' : 'false'} onInput={(e) => setPath((e.target as HTMLInputElement).value)}
              onKeyDown={(e) => { if (e.key === 'Enter' && path.trim()) { e.preventDefault(); void add(path.trim()); } }} />
            {isDesktop() && <button type="button" onClick={browse}>Browse…</button>}
            <button type="button" disabled={!path.trim()} onClick={() => add(path.trim())}>Add</button>
          </div>
          {pathError && <span class="field-error" role="alert">{pathError}</span>}
        </div>
      </div>
      {checking && <Spinner label="Checking the model" />}
      <ErrorNote error={checkError} title="This model cannot be used:" />
      {v && (
        <section class="card" aria-labelledby="model-facts" data-testid="model-facts">
          <h2 id="model-facts">{value!.model.name}</h2>
          <dl class="kv">
            <dt>Family</dt><dd>{v.family}{v.architectures.length ? ` (${v.architectures.join(', ')})` : ''}</dd>
            <dt>Parameters</dt><dd>{params(v.parameters)}</dd>
            <dt>Layers</dt><dd>{v.dims.layers} × hidden {v.dims.hidden}, {v.dims.heads} heads ({v.dims.kv_heads} KV)</dd>
            <dt>Chat template</dt><dd>{v.has_chat_template ? 'yes' : 'no'}</dd>
          </dl>
          <h3 style={{ marginTop: 12 }}>Memory estimate</h3>
          <p class="muted small">Batch {v.memory.batch_size}, {v.memory.seq_len} tokens, {v.memory.dtype}, rank {v.memory.lora_r}{availableGb ? `, against ${availableGb.toFixed(0)} GB here` : ''}.</p>
          <table>
            <thead><tr><th>Method</th><th class="num">Total</th><th class="num">Weights</th><th class="num">Trainable params</th><th>Here</th></tr></thead>
            <tbody>
              {(['lora', 'qlora', 'full'] as const).map((k) => (
                <tr key={k}><td>{k === 'qlora' ? 'QLoRA' : k === 'lora' ? 'LoRA' : 'Full'}</td><td class="num">{bytes(v.memory[k].total)}</td>
                  <td class="num">{bytes(v.memory[k].weights)}</td><td class="num">{params(v.memory[k].trainable_params)}</td><td><FitBadge fit={v.memory[k].fit} /></td></tr>
              ))}
            </tbody>
          </table>
        </section>
      )}
    </div>
  );
}
