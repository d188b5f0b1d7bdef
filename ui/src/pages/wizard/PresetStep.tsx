// Wizard step 2: a preset. Each card shows what it is for and whether it fits this machine
// with the chosen model (the memory estimate for the preset's method and settings).
import { useEffect, useState } from 'preact/hooks';
import { api, type Preset } from '../../api';
import { ErrorNote, FitBadge, Spinner } from '../../components/ui';
import { bytes } from '../../lib/format';
import type { ModelChoice } from './ModelStep';

type Fit = { fit?: string | null; total: number };

export function PresetStep({ model, value, memory, onChange }: {
  model: ModelChoice; value: Preset | null; memory: { gpuGb: number | null; ramGb: number | null }; onChange: (p: Preset) => void;
}) {
  const [presets, setPresets] = useState<Preset[] | null>(null);
  const [fits, setFits] = useState<Record<string, Fit>>({});
  const [error, setError] = useState<unknown>(null);

  useEffect(() => { api.presets.list().then((r) => setPresets(r.templates), setError); }, []);
  useEffect(() => {
    if (!presets) return;
    const ref = model.model.model_id ? { model_id: model.model.model_id } : { path: model.model.path };
    presets.forEach(async (p) => {
      const c = p.config;
      const device = String(c.model?.device ?? 'auto');
      const onCpu = device === 'cpu' || (device === 'auto' && !memory.gpuGb);
      const dtype = String(c.model?.dtype ?? 'auto');
      try {
        const v = await api.models.validate({
          ...ref,
          batch_size: Number(c.train?.batch_size ?? 4),
          seq_len: Number(c.data?.max_len ?? 512),
          dtype: dtype === 'auto' ? (onCpu ? 'f32' : 'bf16') : dtype,
          lora_r: Number(c.lora?.r ?? 16),
          available_memory_gb: (onCpu ? memory.ramGb : memory.gpuGb) ?? undefined,
        });
        const kind = String(c.method?.kind ?? 'lora') as 'lora' | 'qlora' | 'full';
        setFits((f) => ({ ...f, [p.id]: { fit: v.memory[kind].fit, total: v.memory[kind].total } }));
      } catch { /* the model step already reported why */ }
    });
  }, [presets, model.model.path]);

  return (
    <div>
      <ErrorNote error={error} title="Could not list the presets." />
      {!presets ? <Spinner /> : (
        <div class="grid cards" role="radiogroup" aria-label="Preset">
          {presets.map((p) => (
            <label class="choice" key={p.id}>
              <input type="radio" name="preset" value={p.id} checked={value?.id === p.id} onChange={() => onChange(p)} />
              <div class="card" data-testid={`preset-${p.id}`}>
                <h3><span>{p.name}</span><FitBadge fit={fits[p.id]?.fit} /></h3>
                <p class="small">{p.description}</p>
                <div class="muted small">{String(p.config.method?.kind ?? '').toUpperCase()} · {p.hardware}</div>
                {fits[p.id] && <div class="muted small">Needs about {bytes(fits[p.id].total)}</div>}
              </div>
            </label>
          ))}
        </div>
      )}
    </div>
  );
}
