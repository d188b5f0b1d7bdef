// Presets: the built-in and saved presets; edit one with inline validation and save it as a new
// preset (built-in ones are never overwritten); delete saved ones.
import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, type FieldError, type Preset, type TrainConfig } from '../api';
import { ConfigEditor } from '../components/ConfigEditor';
import { Badge, ErrorNote, Notice, Spinner } from '../components/ui';

const PATHS = ['model.path', 'data.path'];

export function Presets() {
  const [list, setList] = useState<Preset[] | null>(null);
  const [sel, setSel] = useState<Preset | null>(null);
  const [config, setConfig] = useState<TrainConfig>({});
  const [name, setName] = useState('');
  const [description, setDescription] = useState('');
  const [errors, setErrors] = useState<FieldError[]>([]);
  const [saveError, setSaveError] = useState<unknown>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const [loadError, setLoadError] = useState<unknown>(null);

  const load = (selectId?: string) => api.presets.list().then((r) => {
    setList(r.templates);
    const pick = r.templates.find((p) => p.id === selectId) ?? r.templates[0];
    if (pick) choose(pick);
  }, setLoadError);
  useEffect(() => { void load(); }, []);

  function choose(p: Preset) {
    setSel(p); setConfig(p.config); setSaveError(null); setSaved(null);
    setName(p.source === 'builtin' ? `${p.name} (copy)` : p.name);
    setDescription(p.description ?? '');
  }

  const save = async () => {
    setSaveError(null); setSaved(null);
    try {
      const p = await api.presets.save({ name, description, hardware: sel?.hardware ?? '', min_memory_gb: sel?.min_memory_gb, config });
      setSaved(p.name);
      await load(p.id);
    } catch (e) { setSaveError(e); }
  };
  const remove = async (p: Preset) => {
    try { await api.presets.remove(p.id); await load(); } catch (e) { setSaveError(e); }
  };
  const nameError = saveError instanceof ApiError ? saveError.field('name') : undefined;

  return (
    <div>
      <div class="page-head"><h1>Presets</h1></div>
      <ErrorNote error={loadError} title="Could not load the presets." />
      {!list ? <Spinner /> : (
        <div class="grid" style={{ gridTemplateColumns: '280px 1fr', alignItems: 'start' }}>
          <nav class="card stack" aria-label="Presets" style={{ padding: 8 }}>
            {list.map((p) => (
              <button key={p.id} type="button" class={sel?.id === p.id ? 'primary' : ''} style={{ width: '100%', justifyContent: 'space-between', marginTop: 4 }}
                aria-pressed={sel?.id === p.id} onClick={() => choose(p)}>
                <span style={{ textAlign: 'left' }}>{p.name}</span>{p.source === 'user' && <Badge kind="neutral">saved</Badge>}
              </button>
            ))}
          </nav>
          {sel && (
            <section class="card" aria-labelledby="preset-title">
              <h2 id="preset-title">{sel.name}</h2>
              <p class="muted">{sel.description} <br /><span class="small">For: {sel.hardware}</span></p>
              <div class="form-grid" style={{ marginBottom: 16 }}>
                <div class="field">
                  <label for="p-name">Name of the new preset</label>
                  <input id="p-name" value={name} aria-invalid={nameError ? 'true' : 'false'} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
                  {nameError && <span class="field-error" data-testid="error-name">{nameError}</span>}
                </div>
                <div class="field" style={{ gridColumn: 'span 2' }}>
                  <label for="p-desc">Description</label>
                  <input id="p-desc" value={description} onInput={(e) => setDescription((e.target as HTMLInputElement).value)} />
                </div>
              </div>
              <ConfigEditor key={sel.id} config={config} onChange={setConfig} onValidated={setErrors} ignore={PATHS}
                extraErrors={saveError instanceof ApiError ? saveError.fields.filter((f) => f.key.startsWith('config.')).map((f) => ({ key: f.key.slice(7), message: f.message })) : []} />
              {saveError != null && !nameError && <ErrorNote error={saveError} title="Not saved." />}
              {saved && <Notice>Saved “{saved}”.</Notice>}
              <div class="row end">
                {sel.source === 'user' && <button type="button" class="danger" onClick={() => remove(sel)}>Delete</button>}
                <button type="button" class="primary" disabled={errors.length > 0 || !name.trim()} onClick={save}>Save as new preset</button>
              </div>
            </section>
          )}
        </div>
      )}
    </div>
  );
}
