/**
 * QAPI-style argument checking with QEMU 7.2's texts (captured from
 * qemu-system-x86_64 7.2.22): "Parameter 'x' is missing", "Parameter 'x' is
 * unexpected", "Invalid parameter type for 'x', expected: string",
 * "Parameter 'x' expects uint8_t", "Parameter 'x' does not accept value 'y'".
 * Command handlers use these so bad arguments read exactly like QEMU's.
 */
import { QmpError } from '../errors.js';
import { isQmpObject, type QmpObject, type QmpValue } from './json.js';

const UINT64_MAX = 2n ** 64n - 1n;

/** Refuse members of `args` not in `allowed` ("Parameter 'x' is unexpected"). */
export function checkMembers(args: QmpObject, allowed: readonly string[], prefix = ''): void {
  for (const k of Object.keys(args)) {
    if (!allowed.includes(k)) throw new QmpError(`Parameter '${prefix}${k}' is unexpected`);
  }
}

function get(args: QmpObject, name: string, prefix: string, optional: boolean): QmpValue | undefined {
  if (!Object.prototype.hasOwnProperty.call(args, name)) {
    if (optional) return undefined;
    throw new QmpError(`Parameter '${prefix}${name}' is missing`);
  }
  return args[name];
}

/** A required string member. */
export function argStr(args: QmpObject, name: string, prefix?: string): string;
/** An optional string member (undefined when absent). */
export function argStr(args: QmpObject, name: string, prefix: string, optional: true): string | undefined;
export function argStr(args: QmpObject, name: string, prefix = '', optional = false): string | undefined {
  const v = get(args, name, prefix, optional);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new QmpError(`Invalid parameter type for '${prefix}${name}', expected: string`);
  return v;
}

/** A required boolean member. */
export function argBool(args: QmpObject, name: string, prefix?: string): boolean;
/** An optional boolean member. */
export function argBool(args: QmpObject, name: string, prefix: string, optional: true): boolean | undefined;
export function argBool(args: QmpObject, name: string, prefix = '', optional = false): boolean | undefined {
  const v = get(args, name, prefix, optional);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new QmpError(`Invalid parameter type for '${prefix}${name}', expected: boolean`);
  return v;
}

/**
 * A QAPI uint64/size value. Like QEMU, negative integers are accepted and
 * wrap to 2^64 + v (so -1 is 2^64-1); floats and non-numbers are refused with
 * "Parameter 'x' expects uint64".
 */
export function toUint64(v: QmpValue, name: string): bigint {
  if (typeof v === 'number' && Number.isInteger(v)) return v < 0 ? 2n ** 64n + BigInt(v) : BigInt(v);
  if (typeof v === 'bigint') return v < 0n ? 2n ** 64n + v : v;
  throw new QmpError(`Parameter '${name}' expects uint64`);
}

/** A QAPI unsigned integer of `bits` bits: "Parameter 'x' expects uint8_t" when too large. */
export function toUintN(v: QmpValue, name: string, bits: 8 | 16 | 32): number {
  const u = toUint64(v, name);
  if (u > (1n << BigInt(bits)) - 1n) throw new QmpError(`Parameter '${name}' expects uint${bits}_t`);
  return Number(u);
}

/** An enum member: "Parameter 'x' does not accept value 'y'". */
export function toEnum<T extends string>(v: QmpValue, name: string, values: readonly T[]): T {
  if (typeof v !== 'string') throw new QmpError(`Invalid parameter type for '${name}', expected: string`);
  if (!(values as readonly string[]).includes(v)) throw new QmpError(`Parameter '${name}' does not accept value '${v}'`);
  return v as T;
}

/** An object member: "Invalid parameter type for 'x', expected: object". */
export function toObject(v: QmpValue, name: string): QmpObject {
  if (!isQmpObject(v)) throw new QmpError(`Invalid parameter type for '${name}', expected: object`);
  return v;
}

/** An array member: "Invalid parameter type for 'x', expected: array". */
export function toArray(v: QmpValue, name: string): QmpValue[] {
  if (!Array.isArray(v)) throw new QmpError(`Invalid parameter type for '${name}', expected: array`);
  return v;
}

export { UINT64_MAX };
