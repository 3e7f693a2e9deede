/**
 * Fault accounting on the destination: the latency of every requested page
 * (fault → placement, µs) and QEMU's postcopy blocktime (SPEC §6.6) for our
 * single "vCPU", the fault user: the time during which at least one of its
 * faults was outstanding.
 */

/** Summary of fault latencies, µs. */
export interface FaultLatency {
  /** Requests sent on the return path (re-sends after a resume included). */
  requests: number;
  p50Us: number;
  p99Us: number;
  maxUs: number;
  /** Requested pages placed (the samples). */
  count: number;
}

/** Latency samples and blocked-time accumulation. */
export class FaultAccounting {
  private samples = new Float64Array(1024);
  private n = 0;
  /** Requests sent. */
  requests = 0;
  private blockedSince = -1;
  private blockedMs = 0;

  /** Records one fault → placement latency in µs. */
  sample(us: number): void {
    if (this.n === this.samples.length) {
      const s = new Float64Array(this.samples.length * 2);
      s.set(this.samples);
      this.samples = s;
    }
    this.samples[this.n++] = us;
  }

  /** The number of outstanding faults changed to `outstanding` at time `now` (ms). */
  outstanding(outstanding: number, now: number): void {
    if (outstanding > 0 && this.blockedSince < 0) this.blockedSince = now;
    else if (outstanding === 0 && this.blockedSince >= 0) {
      this.blockedMs += now - this.blockedSince;
      this.blockedSince = -1;
    }
  }

  /** When the current blocked interval began (performance.now ms), -1 when not blocked. */
  get blockedSinceMs(): number {
    return this.blockedSince;
  }

  /** Total blocked time so far, ms (an interval still open counts up to `now`). */
  blocktimeMs(now = performance.now()): number {
    return this.blockedMs + (this.blockedSince >= 0 ? now - this.blockedSince : 0);
  }

  /** p50/p99/max over all samples (nearest-rank percentiles). */
  stats(): FaultLatency {
    const n = this.n;
    if (n === 0) return { requests: this.requests, p50Us: 0, p99Us: 0, maxUs: 0, count: 0 };
    const s = this.samples.slice(0, n).sort();
    const rank = (p: number): number => s[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))]!;
    return { requests: this.requests, p50Us: Math.round(rank(0.5)), p99Us: Math.round(rank(0.99)), maxUs: Math.round(s[n - 1]!), count: n };
  }
}
