/**
 * Builds the test guest (a 32-bit multiboot kernel) with the host's gcc at test time.
 * The output is cached under build/guest/ by a hash of the sources and flags.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Directory holding start.S, guest.c and guest.ld. */
export const GUEST_SOURCE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), 'src');
/** Default output directory (git-ignored). */
export const GUEST_BUILD_DIR = resolve(GUEST_SOURCE_DIR, '../../../build/guest');

const SOURCES = ['start.S', 'guest.c'];
const LINKER_SCRIPT = 'guest.ld';
const CFLAGS = [
  '-m32', '-march=i686', '-ffreestanding', '-nostdlib', '-fno-pie', '-no-pie', '-O2',
  '-fno-stack-protector', '-fno-asynchronous-unwind-tables', '-mgeneral-regs-only', '-fno-builtin',
  '-Wall', '-Wextra', '-Werror',
];

/**
 * Compile and link the guest; returns the path of the ELF image (multiboot v1
 * with the address fields, loaded at 1 MiB), ready for `qemu-system-x86_64 -kernel`.
 * Rebuilds only when the sources or flags changed. `gcc` may be overridden with $CC.
 */
export async function buildGuest(outDir: string = GUEST_BUILD_DIR): Promise<string> {
  const hash = createHash('sha256');
  for (const name of [...SOURCES, LINKER_SCRIPT]) hash.update(name).update(readFileSync(join(GUEST_SOURCE_DIR, name)));
  hash.update(CFLAGS.join(' '));
  const out = join(outDir, `guest-${hash.digest('hex').slice(0, 12)}.elf`);
  if (existsSync(out)) return out;
  mkdirSync(outDir, { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  const cc = process.env['CC'] ?? 'gcc';
  try {
    await run(cc, [
      ...CFLAGS,
      `-Wl,-T,${join(GUEST_SOURCE_DIR, LINKER_SCRIPT)}`, '-Wl,--build-id=none', '-Wl,-z,noexecstack',
      '-o', tmp,
      ...SOURCES.map((s) => join(GUEST_SOURCE_DIR, s)),
    ]);
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`building the test guest failed: ${err.stderr || err.message}`);
  }
  renameSync(tmp, out); // atomic: parallel test files may build at the same time
  return out;
}
