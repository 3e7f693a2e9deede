/**
 * The bulk worker: a thread of the destination that reads the main channel's
 * postcopy background stream while the main thread serves faults (issue 4
 * §6: a page request must not wait behind the background stream in the
 * event loop). Each 'run' reads a duplicate descriptor of the socket into one
 * reused buffer (net.Socket `onread`: no allocation per read), parses it with
 * RamStreamParser straight into shared guest RAM, and hands the stream back
 * at the first item the parser does not take, at EOF, on an error, or when
 * the main thread aborts. A fault's page placed here is posted as 'wanted'.
 * A byte counter in shared memory tells the main thread's watchdog that data
 * arrives.
 */
import { Socket } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { RamStreamParser } from './ram-stream.js';
import type { OnReadOpts } from 'node:net';
import type { FromWorker, StopReason, ToWorker } from './messages.js';

/** Bytes per read. */
const READ_BUFFER = 256 * 1024;

const port = parentPort!;
/** Bytes read from sockets so far, in shared memory: the main thread's watchdog and statistics read it. */
const bytesRead = new Float64Array((workerData as { bytesRead: SharedArrayBuffer }).bytesRead);
const buffer = Buffer.allocUnsafe(READ_BUFFER);
let abortCurrent: (() => void) | undefined;

const post = (m: FromWorker): void => port.postMessage(m);

port.on('message', (m: ToWorker) => {
  if (m.type === 'abort') abortCurrent?.();
  else run(m);
});

function run(m: Extract<ToWorker, { type: 'run' }>): void {
  const parser = new RamStreamParser(m.blocks, new Set(m.ramSections), m.start, (idstr, page) => post({ type: 'wanted', idstr, page }));
  let socket: Socket | undefined;
  let done = false;
  const finish = (reason: StopReason, error?: string): void => {
    if (done) return;
    done = true;
    abortCurrent = undefined;
    // The descriptor is closed through a socket handle even when none read it: fs.closeSync
    // of a descriptor this thread did not open through fs draws a warning from Node.
    (socket ?? new Socket({ fd: m.fd, readable: false, writable: false })).destroy();
    post({
      type: 'stopped',
      reason,
      ...(error !== undefined && { error }),
      at: parser.at,
      sectionId: parser.sectionId,
      lastBlock: parser.lastBlock?.idstr,
      consumed: parser.consumed,
      rest: parser.rest(),
      counters: parser.counters,
    });
  };
  abortCurrent = () => finish('abort');
  parser.push(m.prefix);
  if (parser.stopped) return finish('item');
  // `onread` is accepted by the constructor (Node ≥ 12) though @types/node lists it only for connect()
  const opts: ConstructorParameters<typeof Socket>[0] & { onread: OnReadOpts } = {
    fd: m.fd,
    readable: true,
    writable: false,
    // never shut the socket down: the main thread writes the return path on it
    allowHalfOpen: true,
    onread: {
      buffer,
      callback: (n: number, buf: Uint8Array): boolean => {
        bytesRead[0] += n;
        parser.push(buf.subarray(0, n));
        if (!parser.stopped) return true;
        queueMicrotask(() => finish('item'));
        return false;
      },
    },
  };
  socket = new Socket(opts);
  socket.on('end', () => finish('eof'));
  socket.on('close', () => finish('eof'));
  socket.on('error', (e) => finish('error', e.message));
}
