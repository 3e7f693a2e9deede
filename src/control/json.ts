/**
 * JSON as QMP speaks it.
 *
 * QEMU keeps integers exact up to 64 bits and tells integers from floats
 * (`1` is an integer, `1.0` a double, and a uint8 parameter refuses the
 * latter). JavaScript's JSON.parse loses both, so this module has its own
 * small parser and a serializer that prints what QEMU 7.2 prints:
 * `{"a": 1, "b": [1, 2]}` with ", " and ": " separators, non-ASCII and control
 * characters as upper-case `\uXXXX` escapes (surrogate pairs for astral
 * characters), doubles with 17 significant digits ("%.17g").
 */

/** A JSON number written with a fraction or exponent (a QAPI "number"). */
export class JsonFloat {
  constructor(readonly value: number) {}
}

/**
 * A parsed QMP value. Integers are `number` when they are safe integers and
 * `bigint` otherwise (within int64/uint64); integers beyond 64 bits and
 * numbers with a fraction or exponent are {@link JsonFloat}.
 */
export type QmpValue = null | boolean | number | bigint | string | JsonFloat | QmpValue[] | QmpObject;
/** A JSON object as parsed (own keys only). */
export interface QmpObject {
  [key: string]: QmpValue;
}

/** Thrown by {@link parseQmpJson}; the message is QEMU's "JSON parse error, ..." text. */
export class JsonParseError extends Error {}

const INT64_MIN = -(2n ** 63n);
const KEYWORD = /[A-Za-z_][A-Za-z0-9_]*/y;
const NUMBER = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const UINT64_MAX = 2n ** 64n - 1n;

/** True for a plain JSON object value (not an array, not null, not a float). */
export function isQmpObject(v: unknown): v is QmpObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof JsonFloat);
}

/** Parse one JSON text. Throws JsonParseError with a QEMU-like message. */
export function parseQmpJson(text: string): QmpValue {
  let i = 0;
  const n = text.length;
  const ws = (): void => {
    while (i < n && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++;
  };
  const fail = (what: string): never => {
    throw new JsonParseError(`JSON parse error, ${what}`);
  };
  const value = (depth: number): QmpValue => {
    if (depth > 1024) fail('nesting too deep');
    ws();
    if (i >= n) return fail('expecting value');
    const c = text[i]!;
    if (c === '{') {
      i++;
      const obj: QmpObject = {};
      ws();
      if (text[i] === '}') {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"' && text[i] !== "'") {
          value(depth + 1); // its own error first ("expecting value", "invalid keyword ..."), as in QEMU
          fail('key is not a string in object');
        }
        const key = str();
        ws();
        if (text[i] !== ':') fail('missing : in object pair');
        i++;
        if (Object.prototype.hasOwnProperty.call(obj, key)) fail('duplicate key');
        const v = value(depth + 1);
        if (key === '__proto__') Object.defineProperty(obj, key, { value: v, enumerable: true, writable: true, configurable: true });
        else obj[key] = v;
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return obj;
        }
        fail('expected separator in dict');
      }
    }
    if (c === '[') {
      i++;
      const arr: QmpValue[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return arr;
        }
        fail('expected separator in list');
      }
    }
    if (c === '"' || c === "'") return str();
    if (c === '-' || (c >= '0' && c <= '9')) return num();
    KEYWORD.lastIndex = i;
    const m = KEYWORD.exec(text);
    if (m) {
      i += m[0].length;
      if (m[0] === 'true') return true;
      if (m[0] === 'false') return false;
      if (m[0] === 'null') return null;
      return fail(`invalid keyword '${m[0]}'`);
    }
    return fail('expecting value');
  };
  const str = (): string => {
    const quote = text[i]!;
    i++;
    let out = '';
    let run = i; // start of the plain run not yet copied to `out`
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c !== 0x5c && c !== quote.charCodeAt(0) && c >= 0x20) {
        i++;
        continue;
      }
      out += text.slice(run, i);
      if (c === quote.charCodeAt(0)) {
        i++;
        return out;
      }
      if (c < 0x20) fail('invalid character in string');
      const e = text[i + 1];
      i += 2;
      switch (e) {
        case '"': out += '"'; break;
        case "'": out += "'"; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const hex = text.slice(i, i + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('invalid escape sequence in string');
          out += String.fromCharCode(parseInt(hex, 16));
          i += 4;
          break;
        }
        default:
          fail('invalid escape sequence in string');
      }
      run = i;
    }
    return fail('missing closing quote in string');
  };
  const num = (): QmpValue => {
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) return fail('invalid number');
    i += m[0].length;
    if (m[2] !== undefined || m[3] !== undefined) return new JsonFloat(Number(m[0]));
    if (m[0].length <= 15) return Number(m[0]) || 0; // safe integer for sure (|| 0 turns -0 into 0)
    const big = BigInt(m[0]);
    if (big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(big);
    if (big >= INT64_MIN && big <= UINT64_MAX) return big;
    return new JsonFloat(Number(m[0]));
  };
  const v = value(0);
  ws();
  if (i < n) fail('expecting end of input');
  return v;
}

