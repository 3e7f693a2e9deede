/** Test helpers for the wire codecs. */
import { ProtocolError } from '../../src/errors.js';
import { ByteCursor } from '../../src/wire/cursor.js';
import { ByteWriter, type WireSink } from '../../src/wire/writer.js';

/** Bytes from a spec-style hex string; `"text"` runs are ASCII, `|` is ignored. */
export function hex(s: string): Uint8Array {
  const out: number[] = [];
  const re = /"([^"]*)"|([0-9a-fA-F]+)|[\s|]+/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null) {
    if (m[1] !== undefined) for (const ch of m[1]) out.push(ch.charCodeAt(0));
    else if (m[2] !== undefined) {
      if (m[2].length % 2) throw new Error(`odd hex: ${m[2]}`);
      for (let i = 0; i < m[2].length; i += 2) out.push(parseInt(m[2].slice(i, i + 2), 16));
    }
  }
  return Uint8Array.from(out);
}

export function enc(fn: (w: WireSink) => void): Uint8Array {
  const w = new ByteWriter(64);
  fn(w);
  return w.toBytes();
}

export function cur(b: Uint8Array, base = 0): ByteCursor {
  return new ByteCursor(b, 0, base);
}

/** The ProtocolError `fn` throws (fails the test if it throws nothing or something else). */
export function protoErr(fn: () => unknown): ProtocolError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ProtocolError) return e;
    throw e;
  }
  throw new Error('expected a ProtocolError, nothing was thrown');
}

/**
 * Connect to a unix socket that a just-started process will create, retrying
 * until it accepts (the file can exist a moment before the listen()).
 */
export async function connectRetry(path: string, timeoutMs = 15_000): Promise<import('node:net').Socket> {
  const { connect } = await import('node:net');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise((resolve, reject) => {
        const s = connect(path);
        s.once('connect', () => {
          s.removeAllListeners('error');
          s.on('error', () => undefined);
          resolve(s);
        });
        s.once('error', (e) => {
          s.destroy();
          reject(e);
        });
      });
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}
