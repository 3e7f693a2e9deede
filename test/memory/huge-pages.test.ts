/**
 * Guest RAM advised for transparent huge pages (native/os.c). The
 * advice is visible as the "hg" flag of the mapping in /proc/self/smaps,
 * whether or not the kernel finds a free huge page at fault time, so these
 * checks do not depend on the host's memory.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { Hotpath } from '../../src/hotpath/hotpath.js';
import { findPackageRoot } from '../../src/hotpath/wasm.js';
import { plainBlockAllocator } from '../../src/destination/ram-loader.js';
import { GuestMemory } from '../../src/memory/index.js';
import { adviseHugePages, HUGE_PAGE_SIZE, hugePagesAvailable, viewAddress } from '../../src/memory/huge-pages.js';

const MiB = 1 << 20;

function compilerPresent(): boolean {
  try {
    execFileSync(process.env.CC || 'cc', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** VmFlags of the mapping of this process that contains `address`. */
function vmFlagsAt(address: number): string[] {
  const lines = readFileSync('/proc/self/smaps', 'utf8').split('\n');
  let inside = false;
  for (const line of lines) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (m) {
      inside = parseInt(m[1]!, 16) <= address && address < parseInt(m[2]!, 16);
    } else if (inside && line.startsWith('VmFlags:')) {
      return line.slice('VmFlags:'.length).trim().split(/\s+/);
    }
  }
  throw new Error(`no mapping contains 0x${address.toString(16)}`);
}

const built = existsSync(join(findPackageRoot(), 'build', 'native', 'os.node'));

describe('huge pages for guest RAM', () => {
  it('the native helper is built wherever a C compiler is', () => {
    if (process.platform !== 'linux' || !compilerPresent()) return;
    expect(built).toBe(true);
    expect(hugePagesAvailable()).toBe(true);
  });

  describe.skipIf(!built)('with the native helper', () => {
    it('advises the 2 MiB-aligned interior of a view and nothing outside it', () => {
      const bytes = new Uint8Array(7 * MiB);
      const at = viewAddress(bytes)!;
      const advice = adviseHugePages(bytes.subarray(1))!;
      expect(advice.address % HUGE_PAGE_SIZE).toBe(0);
      expect(advice.address).toBeGreaterThan(at);
      expect(advice.address - at).toBeLessThanOrEqual(HUGE_PAGE_SIZE);
      expect(advice.address + advice.length).toBeLessThanOrEqual(at + bytes.length);
      expect(advice.length).toBeGreaterThanOrEqual(4 * MiB);
      expect(advice.length % HUGE_PAGE_SIZE).toBe(0);
      expect(vmFlagsAt(advice.address)).toContain('hg');
      expect(vmFlagsAt(advice.address + advice.length - 1)).toContain('hg');
      // A view smaller than a huge page holds none: nothing advised.
      expect(adviseHugePages(new Uint8Array(HUGE_PAGE_SIZE - 4096))!.length).toBe(0);
    });

    it('GuestMemory puts a large block on a huge page boundary and advises all of it; contents are untouched', () => {
      const hp = Hotpath.create();
      const gm = GuestMemory.create(hp, [
        { idstr: 'small', usedLength: 64 * 1024 },
        { idstr: 'ram', usedLength: 6 * MiB },
      ]);
      const ram = gm.block('ram');
      expect(ram.base % HUGE_PAGE_SIZE).toBe(0);
      const at = viewAddress(ram.bytes())!;
      expect(at % HUGE_PAGE_SIZE).toBe(0);
      expect(vmFlagsAt(at)).toContain('hg');
      expect(vmFlagsAt(at + ram.usedLength - 1)).toContain('hg');
      expect(ram.bytes().every((b) => b === 0)).toBe(true);
      ram.bytes().fill(0x5a, 4096, 8192);
      expect(ram.bytes()[4096]).toBe(0x5a);
      expect(ram.bytes()[8192]).toBe(0);
    });

    it('the default destination allocator advises the blocks it adopts', () => {
      const b = plainBlockAllocator('pc.ram', 8 * MiB, 0);
      const at = viewAddress(b.bytes)!;
      const firstHuge = Math.ceil(at / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
      expect(vmFlagsAt(firstHuge)).toContain('hg');
      expect(b.zeroed).toBe(true);
    });

    it('rejects what is not a Uint8Array', async () => {
      const native = (await import('node:module')).createRequire(import.meta.url)(
        join(findPackageRoot(), 'build', 'native', 'os.node'),
      ) as { advise(v: unknown): unknown };
      expect(() => native.advise(new Uint16Array(8))).toThrow('expected a Uint8Array');
      expect(() => native.advise({})).toThrow('expected a Uint8Array');
    });
  });

  it.skipIf(!built)('a kernel that refuses the advice (no THP: EINVAL) leaves RAM usable on 4 KiB pages and is not asked again', async () => {
    vi.resetModules();
    let calls = 0;
    vi.doMock('node:module', async (orig) => {
      const real = await orig<typeof import('node:module')>();
      const createRequire = (url: string | URL) => () => ({
        advise: () => {
          calls++;
          throw new Error('Invalid argument');
        },
        address: () => 0,
      });
      return { ...real, createRequire, default: { ...real, createRequire } };
    });
    try {
      const fresh = await import('../../src/memory/huge-pages.js');
      expect(fresh.adviseHugePages(new Uint8Array(4 * MiB))).toBeUndefined();
      expect(fresh.adviseHugePages(new Uint8Array(4 * MiB))).toBeUndefined();
      expect(calls).toBe(1);
      expect(fresh.hugePagesAvailable()).toBe(false);
    } finally {
      vi.doUnmock('node:module');
      vi.resetModules();
    }
  });

  it('POSTCOPY_NO_THP=1 turns the advice off', async () => {
    vi.resetModules();
    process.env.POSTCOPY_NO_THP = '1';
    try {
      const fresh = await import('../../src/memory/huge-pages.js');
      expect(fresh.hugePagesAvailable()).toBe(false);
      expect(fresh.adviseHugePages(new Uint8Array(4 * MiB))).toBeUndefined();
    } finally {
      delete process.env.POSTCOPY_NO_THP;
      vi.resetModules();
    }
  });
});
