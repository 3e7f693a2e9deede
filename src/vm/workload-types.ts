/** Shared definitions of the workload controller and its worker. */
export type { WorkloadSpec, WorkloadPattern } from './options.js';

/** Control word: 1 = the main thread wants the workload running. */
export const CONTROL_RUN = 0;
/** Control word: the worker's acknowledged state (1 running, 0 paused/stopped). */
export const CONTROL_STATE = 1;
/** Control word: cpu-throttle-percentage (0..99). */
export const CONTROL_THROTTLE = 2;
/** Control word: non-zero asks the worker to exit. */
export const CONTROL_QUIT = 3;
/** Control word: page visits so far (wraps). */
export const CONTROL_VISITS = 4;
/** Control word: 1 = postcopy: check the received bitmap before touching a page (fault path). */
export const CONTROL_POSTCOPY = 5;
/** Control word: byte offset in the shared memory of the first block's received-bitmap words. */
export const CONTROL_BITMAP = 6;
/** Control word (futex): 1 while the worker waits for a faulted page, 0 once the main thread placed it. */
export const CONTROL_FAULT = 7;
/** Control word: faults taken so far. */
export const CONTROL_FAULTS = 8;
/** Control word: microseconds spent blocked on faults (wraps after ~71 min). */
export const CONTROL_BLOCKED_US = 9;
/** Control word: longest single block on a fault, microseconds. */
export const CONTROL_MAX_BLOCKED_US = 10;
/** Number of control words. */
export const CONTROL_WORDS = 16;

/** Worker → main thread: the page of block `block` (index) is missing; the worker waits on CONTROL_FAULT. */
export interface FaultMessage {
  type: 'fault';
  block: number;
  page: number;
}

/** Worker → main thread (trace option): a faulted page came in; `word` = its first 32-bit word as read. */
export interface FaultTraceMessage {
  type: 'trace';
  page: number;
  word: number;
}