const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

function escapeString(s: string): string {
  if (PLAIN.test(s)) return '"' + s + '"';
  let out = '"';
  for (let k = 0; k < s.length; k++) {
    const c = s.charCodeAt(k);
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += '\\\\';
    else if (c === 0x08) out += '\\b';
    else if (c === 0x0c) out += '\\f';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c === 0x09) out += '\\t';
    else if (c < 0x20 || c >= 0x7f) out += '\\u' + c.toString(16).toUpperCase().padStart(4, '0');
    else out += s[k];
  }
  return out + '"';
}

/** Format a double like C's "%.17g" (what QEMU uses for QNUM_DOUBLE). */
export function formatDouble(v: number): string {
  if (Number.isNaN(v)) return 'nan'; // what QEMU prints (not JSON, but exactly QEMU)
  if (!Number.isFinite(v)) return v > 0 ? 'inf' : '-inf';
  if (v === 0) return Object.is(v, -0) ? '-0' : '0';
  const exp = Math.floor(Math.log10(Math.abs(v)));
  if (exp < -4 || exp >= 17) {
    const [mant, e] = v.toExponential(16).split('e') as [string, string];
    const m = mant.includes('.') ? mant.replace(/0+$/, '').replace(/\.$/, '') : mant;
    const en = Number(e);
    return `${m}e${en < 0 ? '-' : '+'}${String(Math.abs(en)).padStart(2, '0')}`;
  }
  const p = v.toPrecision(17);
  return p.includes('.') ? p.replace(/0+$/, '').replace(/\.$/, '') : p;
}

/**
 * Values the serializer accepts: QmpValue, plain objects and arrays of them,
 * bigint; `undefined` members are skipped; anything else prints as null.
 */
export type JsonOut = unknown;

const bucketCache = new Map<string, number>();

/**
 * The QDict bucket of a key in QEMU (tdb hash modulo 512). QEMU prints a
 * dict's members bucket by bucket, so this, not insertion order, decides
 * member order in every QMP reply and event (verified against every
 * captured reply: parameters, MigrationInfo, MigrationStats, greeting, ...).
 */
export function qdictBucket(key: string): number {
  let b = bucketCache.get(key);
  if (b !== undefined) return b;
  const bytes = Buffer.from(key, 'utf8');
  let v = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) v = (v + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  b = ((Math.imul(1103515243, v) + 12345) >>> 0) % 512;
  if (bucketCache.size < 4096) bucketCache.set(key, b);
  return b;
}

/**
 * Serialize like QEMU 7.2's QMP monitor. Integral `number`s print as
 * integers, other numbers with "%.17g"; `bigint` prints exactly;
 * object members whose value is `undefined` are omitted; key order is the
 * object's insertion order.
 */
export function toQmpJson(v: JsonOut): string {
  if (v === null || v === undefined || typeof v === 'function' || typeof v === 'symbol') return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return Number.isInteger(v) && Math.abs(v) < 2 ** 64 ? BigInt(v).toString() : formatDouble(v);
  if (typeof v === 'string') return escapeString(v);
  if (v instanceof JsonFloat) return formatDouble(v.value);
  if (Array.isArray(v)) {
    return '[' + (v as readonly unknown[]).map((x) => toQmpJson(x)).join(', ') + ']';
  }
  const entries = Object.entries(v as object).filter(([, x]) => x !== undefined && typeof x !== 'function');
  // Bucket order; within a bucket QEMU prints the later-inserted member first.
  const order = entries.map((e, idx) => ({ e, idx, b: qdictBucket(e[0]) }));
  order.sort((x, y) => x.b - y.b || y.idx - x.idx);
  const parts = order.map(({ e: [k, x] }) => `${escapeString(k)}: ${toQmpJson(x)}`);
  return '{' + parts.join(', ') + '}';
}
