/**
 * Migration capabilities of QEMU 7.2: one typed record, QEMU's names, QEMU's
 * cross-checks and error texts (captured from qemu-system-x86_64 7.2.22).
 */
import { QmpError } from '../errors.js';
import type { QmpValue } from './json.js';
import { argBool, checkMembers, toArray, toEnum, toObject } from './qapi.js';

/** The 21 capabilities of 7.2, in QAPI enum order (the order query-migrate-capabilities lists them). */
export const CAPABILITY_NAMES = [
  'xbzrle',
  'rdma-pin-all',
  'auto-converge',
  'zero-blocks',
  'compress',
  'events',
  'postcopy-ram',
  'x-colo',
  'release-ram',
  'block',
  'return-path',
  'pause-before-switchover',
  'multifd',
  'dirty-bitmaps',
  'postcopy-blocktime',
  'late-block-activate',
  'x-ignore-shared',
  'validate-uuid',
  'background-snapshot',
  'zero-copy-send',
  'postcopy-preempt',
] as const;

/** A capability name as QEMU spells it. */
export type CapabilityName = (typeof CAPABILITY_NAMES)[number];
/** Every capability's on/off state. */
export type Capabilities = Record<CapabilityName, boolean>;

/** All 21 capabilities off (QEMU's defaults). */
export function defaultCapabilities(): Capabilities {
  return Object.fromEntries(CAPABILITY_NAMES.map((n) => [n, false])) as Capabilities;
}

/**
 * Capabilities this implementation cannot honour. Enabling one is refused
 * with "Capability 'X' is not supported by this implementation" instead of
 * being silently accepted; they stay queryable (always false).
 */
export const UNSUPPORTED_CAPABILITIES: readonly CapabilityName[] = [
  'rdma-pin-all',
  'compress',
  'x-colo',
  'block',
  'multifd',
  'background-snapshot',
  'zero-copy-send',
];

/** Background-snapshot's incompatible capabilities, in the order QEMU 7.2 checks them. */
const BACKGROUND_SNAPSHOT_INCOMPATIBLE: readonly CapabilityName[] = [
  'postcopy-ram',
  'dirty-bitmaps',
  'postcopy-blocktime',
  'late-block-activate',
  'return-path',
  'multifd',
  'pause-before-switchover',
  'auto-converge',
  'release-ram',
  'rdma-pin-all',
  'block',
  'compress',
  'xbzrle',
  'x-colo',
  'validate-uuid',
  'zero-copy-send',
];

/** What the capability checks need to know about the rest of the process. */
export interface CapabilityContext {
  /** A migration (either direction) is running: changes are refused. */
  migrationActive?: boolean;
  /** The process was started with -incoming and has not finished receiving. */
  incoming?: boolean;
  /** Host check for postcopy on the destination (userfaultfd). Called only when enabling postcopy-ram while incoming. */
  postcopySupported?: () => boolean;
  /** TLS is configured (tls-creds non-empty). */
  tls?: boolean;
  /** The multifd-compression parameter. */
  multifdCompression?: string;
  /** Overrides {@link UNSUPPORTED_CAPABILITIES}. */
  unsupported?: readonly CapabilityName[];
}

/**
 * QEMU's cross-checks on a complete capability set (`old` is the set before
 * the change). Throws QmpError with QEMU's text for the first rule broken.
 */
export function checkCapabilities(caps: Capabilities, old: Capabilities, ctx: CapabilityContext = {}): void {
  if (caps['postcopy-ram']) {
    if (!old['postcopy-ram'] && ctx.incoming && ctx.postcopySupported && !ctx.postcopySupported()) {
      throw new QmpError('Postcopy is not supported');
    }
    if (caps['x-ignore-shared']) throw new QmpError('Postcopy is not compatible with ignore-shared');
  }
  if (caps['background-snapshot']) {
    for (const c of BACKGROUND_SNAPSHOT_INCOMPATIBLE) {
      if (caps[c]) throw new QmpError(`Background-snapshot is not compatible with ${c}`);
    }
  }
  if (
    caps['zero-copy-send'] &&
    (!caps.multifd || caps.compress || caps.xbzrle || (ctx.multifdCompression ?? 'none') !== 'none' || ctx.tls)
  ) {
    throw new QmpError('Zero copy only available for non-compressed non-TLS multifd migration');
  }
  if (caps['postcopy-preempt']) {
    if (!caps['postcopy-ram']) throw new QmpError('Postcopy preempt requires postcopy-ram');
    if (caps.compress) throw new QmpError('Postcopy preempt not compatible with compress');
  }
  if (caps.multifd && caps.compress) throw new QmpError('Multifd is not compatible with compress');
}

/** One requested change of migrate-set-capabilities. */
export type CapabilityChange = readonly [CapabilityName, boolean];

/**
 * Type-check the QMP `capabilities` argument (`[{capability, state}]`) with
 * QEMU's QAPI texts; returns the requested changes in order.
 */
export function visitCapabilities(list: QmpValue | undefined): CapabilityChange[] {
  if (list === undefined) throw new QmpError("Parameter 'capabilities' is missing");
  const items = toArray(list, 'capabilities');
  return items.map((item, i) => {
    const prefix = `capabilities[${i}].`;
    const o = toObject(item, `capabilities[${i}]`);
    if (!Object.prototype.hasOwnProperty.call(o, 'capability')) throw new QmpError(`Parameter '${prefix}capability' is missing`);
    const v = o.capability!;
    if (typeof v !== 'string') throw new QmpError(`Invalid parameter type for '${prefix}capability', expected: string`);
    const name = toEnum(v, 'capability', CAPABILITY_NAMES);
    const state = argBool(o, 'state', prefix);
    checkMembers(o, ['capability', 'state'], prefix);
    return [name, state] as const;
  });
}

/**
 * Apply already visited changes to a copy of `current`: refuses while a
 * migration runs, refuses capabilities we cannot honour, runs QEMU's
 * cross-checks, and returns the new record. All or nothing.
 */
export function commitCapabilities(current: Capabilities, changes: readonly CapabilityChange[], ctx: CapabilityContext = {}): Capabilities {
  if (ctx.migrationActive) throw new QmpError("There's a migration process in progress");
  const next = { ...current };
  for (const [name, state] of changes) next[name] = state;
  const unsupported = ctx.unsupported ?? UNSUPPORTED_CAPABILITIES;
  for (const [name, state] of changes) {
    if (state && unsupported.includes(name)) {
      throw new QmpError(`Capability '${name}' is not supported by this implementation`);
    }
  }
  checkCapabilities(next, current, ctx);
  return next;
}

/**
 * `migrate-set-capabilities` in one call: {@link visitCapabilities} then
 * {@link commitCapabilities}.
 */
export function applyCapabilities(current: Capabilities, list: QmpValue | undefined, ctx: CapabilityContext = {}): Capabilities {
  return commitCapabilities(current, visitCapabilities(list), ctx);
}

/** One entry of query-migrate-capabilities, members in QEMU's output order. */
export interface CapabilityStatus {
  state: boolean;
  capability: CapabilityName;
}

/** The `query-migrate-capabilities` return value: all 21, enum order. */
export function queryCapabilities(caps: Capabilities): CapabilityStatus[] {
  return CAPABILITY_NAMES.map((capability) => ({ state: caps[capability], capability }));
}
