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
import type { Socket } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { closeDescriptor, readDuplicate } from '../../transport/hold.js';
import { RamStreamParser } from './ram-stream.js';
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
    if (socket) socket.destroy();
    else closeDescriptor(m.fd);
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
  socket = readDuplicate(
    m.fd,
    buffer,
    (bytes) => {
      bytesRead[0] += bytes.length;
      parser.push(bytes);
      return !parser.stopped;
    },
    (why, error) => finish(why === 'taken' ? 'item' : why, error),
  );
}
