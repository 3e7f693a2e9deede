/**
 * The capabilities and parameters the source engine reads, with QEMU's
 * defaults (SPEC §8.2, §8.3). Names are QEMU's, in camelCase.
 */

/** Capabilities the engine honours (the postcopy ones optional for older callers; default false). */
export interface SourceCapabilities {
  xbzrle: boolean;
  autoConverge: boolean;
  events: boolean;
  returnPath: boolean;
  pauseBeforeSwitchover: boolean;
  /** postcopy-ram: ADVISE at start, migrate-start-postcopy switches (implies the return path). */
  postcopyRam?: boolean;
  /** release-ram: sent RAM is freed (zeroed) once in postcopy. */
  releaseRam?: boolean;
}

/** Parameters the precopy engine honours. */
export interface SourceParameters {
  /** Bytes per second (max-bandwidth). */
  maxBandwidth: number;
  /** Milliseconds (downtime-limit). */
  downtimeLimit: number;
  /** Bytes (xbzrle-cache-size), a power of two ≥ 4096. */
  xbzrleCacheSize: number;
  cpuThrottleInitial: number;
  cpuThrottleIncrement: number;
  cpuThrottleTailslow: boolean;
  maxCpuThrottle: number;
  throttleTriggerThreshold: number;
  /** Bytes per second of the postcopy background scan (max-postcopy-bandwidth), 0 = unlimited. */
  maxPostcopyBandwidth?: number;
}

export const DEFAULT_CAPABILITIES: SourceCapabilities = {
  xbzrle: false,
  autoConverge: false,
  events: false,
  returnPath: false,
  pauseBeforeSwitchover: false,
  postcopyRam: false,
  releaseRam: false,
};

export const DEFAULT_PARAMETERS: SourceParameters = {
  maxBandwidth: 134217728,
  downtimeLimit: 300,
  xbzrleCacheSize: 67108864,
  cpuThrottleInitial: 20,
  cpuThrottleIncrement: 10,
  cpuThrottleTailslow: false,
  maxCpuThrottle: 99,
  throttleTriggerThreshold: 50,
  maxPostcopyBandwidth: 0,
};

/** QEMU's BUFFER_DELAY: the rate-limit and bandwidth window, ms. */
export const BUFFER_DELAY_MS = 100;
/** QEMU's XFER_LIMIT_RATIO: windows per second. */
export const XFER_LIMIT_RATIO = 1000 / BUFFER_DELAY_MS;
/** QEMU's MAX_WAIT: a PART section stops after this many ms. */
export const MAX_WAIT_MS = 50;
/** Pages between checks of the PART time limit. */
export const PAGES_PER_TIME_CHECK = 64;
/** Period of the rate statistics (dirty-pages-rate, xbzrle rates, throttle), ms. */
export const RATE_PERIOD_MS = 1000;

/** Postcopy keepalive: a COMMAND PING is sent this often while postcopy-active, ms. */
export const KEEPALIVE_INTERVAL_MS = 1000;
/** Postcopy keepalive: pause when the return path has been silent this long, ms. */
export const KEEPALIVE_TIMEOUT_MS = 5000;
/** Recovery handshake: give up (back to postcopy-paused) after this long, ms. */
export const RECOVERY_TIMEOUT_MS = 10000;
/** Longest synchronous stretch of the sender in precopy before it yields, ms. */
export const YIELD_EVERY_MS = 8;
/** Longest synchronous stretch in postcopy (page-fault latency), ms. */
export const POSTCOPY_YIELD_EVERY_MS = 1;
