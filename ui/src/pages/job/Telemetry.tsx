// The machine while a job trains, beside the loss chart: memory over time (the GPU's used and
// total memory when the job runs on one, else the process's resident memory and the system's
// memory in use, with its total once it matters), the newest CPU and GPU readings, or the
// reason GPU telemetry is unavailable.
// Jobs with no samples (older ones) show the memory the step events recorded instead.
import { useMemo } from 'preact/hooks';
import type { GpuTelemetry, MetricPoint, TelemetrySample } from '../../api';
import { Chart, chartColors, type SeriesDef } from '../../components/Chart';
import { Meter } from '../../components/ui';
import { ago, bytes, num, percent } from '../../lib/format';

/** The reason in `unavailable: <why>`, or the whole status when it is not in that form. */
export const unavailableWhy = (status: string) => status.replace(/^unavailable:\s*/i, '');

const compactBytes = (v: number) => bytes(v).replace(' ', '');

export function GpuReadout({ gpu }: { gpu: GpuTelemetry }) {
  const power = gpu.power_w != null ? `${num(gpu.power_w, 3)}${gpu.power_limit_w != null ? ` / ${num(gpu.power_limit_w, 3)}` : ''} W` : null;
  return (
    <div class="gpu" data-testid="gpu-readout">
      <div class="row between small">
        <strong>GPU {gpu.index} · {gpu.name}</strong>
        {gpu.in_use && <span class="badge running">in use</span>}
      </div>
      <Meter used={gpu.memory_used_bytes} total={gpu.memory_total_bytes} label={`GPU ${gpu.index} memory`} />
      <div class="readouts small muted">
        <span>{bytes(gpu.memory_used_bytes)} / {bytes(gpu.memory_total_bytes)}</span>
        {gpu.process_memory_bytes != null && <span>job {bytes(gpu.process_memory_bytes)}</span>}
        {gpu.utilization_percent != null && <span>util {percent(gpu.utilization_percent)}</span>}
        {gpu.temperature_c != null && <span>{num(gpu.temperature_c, 3)} °C</span>}
        {power && <span>{power}</span>}
      </div>
    </div>
  );
}

/** The GPU readings of a sample, or the line that says why there are none. */
export function GpuList({ sample }: { sample: TelemetrySample }) {
  if (!sample.gpus.length) {
    return <p class="muted small gpu-status" data-testid="gpu-status">GPU telemetry unavailable: {unavailableWhy(sample.gpu_status) || 'no GPU found'}</p>;
  }
  return <div class="stack tight">{sample.gpus.map((g) => <GpuReadout key={g.index} gpu={g} />)}</div>;
}

function memoryColumns(samples: TelemetrySample[]) {
  const xs = samples.map((s) => s.ts_ms / 1000);
  const onGpu = samples.some((s) => s.gpus.some((g) => g.in_use && g.memory_used_bytes != null));
  const colors = chartColors();
  if (onGpu) {
    const sum = (s: TelemetrySample, f: (g: GpuTelemetry) => number | null | undefined) => {
      const vals = s.gpus.filter((g) => g.in_use).map(f).filter((v): v is number => v != null);
      return vals.length ? vals.reduce((a, b) => a + b, 0) : null;
    };
    const series: SeriesDef[] = [
      { label: 'used', color: colors[1], fmt: bytes },
      { label: 'total', color: colors[1], dash: [5, 4], width: 1.2, fmt: bytes },
    ];
    const data = [xs, samples.map((s) => sum(s, (g) => g.memory_used_bytes)), samples.map((s) => sum(s, (g) => g.memory_total_bytes))];
    if (samples.some((s) => s.gpus.some((g) => g.in_use && g.process_memory_bytes != null))) {
      series.push({ label: 'this job', color: colors[0], fmt: bytes });
      data.push(samples.map((s) => sum(s, (g) => g.process_memory_bytes)));
    }
    return { onGpu, series, data };
  }
  // The system's total is drawn once memory is half used: below that it would squash the
  // curves into the bottom of the chart, and the meter under it shows the headroom.
  const withTotal = samples.some((s) => s.system_memory_used_bytes >= 0.5 * s.system_memory_total_bytes);
  const series: SeriesDef[] = [{ label: 'process', color: colors[0], fmt: bytes }, { label: 'system', color: colors[1], fmt: bytes }];
  const data = [xs, samples.map((s) => s.process_rss_bytes), samples.map((s) => s.system_memory_used_bytes)];
  if (withTotal) {
    series.push({ label: 'total', color: colors[1], dash: [5, 4], width: 1.2, fmt: bytes });
    data.push(samples.map((s) => s.system_memory_total_bytes));
  }
  return { onGpu, series, data };
}

export function TelemetryPanel({ samples, points, live }: { samples: TelemetrySample[]; points: MetricPoint[]; live: boolean }) {
  const mem = useMemo(() => memoryColumns(samples), [samples]);
  const stepMem = useMemo(() => [points.map((p) => p.step), points.map((p) => p.mem_bytes ?? null)], [points]);
  const last = samples[samples.length - 1];
  const colors = chartColors();
  return (
    <section class="card chart-card telemetry" data-testid="telemetry-panel" data-samples={samples.length} aria-labelledby="tm-title">
      <h3>
        <span id="tm-title">{last ? (mem.onGpu ? 'GPU memory' : 'Memory') : 'Memory'}</span>
        {last && <span class="small muted" style={{ fontWeight: 400 }} title={new Date(last.ts_ms).toLocaleString()}>
          {live ? <><span class="live-dot" aria-hidden="true" /> {ago(last.ts_ms)}</> : `${samples.length} samples`}
        </span>}
      </h3>
      {last ? (
        <Chart testid="telemetry-chart" height={170} time fromZero yFmt={compactBytes} series={mem.series} data={mem.data} />
      ) : stepMem[0].length && points.some((p) => p.mem_bytes != null) ? (
        <Chart testid="memory-chart" height={170} fromZero yFmt={compactBytes} series={[{ label: 'process memory', color: colors[1], fmt: bytes }]} data={stepMem} />
      ) : (
        <p class="muted small empty-chart">No samples yet: the worker reports memory, CPU and GPUs every two seconds while the job runs.</p>
      )}
      {last && (
        <div class="stack tight" style={{ marginTop: 8 }}>
          <div class="readouts small" data-testid="process-readout">
            <span><span class="muted">Process</span> {bytes(last.process_rss_bytes)}</span>
            <span><span class="muted">CPU</span> {percent(last.process_cpu_percent)}</span>
            <span><span class="muted">Step</span> {last.step}</span>
          </div>
          <div>
            <div class="row between small">
              <span class="muted">System memory</span>
              <span>{bytes(last.system_memory_used_bytes)} / {bytes(last.system_memory_total_bytes)} · CPU {percent(last.system_cpu_percent)}</span>
            </div>
            <Meter used={last.system_memory_used_bytes} total={last.system_memory_total_bytes} label="System memory" />
          </div>
          <GpuList sample={last} />
        </div>
      )}
    </section>
  );
}
