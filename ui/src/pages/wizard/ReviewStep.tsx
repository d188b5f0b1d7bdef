// Wizard step 4: the whole config (form or TOML) with inline validation, a job name, and Start.
import { useState } from 'preact/hooks';
import { api, ApiError, type FieldError, type TrainConfig } from '../../api';
import { ConfigEditor } from '../../components/ConfigEditor';
import { ErrorNote } from '../../components/ui';
import { navigate } from '../../lib/router';

export function ReviewStep({ config, onChange, name, onName, datasetId, onBack }: {
  config: TrainConfig; onChange: (c: TrainConfig) => void; name: string; onName: (n: string) => void; datasetId?: string; onBack: () => void;
}) {
  const [errors, setErrors] = useState<FieldError[]>([]);
  const [startError, setStartError] = useState<unknown>(null);
  const [starting, setStarting] = useState(false);
  const start = async () => {
    setStarting(true); setStartError(null);
    try {
      const r = await api.jobs.create({ ...config, job: { name: name.trim() || undefined, dataset_id: datasetId } });
      navigate(`/jobs/${r.job_id}`);
    } catch (e) { setStartError(e); } finally { setStarting(false); }
  };
  const serverFields = startError instanceof ApiError ? startError.fields : [];
  return (
    <div>
      <div class="field" style={{ maxWidth: 420, marginBottom: 16 }}>
        <label for="job-name">Job name</label>
        <input id="job-name" value={name} placeholder="e.g. support bot v1" onInput={(e) => onName((e.target as HTMLInputElement).value)} />
      </div>
      <ConfigEditor config={config} onChange={onChange} onValidated={setErrors} extraErrors={serverFields} />
      <ErrorNote error={startError} title="The job was not started." />
      <div class="row between">
        <button type="button" onClick={onBack}>Back</button>
        <button type="button" class="primary" onClick={start} disabled={starting || errors.length > 0} data-testid="start">
          {starting ? 'Starting…' : 'Start training'}
        </button>
      </div>
    </div>
  );
}
