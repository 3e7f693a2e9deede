/** Messages between the main thread (bulk-reader.ts) and the bulk worker (worker.ts). */
import type { BulkBlock, ParserStart, ResumePoint } from './ram-stream.js';

/** Main → worker: read the RAM sections from `fd` (after `prefix`), or stop now. */
export type ToWorker =
  | {
      type: 'run';
      /** A duplicate descriptor of the main channel's socket; the worker closes it. */
      fd: number;
      /** Bytes already read from the socket and not consumed, first. */
      prefix: Uint8Array;
      blocks: BulkBlock[];
      ramSections: number[];
      start: ParserStart;
    }
  | { type: 'abort' };

/** Why the worker handed the stream back. */
export type StopReason = 'item' | 'eof' | 'error' | 'abort';

/** Worker → main. */
export type FromWorker =
  | { type: 'wanted'; idstr: string; page: number }
  | {
      type: 'stopped';
      reason: StopReason;
      error?: string;
      at: ResumePoint;
      sectionId: number;
      lastBlock: string | undefined;
      /** Bytes taken, from the first byte of the prefix. */
      consumed: number;
      /** Bytes read and not taken (the item it stopped at, and after). */
      rest: Uint8Array;
      counters: { normal: number; zero: number };
    };
