/**
 * RAM ↔ file (`--mem-path`) and the `x-ram-digest` QMP extension: SHA-256
 * of every RAM block's used length.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type { GuestMemory } from '../memory/guest-memory.js';

const CHUNK = 4 << 20;

/** One entry of x-ram-digest. */
export interface BlockDigest {
  idstr: string;
  usedLength: number;
  sha256: string;
}

/** SHA-256 of each block (hex), in block order. */
export function ramDigest(mem: GuestMemory | undefined): { blocks: BlockDigest[] } {
  if (!mem) return { blocks: [] };
  const buf = Buffer.allocUnsafe(CHUNK);
  return {
    blocks: mem.blocks.map((b) => {
      const h = createHash('sha256');
      const bytes = b.bytes();
      for (let off = 0; off < b.usedLength; off += CHUNK) {
        const n = Math.min(CHUNK, b.usedLength - off);
        buf.set(bytes.subarray(off, off + n));
        h.update(buf.subarray(0, n));
      }
      return { idstr: b.idstr, usedLength: b.usedLength, sha256: h.digest('hex') };
    }),
  };
}

/**
 * Loads RAM from `file` when it exists and its size equals the RAM's total
 * (blocks concatenated in order). Returns whether it loaded.
 */
export function loadRamFile(mem: GuestMemory, file: string): boolean {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return false;
  }
  if (!st.isFile() || st.size !== mem.totalBytes) return false;
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    let pos = 0;
    for (const b of mem.blocks) {
      const bytes = b.bytes();
      for (let off = 0; off < b.usedLength; ) {
        const n = fs.readSync(fd, buf, 0, Math.min(CHUNK, b.usedLength - off), pos);
        if (n <= 0) throw new Error(`${file}: short read`);
        bytes.set(buf.subarray(0, n), off);
        off += n;
        pos += n;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return true;
}

/** Writes RAM (blocks concatenated in order) to `file`, replacing it. */
export function saveRamFile(mem: GuestMemory, file: string): void {
  const fd = fs.openSync(file, 'w');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    let pos = 0;
    for (const b of mem.blocks) {
      const bytes = b.bytes();
      for (let off = 0; off < b.usedLength; off += CHUNK) {
        const n = Math.min(CHUNK, b.usedLength - off);
        buf.set(bytes.subarray(off, off + n));
        let w = 0;
        while (w < n) w += fs.writeSync(fd, buf, w, n - w, pos + w);
        pos += n;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}
