/**
 * Migration parameters of QEMU 7.2: one typed record keyed by QEMU's names,
 * with QEMU's defaults, QAPI types, range checks and error texts (all
 * captured from qemu-system-x86_64 7.2.22, see test/control/parameters.test.ts).
 *
 * Representation: integer parameters are `number`, except the two
 * bandwidths, which are `bigint` because QEMU accepts -1 and stores it as
 * 2^64-1 (and shows 18446744073709551615). Every other integer parameter is
 * range-checked into the safe-integer domain (xbzrle-cache-size is a power of
 * two, exact as a double).
 */
import { QmpError } from '../errors.js';
import { isQmpObject, type QmpObject, type QmpValue } from './json.js';
import { checkMembers, toEnum, toUint64, toUintN } from './qapi.js';

/** multifd-compression values. */
export const MULTIFD_COMPRESSION = ['none', 'zlib', 'zstd'] as const;
/** A multifd-compression value. */
export type MultifdCompression = (typeof MULTIFD_COMPRESSION)[number];

/** One entry of block-bitmap-mapping (kept as given; we migrate no block bitmaps). */
export type BitmapMigrationNodeAlias = QmpObject;

/** The 7.2 migration parameters (query-migrate-parameters field names). */
export interface Parameters {
  'announce-initial': number;
  'announce-max': number;
  'announce-rounds': number;
  'announce-step': number;
  'compress-level': number;
  'compress-threads': number;
  'compress-wait-thread': boolean;
  'decompress-threads': number;
  'throttle-trigger-threshold': number;
  'cpu-throttle-initial': number;
  'cpu-throttle-increment': number;
  'cpu-throttle-tailslow': boolean;
  'tls-creds': string;
  'tls-hostname': string;
  'tls-authz': string;
  /** bytes/second; 2^64-1 when set to -1. */
  'max-bandwidth': bigint;
  /** milliseconds */
  'downtime-limit': number;
  'x-checkpoint-delay': number;
  'block-incremental': boolean;
  'multifd-channels': number;
  /** bytes */
  'xbzrle-cache-size': number;
  /** bytes/second, 0 = unlimited. */
  'max-postcopy-bandwidth': bigint;
  'max-cpu-throttle': number;
  'multifd-compression': MultifdCompression;
  'multifd-zlib-level': number;
  'multifd-zstd-level': number;
  /** Absent unless set. */
  'block-bitmap-mapping'?: BitmapMigrationNodeAlias[];
}

/** A parameter name. */
export type ParameterName = keyof Parameters;

/** QEMU 7.2's defaults. */
export function defaultParameters(): Parameters {
  return {
    'announce-initial': 50,
    'announce-max': 550,
    'announce-rounds': 5,
    'announce-step': 100,
    'compress-level': 1,
    'compress-threads': 8,
    'compress-wait-thread': true,
    'decompress-threads': 2,
    'throttle-trigger-threshold': 50,
    'cpu-throttle-initial': 20,
    'cpu-throttle-increment': 10,
    'cpu-throttle-tailslow': false,
    'tls-creds': '',
    'tls-hostname': '',
    'tls-authz': '',
    'max-bandwidth': 134217728n,
    'downtime-limit': 300,
    'x-checkpoint-delay': 20000,
    'block-incremental': false,
    'multifd-channels': 2,
    'xbzrle-cache-size': 67108864,
    'max-postcopy-bandwidth': 0n,
    'max-cpu-throttle': 99,
    'multifd-compression': 'none',
    'multifd-zlib-level': 1,
    'multifd-zstd-level': 1,
  };
}

type Kind = 'size' | 'uint64' | 'uint32' | 'uint8' | 'bool' | 'StrOrNull' | 'compression' | 'mapping';

