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
/** Number of control words. */
export const CONTROL_WORDS = 8;
