/**
 * Record files of the proxy: a sequence of msgpack values, one per record
 * `{t, dir, conn, kind, fields}` (t = ms since the proxy started; no page
 * payloads). The first record is kind `PROXY_RECORD` with the format version.
 */

import fs from 'node:fs';
import { Packr, unpackMultiple } from 'msgpackr';
import type { ProxyFieldValue } from './decoder.js';

/** One record. `dir` is 'proxy' for the proxy's own events (CONNECT, CUT, CLOSE, DECODE_ERROR). */
export interface ProxyRecord {
  t: number;
  dir: 'main' | 'rp' | 'proxy';
  conn: number;
  kind: string;
  fields: Record<string, ProxyFieldValue>;
}

/** Kind of the first record of a file. */
export const RECORD_MAGIC_KIND = 'PROXY_RECORD';
/** Record format version. */
export const RECORD_VERSION = 1;

const packr = new Packr({ useRecords: false, moreTypes: false });

/** Appends records to a file. */
export class RecordWriter {
  private readonly out: fs.WriteStream;
  private failed: Error | undefined;

  constructor(readonly path: string, header: Record<string, ProxyFieldValue> = {}) {
    this.out = fs.createWriteStream(path);
    this.out.on('error', (e) => (this.failed = e));
    this.write({ t: 0, dir: 'proxy', conn: 0, kind: RECORD_MAGIC_KIND, fields: { version: RECORD_VERSION, ...header } });
  }

  /** Queue one record. */
  write(rec: ProxyRecord): void {
    if (this.failed) return;
    this.out.write(packr.pack(rec));
  }

  /** Flush and close; rejects with the first write error, if any. */
  close(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.out.end(() => (this.failed ? reject(this.failed) : resolve()));
    });
  }
}

/** Decode a whole record file's bytes; throws if it is not a proxy record. */
export function decodeRecords(bytes: Uint8Array): ProxyRecord[] {
  const NOT = 'not a postcopy proxy record file';
  if (!looksLikeRecord(bytes)) throw new Error(NOT);
  let values: unknown[];
  try {
    values = unpackMultiple(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)) as unknown[];
  } catch (e) {
    throw new Error(`${NOT} (or a damaged one): ${(e as Error).message}`);
  }
  const first = values[0] as Partial<ProxyRecord> | undefined;
  if (!first || first.kind !== RECORD_MAGIC_KIND) throw new Error(NOT);
  return values as ProxyRecord[];
}

/** True if `bytes` start like a record file (a msgpack map, not the "QEVM" stream magic). */
export function looksLikeRecord(bytes: Uint8Array): boolean {
  const b = bytes[0];
  return b !== undefined && ((b & 0xf0) === 0x80 || b === 0xde || b === 0xdf);
}

/** Read a record file. */
export function readRecordFile(path: string): ProxyRecord[] {
  return decodeRecords(fs.readFileSync(path));
}

function fmtValue(v: ProxyFieldValue): string {
  if (typeof v === 'number') return Number.isInteger(v) && v >= 4096 ? `0x${v.toString(16)}` : String(v);
  if (typeof v === 'string') return JSON.stringify(v);
  return JSON.stringify(v);
}

/** One line per record, then item counts per connection, direction and kind. */
export function formatRecords(recs: readonly ProxyRecord[], opts: { pages?: boolean } = {}): string {
  const lines: string[] = [];
  const counts = new Map<string, number>();
  const PAGE_KINDS = new Set(['ZERO', 'PAGE', 'XBZRLE', 'COMPRESS_PAGE', 'EOS']);
  for (const r of recs) {
    if (r.dir !== 'proxy') {
      const key = `conn ${r.conn} ${r.dir} ${r.kind}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    if (!opts.pages && PAGE_KINDS.has(r.kind)) continue;
    const f = Object.entries(r.fields)
      .map(([k, v]) => `${k}=${fmtValue(v)}`)
      .join(' ');
    lines.push(`${r.t.toFixed(3).padStart(11)} ms  #${r.conn} ${r.dir.padEnd(5)} ${r.kind}${f ? ' ' + f : ''}`);
  }
  lines.push('', 'items:');
  for (const [k, n] of [...counts.entries()].sort()) lines.push(`  ${k}: ${n}`);
  return lines.join('\n');
}
