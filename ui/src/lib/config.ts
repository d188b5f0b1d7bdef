// Training configs in the UI: reading and setting `section.key` values, TOML both ways, and the
// fields the forms show (the wizard's review and the preset editor share them).
import { parse, stringify } from 'smol-toml';
import type { TrainConfig } from '../api';

export const getKey = (c: TrainConfig, key: string): unknown => {
  const [s, k] = key.split('.');
  return c[s]?.[k];
};
export const setKey = (c: TrainConfig, key: string, value: unknown): TrainConfig => {
  const [s, k] = key.split('.');
  return { ...c, [s]: { ...(c[s] ?? {}), [k]: value } };
};

/** Drops null values (TOML has none) and empty sections. */
function clean(c: TrainConfig): TrainConfig {
  const out: TrainConfig = {};
  for (const [s, sec] of Object.entries(c)) {
    if (!sec || typeof sec !== 'object') continue;
    const kept = Object.fromEntries(Object.entries(sec).filter(([, v]) => v !== null && v !== undefined));
    if (Object.keys(kept).length) out[s] = kept;
  }
  return out;
}
export const toToml = (c: TrainConfig): string => stringify(clean(c));
/** The config from TOML text, or the parse error as a sentence with its line. */
export function fromToml(text: string): { config?: TrainConfig; error?: string } {
  try {
    return { config: parse(text) as TrainConfig };
  } catch (e) {
    const err = e as { message?: string; line?: number };
    return { error: err.line ? `line ${err.line}: ${String(err.message).split('\n')[0]}` : String(err.message ?? e) };
  }
}

export type FieldDef = {
  key: string;
  label: string;
  kind: 'number' | 'int' | 'select' | 'bool' | 'text';
  options?: string[];
  help?: string;
  step?: string;
};

export const FIELDS: { title: string; fields: FieldDef[] }[] = [
  { title: 'Method', fields: [
    { key: 'method.kind', label: 'Method', kind: 'select', options: ['lora', 'qlora', 'full'] },
    { key: 'model.device', label: 'Device', kind: 'text', help: 'auto, cpu, cuda, cuda:N, metal' },
    { key: 'model.dtype', label: 'Precision', kind: 'select', options: ['auto', 'f32', 'bf16', 'f16'] },
    { key: 'model.frozen_dtype', label: 'Frozen base (CPU, f32)', kind: 'select', options: ['auto', 'compute', 'stored'], help: 'stored: a bf16/f16 base in half the memory, same results; auto: stored where this CPU multiplies it as fast as an f32 copy' },
  ] },
  { title: 'Training', fields: [
    { key: 'train.lr', label: 'Learning rate', kind: 'number', step: 'any', help: 'Peak rate, (0, 1]' },
    { key: 'train.scheduler', label: 'Schedule', kind: 'select', options: ['constant', 'linear', 'cosine'] },
    { key: 'train.warmup_steps', label: 'Warm-up steps', kind: 'int' },
    { key: 'train.epochs', label: 'Epochs', kind: 'int' },
    { key: 'train.max_steps', label: 'Max steps', kind: 'int', help: '0: epochs decide' },
    { key: 'train.batch_size', label: 'Batch size', kind: 'int' },
    { key: 'train.grad_accum', label: 'Gradient accumulation', kind: 'int' },
    { key: 'train.eval_every_steps', label: 'Evaluate every (steps)', kind: 'int' },
  ] },
  { title: 'LoRA', fields: [
    { key: 'lora.r', label: 'Rank (r)', kind: 'int' },
    { key: 'lora.alpha', label: 'Alpha', kind: 'number', step: 'any' },
    { key: 'lora.dropout', label: 'Dropout', kind: 'number', step: 'any' },
  ] },
  { title: 'Data', fields: [
    { key: 'data.max_len', label: 'Max tokens per example', kind: 'int' },
    { key: 'data.eval_fraction', label: 'Held-out fraction', kind: 'number', step: 'any', help: '0 to 0.5' },
    { key: 'data.format', label: 'Format', kind: 'select', options: ['auto', 'alpaca', 'chat', 'text', 'tokens'] },
  ] },
  { title: 'Checkpoints', fields: [
    { key: 'checkpoint.every_steps', label: 'Checkpoint every (steps)', kind: 'int', help: '0: only at the end' },
    { key: 'checkpoint.keep_last', label: 'Keep last', kind: 'int' },
  ] },
];
export const FORM_KEYS = new Set(FIELDS.flatMap((g) => g.fields.map((f) => f.key)));