/** MigrateSetParameters members in schema order (the order QEMU visits them). */
const MEMBERS: ReadonlyArray<readonly [ParameterName, Kind]> = [
  ['announce-initial', 'size'],
  ['announce-max', 'size'],
  ['announce-rounds', 'size'],
  ['announce-step', 'size'],
  ['compress-level', 'uint8'],
  ['compress-threads', 'uint8'],
  ['compress-wait-thread', 'bool'],
  ['decompress-threads', 'uint8'],
  ['throttle-trigger-threshold', 'uint8'],
  ['cpu-throttle-initial', 'uint8'],
  ['cpu-throttle-increment', 'uint8'],
  ['cpu-throttle-tailslow', 'bool'],
  ['tls-creds', 'StrOrNull'],
  ['tls-hostname', 'StrOrNull'],
  ['tls-authz', 'StrOrNull'],
  ['max-bandwidth', 'size'],
  ['downtime-limit', 'uint64'],
  ['x-checkpoint-delay', 'uint32'],
  ['block-incremental', 'bool'],
  ['multifd-channels', 'uint8'],
  ['xbzrle-cache-size', 'size'],
  ['max-postcopy-bandwidth', 'size'],
  ['max-cpu-throttle', 'uint8'],
  ['multifd-compression', 'compression'],
  ['multifd-zlib-level', 'uint8'],
  ['multifd-zstd-level', 'uint8'],
  ['block-bitmap-mapping', 'mapping'],
];

/** Maximum downtime-limit, ms (QEMU's MAX_MIGRATE_DOWNTIME). */
export const MAX_DOWNTIME_LIMIT_MS = 2000 * 1000;
/** Target page size used by the xbzrle-cache-size check (x86). */
export const TARGET_PAGE_SIZE = 4096;

/** The visited (type-checked) input of migrate-set-parameters. */
export type ParameterChanges = Partial<Record<ParameterName, number | bigint | boolean | string | BitmapMigrationNodeAlias[]>>;

function visit(name: ParameterName, kind: Kind, v: QmpValue): number | bigint | boolean | string | BitmapMigrationNodeAlias[] {
  switch (kind) {
    case 'bool':
      if (typeof v !== 'boolean') throw new QmpError(`Invalid parameter type for '${name}', expected: boolean`);
      return v;
    case 'StrOrNull':
      if (v === null) return '';
      if (typeof v !== 'string') throw new QmpError(`Invalid parameter type for '${name}', expected: StrOrNull`);
      return v;
    case 'uint8':
      return toUintN(v, name, 8);
    case 'uint32':
      return toUintN(v, name, 32);
    case 'uint64':
    case 'size':
      return toUint64(v, name);
    case 'compression':
      return toEnum(v, name, MULTIFD_COMPRESSION);
    case 'mapping':
      if (!Array.isArray(v)) throw new QmpError(`Invalid parameter type for '${name}', expected: array`);
      return v.map((e, i) => {
        if (!isQmpObject(e)) throw new QmpError(`Invalid parameter type for '${name}[${i}]', expected: object`);
        return e;
      });
  }
}

/** Type-check the migrate-set-parameters arguments in QEMU's order (QAPI errors). */
export function visitParameters(args: QmpObject): ParameterChanges {
  const out: ParameterChanges = {};
  for (const [name, kind] of MEMBERS) {
    if (Object.prototype.hasOwnProperty.call(args, name)) out[name] = visit(name, kind, args[name]!);
  }
  checkMembers(
    args,
    MEMBERS.map(([n]) => n),
  );
  return out;
}

const range = (under: string, what: string): QmpError => new QmpError(`Parameter '${under}' expects ${what}`);

/**
 * QEMU's semantic checks on a complete (merged) parameter set, in QEMU's
 * order. `changes` holds the raw visited values (bigint for size/uint64).
 */
