/**
 * The package's one native helper (native/os.c → build/native/os.node, built
 * at install time when a C compiler and Node's headers are there): madvise
 * for huge pages and dup for the bulk worker. Everything that uses it has a
 * fallback when it is missing.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { findPackageRoot } from './hotpath/wasm.js';

export interface NativeOs {
  /** madvise(MADV_HUGEPAGE) on the 2 MiB-aligned interior of `view`. */
  advise(view: Uint8Array): { address: number; length: number };
  /** Where `view`'s first byte lives. */
  address(view: Uint8Array): number;
  /** A new close-on-exec descriptor of the same open file. */
  dup(fd: number): number;
}

let cached: NativeOs | null | undefined;

/** The native helper, or null when it was not built. */
export function nativeOs(): NativeOs | null {
  if (cached !== undefined) return cached;
  const file = join(findPackageRoot(), 'build', 'native', 'os.node');
  cached = existsSync(file) ? (createRequire(import.meta.url)(file) as NativeOs) : null;
  return cached;
}
