// Builds native/os.c into build/native/os.node with the C
// compiler and the headers of the Node that runs this script. Optional: when
// there is no compiler or no headers, it says so and exits 0, and guest RAM
// stays on 4 KiB pages (src/memory/huge-pages.ts falls back).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'build', 'native', 'os.node');
const include = join(dirname(process.execPath), '..', 'include', 'node');
const cc = process.env.CC || 'cc';
if (process.platform !== 'linux') {
  console.log('build:native: skipped (huge pages are a Linux feature)');
} else if (!existsSync(join(include, 'node_api.h'))) {
  console.log(`build:native: skipped, no Node headers at ${include}: guest RAM stays on 4 KiB pages`);
} else {
  mkdirSync(dirname(out), { recursive: true });
  try {
    execFileSync(cc, ['-O2', '-Wall', '-shared', '-fPIC', `-I${include}`, join(root, 'native', 'os.c'), '-o', out], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
  } catch (e) {
    console.log(`build:native: ${cc} failed (${e.message.split('\n')[0]}): guest RAM stays on 4 KiB pages`);
  }
}
