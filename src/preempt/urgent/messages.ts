/** Messages between the source's main thread (urgent-server.ts) and its urgent worker (worker.ts). */
import type { ThreadPriority } from '../../threads.js';

/** A block of guest RAM and its dirty bitmap, in shared memory. */
export interface UrgentBlock {
  idstr: string;
  usedLength: number;
  bytes: Uint8Array;
  /** The source's dirty bitmap: a page is claimed by clearing its bit (Atomics). */
  dirty: Uint32Array;
}

/** Shared counters the worker adds to (Float64Array indices). */
export const Counter = {
  /** Pages claimed from the dirty bitmaps. */
  CLAIMED: 0,
  /** Requests served. */
  REQUESTS: 1,
  /** Requested pages already sent (skipped). */
  SKIPPED: 2,
  /** Bytes written on the preempt channel. */
  BYTES: 3,
  /** Pages zeroed after sending (release-ram). */
  RELEASED: 4,
  SIZE: 5,
} as const;

export type ToWorker =
  | {
      type: 'run';
      /** Duplicates of the main channel's descriptor (read: the return path) and of the preempt channel's (write). */
      rpFd: number;
      preemptFd: number;
      /** Return-path bytes already read and not consumed, first. */
      prefix: Uint8Array;
      blocks: UrgentBlock[];
      lastReqBlock: string | undefined;
      /** release-ram: zero a page once it is sent. */
      release: boolean;
    }
  | { type: 'abort' };

export type StopReason = 'message' | 'eof' | 'error' | 'abort';

/** The worker's first message when it was asked to change its thread's priority. */
export type PriorityReport = { type: 'priority'; priority: ThreadPriority };

export type FromWorker = {
  type: 'stopped';
  reason: StopReason;
  error?: string;
  /** Return-path bytes taken, from the first byte of the prefix. */
  consumed: number;
  /** Bytes read and not taken (the message it stopped at, and after). */
  rest: Uint8Array;
  lastReqBlock: string | undefined;
  /** True when a write on the preempt channel failed (the channel is unusable). */
  preemptBroken: boolean;
};
