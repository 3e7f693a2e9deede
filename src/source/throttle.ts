/**
 * Auto-converge (QEMU's migration_trigger_throttle / mig_throttle_guest_down):
 * at every rate period, if the bytes dirtied exceed threshold% of the bytes
 * transferred in that period, count it; on the second such period (the
 * count is not reset by a quiet period, as in QEMU 7.2) throttle the guest
 * down: initial, then +increment (or the tail-slow step), capped by
 * max-cpu-throttle.
 */
import type { SourceParameters } from './options.js';

/** Throttle state of one migration. */
export class AutoConverge {
  /** Current cpu-throttle-percentage (0 = not throttling). */
  percentage = 0;
  private dirtyRateHighCnt = 0;

  constructor(
    private readonly params: () => SourceParameters,
    private readonly apply: (percent: number) => void,
  ) {}

  /** Feeds one period's figures; returns true if the throttle changed. */
  onPeriod(bytesXferPeriod: number, bytesDirtyPeriod: number): boolean {
    const p = this.params();
    const threshold = Math.floor((bytesXferPeriod * p.throttleTriggerThreshold) / 100);
    if (bytesDirtyPeriod > threshold && ++this.dirtyRateHighCnt >= 2) {
      this.dirtyRateHighCnt = 0;
      this.throttleDown(bytesDirtyPeriod, threshold);
      return true;
    }
    return false;
  }

  private throttleDown(bytesDirtyPeriod: number, threshold: number): void {
    const p = this.params();
    let next: number;
    if (this.percentage === 0) next = p.cpuThrottleInitial;
    else {
      let inc = p.cpuThrottleIncrement;
      if (p.cpuThrottleTailslow) {
        const cpuNow = 100 - this.percentage;
        const cpuIdeal = cpuNow * (threshold / bytesDirtyPeriod);
        inc = Math.min(Math.floor(cpuNow - cpuIdeal), p.cpuThrottleIncrement);
      }
      next = Math.min(this.percentage + inc, p.maxCpuThrottle);
    }
    this.percentage = Math.max(1, Math.min(99, next));
    this.apply(this.percentage);
  }

  /** Stops throttling (end of migration). */
  stop(): void {
    if (this.percentage !== 0) {
      this.percentage = 0;
      this.apply(0);
    }
  }
}
