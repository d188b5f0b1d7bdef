// A uPlot line chart that follows live data: the caller passes columns (x then one per series)
// and the chart redraws in place when they change, keeping its size in step with its box.
// `data-points` and `data-steps` on the box say how many x values it shows (the E2E tests read
// them to prove the chart grows and has no gaps).
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export type SeriesDef = { label: string; color: string; width?: number; dash?: number[]; points?: boolean; scale?: string; fmt?: (v: number) => string };

const css = (name: string) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';

/**
 * `time`: x values are Unix seconds, shown as clock times. `fromZero`: the y axis starts at 0
 * (memory, where the distance to the limit matters).
 */
export function Chart({ x, series, data, height = 200, xLabel = 'step', logY = false, time = false, fromZero = false, yFmt, testid }: {
  x?: string; series: SeriesDef[]; data: (number | null)[][]; height?: number; xLabel?: string; logY?: boolean;
  time?: boolean; fromZero?: boolean; yFmt?: (v: number) => string; testid?: string;
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const key = series.map((s) => s.label + s.color + (s.dash ?? '')).join('|') + logY + time + fromZero + document.documentElement.dataset.theme;

  useEffect(() => {
    const el = box.current!;
    const grid = { stroke: css('--chart-grid'), width: 1 };
    const axis = { stroke: css('--muted'), grid, ticks: grid };
    const opts: uPlot.Options = {
      width: el.clientWidth || 400,
      height,
      legend: { show: true },
      cursor: { drag: { x: true, y: false } },
      scales: {
        x: { time },
        y: logY ? { distr: 3 } : fromZero ? { range: (_u, _min, max) => [0, max > 0 ? max * 1.08 : 1] } : {},
      },
      axes: [
        time ? { ...axis, space: 64, values: (_u: uPlot, vs: number[]) => clockTicks(vs) } : { ...axis, label: xLabel, labelSize: 18 },
        { ...axis, size: 60, ...(yFmt ? { values: (_u: uPlot, vs: number[]) => vs.map(yFmt) } : {}) },
      ],
      series: [
        time ? { label: x ?? 'time', value: (_u: uPlot, v: number | null) => (v == null ? '—' : new Date(v * 1000).toLocaleTimeString()) } : { label: x ?? xLabel },
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: s.width ?? 1.6,
          dash: s.dash,
          spanGaps: true,
          points: { show: s.points ?? false, size: 5, fill: s.color },
          value: (_u: uPlot, v: number | null) => (v == null ? '—' : s.fmt ? s.fmt(v) : Number(v.toPrecision(4)).toString()),
        })),
      ],
    };
    plot.current = new uPlot(opts, data as uPlot.AlignedData, el);
    const ro = new ResizeObserver(() => plot.current?.setSize({ width: el.clientWidth, height }));
    ro.observe(el);
    return () => { ro.disconnect(); plot.current?.destroy(); plot.current = null; };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key, height]);

  useEffect(() => { plot.current?.setData(data as uPlot.AlignedData); }, [data]);

  const xs = (data[0] ?? []) as number[];
  return (
    <div ref={box} class={time ? 'chart time' : 'chart'} data-testid={testid} data-points={xs.length}
      data-steps={xs.length ? `${xs[0]}-${xs[xs.length - 1]}` : ''} />
  );
}

/** Clock times for time-axis ticks, short (24-hour H:MM, with :SS when ticks are under a
 *  minute apart), so they fit side by side. */
function clockTicks(vs: number[]): string[] {
  const step = vs.length > 1 ? Math.abs(vs[1] - vs[0]) : 60;
  const two = (n: number) => String(n).padStart(2, '0');
  return vs.map((v) => {
    const d = new Date(v * 1000);
    const hm = `${d.getHours()}:${two(d.getMinutes())}`;
    return step < 60 ? `${hm}:${two(d.getSeconds())}` : hm;
  });
}

export const chartColors = () => [css('--chart-1'), css('--chart-2'), css('--chart-3'), css('--chart-4')];