function checkParameters(p: Record<string, number | bigint | boolean | string | unknown>): void {
  const n = (k: ParameterName): bigint => BigInt(p[k] as number | bigint);
  if (n('compress-level') > 9n) throw range('compress_level', 'a value between 0 and 9');
  if (n('compress-threads') < 1n) throw range('compress_threads', 'a value between 1 and 255');
  if (n('decompress-threads') < 1n) throw range('decompress_threads', 'a value between 1 and 255');
  const ttt = n('throttle-trigger-threshold');
  if (ttt < 1n || ttt > 100n) throw range('throttle_trigger_threshold', 'an integer in the range of 1 to 100');
  const cti = n('cpu-throttle-initial');
  if (cti < 1n || cti > 99n) throw range('cpu_throttle_initial', 'an integer in the range of 1 to 99');
  const ctc = n('cpu-throttle-increment');
  if (ctc < 1n || ctc > 99n) throw range('cpu_throttle_increment', 'an integer in the range of 1 to 99');
  if (n('downtime-limit') > BigInt(MAX_DOWNTIME_LIMIT_MS)) {
    throw range('downtime_limit', 'an integer in the range of 0 to (2000 * 1000) ms');
  }
  if (n('multifd-channels') < 1n) throw range('multifd_channels', 'a value between 1 and 255');
  const xcs = n('xbzrle-cache-size');
  if (xcs < BigInt(TARGET_PAGE_SIZE) || (xcs & (xcs - 1n)) !== 0n) {
    throw range('xbzrle_cache_size', 'a power of two no less than the target page size');
  }
  const mct = n('max-cpu-throttle');
  if (mct < cti || mct > 99n) throw range('max_cpu_throttle', 'an integer in the range of cpu_throttle_initial to 99');
  if (n('announce-initial') > 100000n) throw range('announce_initial', 'a value between 0 and 100000');
  if (n('announce-max') > 100000n) throw range('announce_max', 'a value between 0 and 100000');
  if (n('announce-rounds') > 1000n) throw range('announce_rounds', 'a value between 0 and 1000');
  const step = n('announce-step');
  if (step < 1n || step > 10000n) throw range('announce_step', 'a value between 0 and 10000');
}

/** What parameter checks need from the rest of the process. */
export interface ParameterContext {
  /** The zero-copy-send capability is on (adds QEMU's zero-copy check). */
  zeroCopySend?: boolean;
}

/**
 * `migrate-set-parameters`: type-check `args` (QAPI texts), merge into a copy
 * of `current`, run QEMU's range checks (texts with underscored names) and
 * return the new record. All or nothing.
 *
 * 7.2 quirk reproduced: multifd-zlib-level and multifd-zstd-level are
 * type-checked, then neither range-checked nor applied.
 */
export function applyParameters(current: Parameters, args: QmpValue | undefined, ctx: ParameterContext = {}): Parameters {
  if (args === undefined) args = {};
  if (!isQmpObject(args)) throw new QmpError("QMP input member 'arguments' must be an object");
  const changes = visitParameters(args);
  delete changes['multifd-zlib-level'];
  delete changes['multifd-zstd-level'];
  const merged: Record<string, unknown> = { ...current, ...changes };
  checkParameters(merged);
  if (ctx.zeroCopySend && (merged['multifd-compression'] !== 'none' || merged['tls-creds'] !== '')) {
    throw new QmpError('Zero copy only available for non-compressed non-TLS multifd migration');
  }
  const next: Parameters = { ...current };
  for (const [name, value] of Object.entries(changes) as Array<[ParameterName, unknown]>) {
    if (name === 'max-bandwidth' || name === 'max-postcopy-bandwidth') next[name] = value as bigint;
    else if (typeof value === 'bigint') (next as unknown as Record<string, unknown>)[name] = Number(value);
    else (next as unknown as Record<string, unknown>)[name] = value;
  }
  return next;
}

/** query-migrate-parameters key order as QEMU 7.2 prints it. */
const QUERY_ORDER: readonly ParameterName[] = [
  'cpu-throttle-tailslow',
  'xbzrle-cache-size',
  'cpu-throttle-initial',
  'announce-max',
  'decompress-threads',
  'compress-threads',
  'compress-level',
  'multifd-channels',
  'multifd-zstd-level',
  'announce-initial',
  'block-incremental',
  'compress-wait-thread',
  'downtime-limit',
  'tls-authz',
  'multifd-compression',
  'announce-rounds',
  'announce-step',
  'tls-creds',
  'multifd-zlib-level',
  'max-cpu-throttle',
  'max-postcopy-bandwidth',
  'tls-hostname',
  'throttle-trigger-threshold',
  'max-bandwidth',
  'x-checkpoint-delay',
  'cpu-throttle-increment',
  'block-bitmap-mapping',
];

/** The query-migrate-parameters return value (QEMU's field set and order; serialize with toQmpJson). */
export function queryParameters(p: Parameters): Record<string, number | bigint | boolean | string | BitmapMigrationNodeAlias[]> {
  const out: Record<string, number | bigint | boolean | string | BitmapMigrationNodeAlias[]> = {};
  for (const k of QUERY_ORDER) {
    const v = p[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}
