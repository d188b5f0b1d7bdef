// The new-job wizard: model → preset → dataset → review, then Start. With `?demo=1` it sets up
// the demo (POST /demo) and opens on the review step with everything chosen.
import { useEffect, useState } from 'preact/hooks';
import { api, type Preset, type TrainConfig } from '../../api';
import { ErrorNote, Spinner } from '../../components/ui';
import { baseName } from '../../lib/format';
import { DatasetStep, type DatasetChoice } from './DatasetStep';
import { ModelStep, type ModelChoice } from './ModelStep';
import { PresetStep } from './PresetStep';
import { ReviewStep } from './ReviewStep';

const STEPS = ['Model', 'Preset', 'Dataset', 'Review'];
const GB = 1e9;

export function Wizard({ demo }: { demo: boolean }) {
  const [step, setStep] = useState(0);
  const [model, setModel] = useState<ModelChoice | null>(null);
  const [preset, setPreset] = useState<Preset | null>(null);
  const [dataset, setDataset] = useState<DatasetChoice | null>(null);
  const [config, setConfig] = useState<TrainConfig>({});
  const [name, setName] = useState('');
  const [memory, setMemory] = useState<{ gpuGb: number | null; ramGb: number | null }>({ gpuGb: null, ramGb: null });
  const [demoState, setDemoState] = useState<'idle' | 'busy' | 'done'>(demo ? 'busy' : 'idle');
  const [demoError, setDemoError] = useState<unknown>(null);

  useEffect(() => {
    api.system().then((s) => setMemory({
      gpuGb: s.gpus[0]?.memory_bytes ? s.gpus[0].memory_bytes / GB : null,
      ramGb: s.memory_total_bytes ? s.memory_total_bytes / GB : null,
    }), () => {});
  }, []);

  useEffect(() => {
    if (!demo) return;
    (async () => {
      try {
        const setup = await api.demo();
        const [models, presets, datasets] = await Promise.all([api.models.list(), api.presets.list(), api.datasets.list()]);
        const m = models.models.find((x) => x.model_id === setup.model_id);
        const p = presets.templates.find((x) => x.id === setup.preset_id);
        const d = datasets.datasets.find((x) => x.dataset_id === setup.dataset_id);
        if (!m || !p || !d) throw new Error('The demo was set up, but its model, preset or dataset is missing from the lists.');
        setModel({ model: m, validation: null });
        setPreset(p);
        setDataset({ dataset: d, valid: true });
        setConfig(withPaths(p.config, m.path, d.path));
        setName('Demo: JSON answers');
        setStep(3);
        setDemoState('done');
      } catch (e) { setDemoError(e); setDemoState('idle'); }
    })();
  }, [demo]);

  const available = memory.gpuGb ?? memory.ramGb;
  const canNext = [!!model?.validation || (!!model && !model.model.problem && demoState === 'done'), !!preset, !!dataset?.valid, false][step];
  const next = () => {
    if (step === 2 && preset && model && dataset) {
      setConfig(withPaths(preset.config, model.model.path, dataset.dataset.path));
      if (!name) setName(`${preset.name.split(':')[0]} on ${baseName(dataset.dataset.name)}`);
    }
    setStep(step + 1);
  };

  return (
    <div>
      <div class="page-head"><h1>New job</h1></div>
      <ol class="steps" aria-label="Steps">
        {STEPS.map((s, i) => <li key={s} aria-current={i === step ? 'step' : undefined} class={i < step ? 'done' : ''}>{i + 1}. {s}</li>)}
      </ol>
      {demoState === 'busy' && <div class="card"><Spinner label="Setting up the demo (the first time, the model is downloaded)" /></div>}
      <ErrorNote error={demoError} title="The demo could not be set up." />
      {demoState !== 'busy' && (
        <section class="card" aria-label={STEPS[step]}>
          {step === 0 && <ModelStep value={model} availableGb={available} onChange={(m) => { setModel(m); setDataset(null); }} />}
          {step === 1 && model && <PresetStep model={model} value={preset} memory={memory} onChange={setPreset} />}
          {step === 2 && model && <DatasetStep modelPath={model.model.path} value={dataset} onChange={setDataset} />}
          {step === 3 && <ReviewStep config={config} onChange={setConfig} name={name} onName={setName} datasetId={dataset?.dataset.dataset_id} onBack={() => setStep(2)} />}
          {step < 3 && (
            <div class="row between" style={{ marginTop: 16 }}>
              <button type="button" onClick={() => setStep(step - 1)} disabled={step === 0}>Back</button>
              <button type="button" class="primary" onClick={next} disabled={!canNext}>Next: {STEPS[step + 1]}</button>
            </div>
          )}
        </section>
      )}
    </div>
  );
}

function withPaths(c: TrainConfig, model: string, data: string): TrainConfig {
  return { ...c, model: { ...(c.model ?? {}), path: model }, data: { ...(c.data ?? {}), path: data } };
}
