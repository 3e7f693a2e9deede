/**
 * Option parsing for `postcopy vm`: sizes spelled as QEMU spells them and the
 * `--workload` specification. Pure functions; errors are PostcopyError with
 * code 'BAD_OPTION'.
 */
import { PostcopyError } from '../errors.js';

function bad(message: string): PostcopyError {
  return new PostcopyError('BAD_OPTION', message);
}

const SIZE_SUFFIX: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
  t: 1024 ** 4,
};

/**
 * Parses a size like QEMU's `-m` and size properties: a number with an
 * optional suffix B/K/M/G/T (powers of 1024, case-insensitive); a plain
 * number is bytes unless `defaultUnit` says otherwise (QEMU's `-m 64` means
 * 64 MiB, so `parseSize('64', 'M')`). Fractions are allowed with a suffix
 * ("1.5G") and must come out a whole number of bytes.
 */
export function parseSize(text: string, defaultUnit: 'B' | 'K' | 'M' | 'G' = 'B'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)\s*$/i.exec(text);
  if (!m) throw bad(`invalid size '${text}'`);
  const unit = m[2] ? m[2].toLowerCase() : defaultUnit.toLowerCase();
  const value = Number(m[1]) * SIZE_SUFFIX[unit]!;
  if (!Number.isSafeInteger(value)) throw bad(`size '${text}' is not a whole number of bytes or is too large`);
  return value;
}

/** What the guest workload does to its working set. */
export type WorkloadPattern = 'seq' | 'rand' | 'hot';

export interface WorkloadSpec {
  /** `write` dirties pages (the default); `read` only touches them (faults in postcopy). */
  mode: 'write' | 'read';
  /** Order of page visits: sequential, uniform random, or a hot 10 % taking 90 % of visits. */
  pattern: WorkloadPattern;
  /** Page visits per second; 0 = as fast as possible. */
  rate: number;
  /** Bytes changed per visit (1..4096); small gives XBZRLE work, 4096 incompressible pages. */
  bytes: number;
  /** Working-set size in bytes from the start of the first RAM block; 0 = all RAM. */
  wss: number;
}

export const DEFAULT_WORKLOAD: Readonly<WorkloadSpec> = {
  mode: 'write',
  pattern: 'seq',
  rate: 10_000,
  bytes: 8,
  wss: 0,
};

/**
 * Parses `pattern=seq|rand|hot,rate=N,bytes=N,wss=SIZE,mode=write|read`.
 * Unknown keys and out-of-range values are errors; missing keys take the
 * defaults of DEFAULT_WORKLOAD. `rate=max` means as fast as possible.
 */
export function parseWorkload(text: string): WorkloadSpec {
  const spec: WorkloadSpec = { ...DEFAULT_WORKLOAD };
  for (const part of text.split(',')) {
    if (part.trim() === '') continue;
    const eq = part.indexOf('=');
    if (eq < 0) throw bad(`workload: expected key=value, got '${part}'`);
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    switch (key) {
      case 'pattern':
        if (value !== 'seq' && value !== 'rand' && value !== 'hot') {
          throw bad(`workload: pattern must be seq, rand or hot, not '${value}'`);
        }
        spec.pattern = value;
        break;
      case 'mode':
        if (value !== 'write' && value !== 'read') throw bad(`workload: mode must be write or read, not '${value}'`);
        spec.mode = value;
        break;
      case 'rate':
        spec.rate = value === 'max' ? 0 : wholeNumber(key, value, 0, 1e9);
        break;
      case 'bytes':
        spec.bytes = wholeNumber(key, value, 1, 4096);
        break;
      case 'wss':
        spec.wss = parseSize(value, 'B');
        break;
      default:
        throw bad(`workload: unknown key '${key}' (known: pattern, mode, rate, bytes, wss)`);
    }
  }
  return spec;
}

function wholeNumber(key: string, value: string, min: number, max: number): number {
  if (!/^\d+$/.test(value)) throw bad(`workload: ${key} must be a whole number, not '${value}'`);
  const n = Number(value);
  if (n < min || n > max) throw bad(`workload: ${key} must be between ${min} and ${max}, not ${n}`);
  return n;
}
