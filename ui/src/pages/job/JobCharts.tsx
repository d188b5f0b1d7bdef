// The job's curves: loss (with eval loss and a smoothing toggle) with the telemetry panel
// (`side`) beside it, then learning rate, grad norm and tokens per second on the step axis.
// Memory lives in the telemetry panel (over time, against the limit).
import type { ComponentChildren } from 'preact';
import { useMemo, useState } from 'preact/hooks';
import type { MetricPoint } from '../../api';
import { Chart, chartColors } from '../../components/Chart';
import { ema } from '../../lib/smooth';

export function JobCharts({ points, evals, side, children }: {
  points: MetricPoint[]; evals: { step: number; loss: number }[]; side?: ComponentChildren; children?: ComponentChildren;
}) {
  const [smooth, setSmooth] = useState(false);
  const colors = chartColors();
  const steps = useMemo(() => points.map((p) => p.step), [points]);
  const loss = useMemo(() => {
    const raw = points.map((p) => p.loss ?? null);
    const byStep = new Map(evals.map((e) => [e.step, e.loss]));
    const evalCol = points.map((p) => byStep.get(p.step) ?? null);
    return smooth ? [steps, raw, ema(raw, 0.8), evalCol] : [steps, raw, evalCol];
  }, [points, evals, smooth]);
  const col = (f: (p: MetricPoint) => number | null | undefined) => [steps, points.map((p) => f(p) ?? null)];
  const lossSeries = smooth
    ? [{ label: 'loss', color: colors[0], width: 1 }, { label: 'smoothed', color: colors[0], width: 2.4 }, { label: 'eval loss', color: colors[1], points: true }]
    : [{ label: 'loss', color: colors[0] }, { label: 'eval loss', color: colors[1], points: true }];
  return (
    <div class="stack">
      <div class="grid monitor">
        <section class="card chart-card" data-testid="loss-card" data-evals={evals.length}>
          <h3>
            <span>Loss</span>
            <label class="row small" style={{ fontWeight: 400 }}>
              <input type="checkbox" checked={smooth} onChange={(e) => setSmooth((e.target as HTMLInputElement).checked)} /> Smooth
            </label>
          </h3>
          <Chart testid="loss-chart" height={260} series={lossSeries} data={loss} />
        </section>
        {side}
      </div>
      {children}
      <div class="grid three">
        <section class="card chart-card"><h3>Learning rate</h3>
          <Chart testid="lr-chart" height={150} yFmt={(v) => (v === 0 ? '0' : v.toExponential(1))} series={[{ label: 'lr', color: colors[2], fmt: (v) => v.toExponential(2) }]} data={useMemo(() => col((p) => p.lr), [points])} /></section>
        <section class="card chart-card"><h3>Gradient norm</h3>
          <Chart height={150} series={[{ label: 'grad norm', color: colors[3] }]} data={useMemo(() => col((p) => p.grad_norm), [points])} /></section>
        <section class="card chart-card"><h3>Tokens per second</h3>
          <Chart height={150} series={[{ label: 'tokens/s', color: colors[0] }]} data={useMemo(() => col((p) => p.tokens_per_s), [points])} /></section>
      </div>
    </div>
  );
}
