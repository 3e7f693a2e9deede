/**
 * RamImage: the content of one RAM block rebuilt from page records, kept in
 * plain Buffers allocated lazily in 64 KiB chunks (pages never written, or
 * written as ZERO with fill 0, cost nothing). Not the hot path.
 */

import { createHash } from 'node:crypto';
import { TARGET_PAGE_SIZE } from '../wire/constants.js';

const CHUNK_BYTES = 64 << 10;
const PAGES_PER_CHUNK = CHUNK_BYTES / TARGET_PAGE_SIZE;
const ZERO_CHUNK = Buffer.alloc(CHUNK_BYTES);

/** One RAM block's rebuilt content. */
export class RamImage {
  readonly idstr: string;
  readonly usedLength: number;
  /** Allocated chunks by index (a Map: a huge, mostly unsent block costs nothing). */
  private readonly chunks = new Map<number, Buffer>();
  private readonly nChunks: number;

  constructor(idstr: string, usedLength: number) {
    this.idstr = idstr;
    this.usedLength = usedLength;
    this.nChunks = Math.ceil(usedLength / CHUNK_BYTES);
  }

  /** A writable view of the page at `offset` (allocates its chunk). Offset must be checked by the caller. */
  page(offset: number): Buffer {
    const i = Math.floor(offset / CHUNK_BYTES);
    let c = this.chunks.get(i);
    if (!c) {
      c = Buffer.alloc(Math.min(CHUNK_BYTES, this.usedLength - i * CHUNK_BYTES));
      this.chunks.set(i, c);
    }
    const o = offset - i * CHUNK_BYTES;
    return c.subarray(o, o + TARGET_PAGE_SIZE);
  }

  /** Fill a page with one byte (ZERO records); fill 0 on an untouched chunk allocates nothing. */
  fill(offset: number, value: number): void {
    const i = Math.floor(offset / CHUNK_BYTES);
    if (value === 0 && !this.chunks.has(i)) return;
    this.page(offset).fill(value);
  }

  /** Copy a whole page in. */
  write(offset: number, data: Uint8Array): void {
    this.page(offset).set(data);
  }

  /** Bytes actually allocated (for tests and limits). */
  get allocatedBytes(): number {
    let n = 0;
    for (const c of this.chunks.values()) n += c.length;
    return n;
  }

  /** Hex SHA-256 of the whole block (usedLength bytes). */
  sha256(): string {
    const h = createHash('sha256');
    for (let i = 0; i < this.nChunks; i++) {
      const len = Math.min(CHUNK_BYTES, this.usedLength - i * CHUNK_BYTES);
      h.update(this.chunks.get(i) ?? ZERO_CHUNK.subarray(0, len));
    }
    return h.digest('hex');
  }

  /** Copy of the whole block (for tests; allocates usedLength bytes). */
  toBuffer(): Buffer {
    const out = Buffer.alloc(this.usedLength);
    for (const [i, c] of this.chunks) c.copy(out, i * CHUNK_BYTES);
    return out;
  }
}

/** Pages per allocation chunk (exported for tests). */
export const RAM_IMAGE_PAGES_PER_CHUNK = PAGES_PER_CHUNK;
