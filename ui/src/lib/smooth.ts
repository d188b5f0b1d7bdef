// Exponential moving average with TensorBoard's debiasing, for the "smooth" toggle of loss curves.
export function ema(values: (number | null)[], weight: number): (number | null)[] {
  let acc = 0; let n = 0;
  return values.map((v) => {
    if (v == null || !isFinite(v)) return null;
    acc = acc * weight + (1 - weight) * v; n++;
    return acc / (1 - Math.pow(weight, n));
  });
}
