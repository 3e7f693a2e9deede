/**
 * Holding a socket's reading: the main thread stops reading a connected
 * socket so that another reader (the destination's bulk worker, on a
 * duplicate of its descriptor) can, and takes back the bytes Node had already
 * read. Node has no public call for this; it rests on the stream handle's
 * readStop()/readStart() and its `reading` flag, which net.Socket itself uses
 * (stable since Node 12). While held, `reading` stays true so that Node's own
 * _read() does not start reading again. Writing is unaffected.
 */
import { Socket } from 'node:net';
import type { Readable } from 'node:stream';

interface StreamHandle {
  fd?: number;
  reading?: boolean;
  readStop?: () => number;
  readStart?: () => number;
}

function handleOf(s: Readable): StreamHandle | undefined {
  if (!(s instanceof Socket) || s.destroyed || s.connecting) return undefined;
  const h = (s as unknown as { _handle?: StreamHandle | null })._handle;
  if (!h || typeof h.readStop !== 'function' || typeof h.readStart !== 'function') return undefined;
  return h;
}

/** The descriptor of a connected socket (undefined for other streams). */
export function socketFd(s: Readable): number | undefined {
  const fd = handleOf(s)?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * Stops reading `s` and returns what Node had read and buffered, in order;
 * undefined when `s` is not a connected socket (or has ended).
 */
export function holdReading(s: Readable): Uint8Array[] | undefined {
  const h = handleOf(s);
  if (!h || s.readableEnded) return undefined;
  s.pause();
  if (h.readStop!() !== 0) return undefined;
  h.reading = true;
  const out: Uint8Array[] = [];
  for (let c = s.read() as Uint8Array | null; c !== null; c = s.read() as Uint8Array | null) out.push(c);
  return out;
}

/**
 * Reads `s` again after holdReading(). The handle is restarted here: a
 * stream whose last _read() is still pending (Readable's own `reading` state)
 * would not call _read() again on resume(), and would never see the data or
 * the EOF that arrived while held.
 */
export function releaseReading(s: Readable): void {
  const h = handleOf(s);
  if (!h) return;
  const err = h.readStart!();
  if (err !== 0 && err !== undefined) {
    s.destroy(new Error(`read: restarting the socket failed (${err})`));
    return;
  }
  h.reading = true;
  s.resume();
}
