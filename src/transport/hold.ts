/**
 * Holding a socket's reading: the main thread stops reading a connected
 * socket so that another reader (the destination's bulk worker, on a
 * duplicate of its descriptor) can, and takes back the bytes Node had already
 * read. Node has no public call for this; it rests on the stream handle's
 * readStop()/readStart() and its `reading` flag, which net.Socket itself uses
 * (stable since Node 12). While held, `reading` stays true so that Node's own
 * _read() does not start reading again. Writing is unaffected. The other
 * reader's side is here too: reading a duplicate descriptor, closing one.
 */
import { Socket, type OnReadOpts } from 'node:net';
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

/**
 * Closes a descriptor handed over to this thread (a duplicate nobody reads):
 * through a socket handle, as fs.closeSync of a descriptor this thread did
 * not open through fs draws a warning from Node.
 */
export function closeDescriptor(fd: number): void {
  new Socket({ fd, readable: false, writable: false }).destroy();
}

/** Why reading a duplicate ended. */
export type DuplicateEnd = 'taken' | 'eof' | 'error';

/**
 * Reads a duplicate descriptor of a socket (the other thread keeps its own,
 * and writes on it) into one reused `buffer`: `onChunk` sees each read (the
 * bytes are valid during the call only) and returns false to stop reading.
 * `ended` is called once: 'taken' after a false, else at EOF or an error.
 * Destroying the returned socket closes the duplicate only, never shuts the
 * connection down.
 */
export function readDuplicate(fd: number, buffer: Uint8Array, onChunk: (bytes: Uint8Array) => boolean, ended: (why: DuplicateEnd, error?: string) => void): Socket {
  // `onread` is accepted by the constructor (Node ≥ 12) though @types/node lists it only for connect()
  const opts: ConstructorParameters<typeof Socket>[0] & { onread: OnReadOpts } = {
    fd,
    readable: true,
    writable: false,
    // never shut the socket down: the other thread writes on it
    allowHalfOpen: true,
    onread: {
      buffer,
      callback: (n: number, buf: Uint8Array): boolean => {
        if (onChunk(buf.subarray(0, n))) return true;
        queueMicrotask(() => ended('taken'));
        return false;
      },
    },
  };
  const s = new Socket(opts);
  s.on('end', () => ended('eof'));
  s.on('close', () => ended('eof'));
  s.on('error', (e) => ended('error', e.message));
  return s;
}
