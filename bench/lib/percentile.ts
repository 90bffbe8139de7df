/**
 * The nearest-rank percentile of latencies, shared by the benchmark clients.
 *
 * @param sorted values in ascending order
 * @param p the fraction, e.g. 0.99
 * @returns the value at that rank, or 0 when there are none
 */
export function percentile(sorted: readonly number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] : 0;
}
