/**
 * Where a worker thread's compiled file is: beside the calling module when
 * that runs compiled (dist/), else the same path under dist/ (tests run the
 * TypeScript sources, and a worker needs JavaScript). Undefined when neither
 * exists (not built): the caller then does the work on its own thread.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findPackageRoot } from './hotpath/wasm.js';

export function workerFile(moduleUrl: string, name: string, srcDir: string): string | undefined {
  const here = fileURLToPath(new URL(`./${name}`, moduleUrl));
  if (existsSync(here)) return here;
  const built = join(findPackageRoot(), 'dist', 'src', srcDir, name);
  return existsSync(built) ? built : undefined;
}
