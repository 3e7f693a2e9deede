/** Shared helpers for interop tests against the real QEMU binary. */
export * from './qemu.js';
export * from './migration.js';
