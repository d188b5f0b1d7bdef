// The full training config, editable as a form or as TOML (both edit the same object), with
// every problem the studio finds shown next to its field. Used by the wizard's review step and
// the preset editor; validation calls POST /configs/validate a moment after each change.
import { useEffect, useState } from 'preact/hooks';
import { api, type FieldError, type TrainConfig } from '../api';
import { FIELDS, FORM_KEYS, type FieldDef, fromToml, getKey, setKey, toToml } from '../lib/config';

type Props = {
  config: TrainConfig;
  onChange: (c: TrainConfig) => void;
  /** Called with the errors of the latest validation (empty when valid). */
  onValidated?: (errors: FieldError[]) => void;
  /** Keys whose "not set" warnings do not matter here (a preset has no model or dataset). */
  ignore?: string[];
  extraErrors?: FieldError[];
};

function Input({ def, value, error, onValue }: { def: FieldDef; value: unknown; error?: string; onValue: (v: unknown) => void }) {
  const id = `f-${def.key.replace('.', '-')}`;
  const describedBy = [def.help && `${id}-help`, error && `${id}-err`].filter(Boolean).join(' ') || undefined;
  const common = { id, 'aria-invalid': (error ? 'true' : 'false') as 'true' | 'false', 'aria-describedby': describedBy, name: def.key };
  let control;
  if (def.kind === 'select') {
    control = (
      <select {...common} value={String(value ?? '')} onChange={(e) => onValue((e.target as HTMLSelectElement).value)}>
        {def.options!.map((o) => <option key={o} value={o}>{o}</option>)}
      </select>
    );
  } else if (def.kind === 'bool') {
    control = <input {...common} type="checkbox" checked={!!value} onChange={(e) => onValue((e.target as HTMLInputElement).checked)} />;
  } else {
    const numeric = def.kind !== 'text';
    control = (
      <input {...common} type={numeric ? 'number' : 'text'} step={def.step ?? (def.kind === 'int' ? '1' : undefined)}
        value={value == null ? '' : String(value)}
        onInput={(e) => {
          const raw = (e.target as HTMLInputElement).value;
          if (!numeric) return onValue(raw);
          const n = def.kind === 'int' ? parseInt(raw, 10) : parseFloat(raw);
          onValue(raw === '' || Number.isNaN(n) ? raw : n);
        }} />
    );
  }
  return (
    <div class="field">
      <label for={id}>{def.label}</label>
      {control}
      {def.help && !error && <span class="help" id={`${id}-help`}>{def.help}</span>}
      {error && <span class="field-error" id={`${id}-err`} data-testid={`error-${def.key}`}>{error}</span>}
    </div>
  );
}

export function ConfigEditor({ config, onChange, onValidated, ignore = [], extraErrors = [] }: Props) {
  const [tab, setTab] = useState<'form' | 'toml'>('form');
  const [tomlText, setTomlText] = useState(() => toToml(config));
  const [tomlError, setTomlError] = useState<string | undefined>();
  const [errors, setErrors] = useState<FieldError[]>([]);
  const [checkError, setCheckError] = useState<string | undefined>();

  useEffect(() => {
    const t = setTimeout(async () => {
      try {
        const v = await api.configs.validate(config);
        const errs = v.errors.filter((e) => !ignore.includes(e.key));
        setErrors(errs); setCheckError(undefined);
        onValidated?.(errs);
      } catch (e) {
        setCheckError((e as Error).message);
      }
    }, 250);
    return () => clearTimeout(t);
  }, [JSON.stringify(config)]);

  const all = [...errors, ...extraErrors];
  const errorFor = (key: string) => all.find((e) => e.key === key)?.message;
  const others = all.filter((e) => !FORM_KEYS.has(e.key));

  const switchTo = (t: 'form' | 'toml') => {
    if (t === 'toml') setTomlText(toToml(config));
    setTab(t);
  };

  return (
    <div>
      <div class="tabs" role="tablist">
        <button role="tab" type="button" aria-selected={tab === 'form'} onClick={() => switchTo('form')}>Form</button>
        <button role="tab" type="button" aria-selected={tab === 'toml'} onClick={() => switchTo('toml')}>TOML</button>
      </div>
      {checkError && <div class="notice error" role="alert">Could not check the settings: {checkError}</div>}
      {others.length > 0 && (
        <div class="notice error" role="alert" data-testid="config-errors">
          {others.map((e) => <div key={e.key}><code>{e.key}</code>: {e.message}</div>)}
        </div>
      )}
      {tab === 'form' ? (
        FIELDS.map((g) => (
          <fieldset key={g.title}>
            <legend>{g.title}</legend>
            <div class="form-grid">
              {g.fields.map((f) => (
                <Input key={f.key} def={f} value={getKey(config, f.key)} error={errorFor(f.key)}
                  onValue={(v) => onChange(setKey(config, f.key, v))} />
              ))}
            </div>
          </fieldset>
        ))
      ) : (
        <div class="field">
          <label for="toml-text">Config as TOML</label>
          <textarea id="toml-text" spellcheck={false} value={tomlText} aria-invalid={tomlError ? 'true' : 'false'}
            onInput={(e) => {
              const text = (e.target as HTMLTextAreaElement).value;
              setTomlText(text);
              const r = fromToml(text);
              setTomlError(r.error);
              if (r.config) onChange(r.config);
            }} />
          {tomlError && <span class="field-error" data-testid="toml-error">{tomlError}</span>}
          {!tomlError && all.length > 0 && (
            <span class="field-error">{all.map((e) => `${e.key}: ${e.message}`).join('; ')}</span>
          )}
        </div>
      )}
    </div>
  );
}
