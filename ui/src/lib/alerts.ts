// Alert kinds in words, and how serious each is. The worker's anomaly rules and the studio's
// own decisions (restarts) raise them; an unknown kind is shown as a warning with its name.

export type Severity = 'error' | 'warn' | 'info';

const KINDS: Record<string, [label: string, severity: Severity]> = {
  nan_loss: ['NaN loss', 'error'],
  nan_gradient: ['NaN gradient', 'error'],
  loss_spike: ['Loss spike', 'warn'],
  recovered: ['Recovered', 'info'],
  divergence: ['Diverging', 'error'],
  plateau: ['Plateau', 'warn'],
  exploding_gradient: ['Exploding gradient', 'error'],
  memory_pressure: ['Memory pressure', 'warn'],
  throughput_drop: ['Throughput drop', 'warn'],
  checkpoint_failed: ['Checkpoint failed', 'warn'],
  corrupt_checkpoint: ['Corrupt checkpoint', 'warn'],
  restart: ['Restarted', 'info'],
  restarted: ['Restarted', 'info'],
  oom_restart: ['Out of memory: restarted', 'warn'],
  out_of_memory: ['Out of memory', 'warn'],
  gave_up: ['Gave up', 'error'],
};

/** A readable label for an alert kind (`loss_spike` → "Loss spike"). */
export function alertLabel(kind: string): string {
  const known = KINDS[kind];
  if (known) return known[0];
  const words = kind.replace(/[_-]+/g, ' ').trim();
  return words ? words[0].toUpperCase() + words.slice(1) : 'Alert';
}

export const alertSeverity = (kind: string): Severity => KINDS[kind]?.[1] ?? 'warn';
