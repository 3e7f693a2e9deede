import { afterEach, describe, expect, it, vi } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { main } from '../../src/cli/main.js';
import { fixtureRam } from '../fixtures/none-1m.pattern.mjs';
import { postcopyStream, precopyStream } from './streams.js';

const FIXTURE = new URL('../fixtures/none-1m.bin', import.meta.url).pathname;
const ROOT = new URL('../../', import.meta.url).pathname;

/** Run `postcopy ARGS` in-process; capture stdout/stderr. */
async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  vi.spyOn(process.stdout, 'write').mockImplementation(((s: string | Uint8Array, cb?: unknown) => {
    out += String(s);
    if (typeof cb === 'function') (cb as () => void)();
    return true;
  }) as typeof process.stdout.write);
  vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void (out += a.join(' ') + '\n'));
  vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void (err += a.join(' ') + '\n'));
  const code = await main(args);
  vi.restoreAllMocks();
  return { code, out, err };
}

afterEach(() => vi.restoreAllMocks());

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'inspect-cli-'));

describe('postcopy inspect', () => {
  it('--json prints one object with configuration, ramBlocks+sha256, pages, devices, eof', async () => {
    const r = await run(['inspect', FIXTURE, '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as Record<string, unknown>;
    expect(j['configuration']).toEqual({ name: 'none' });
    expect(j['ramBlocks']).toEqual([
      expect.objectContaining({ idstr: 'ram', usedLength: 1 << 20, sha256: createHash('sha256').update(fixtureRam()).digest('hex') }),
    ]);
    expect(j['pages']).toMatchObject({ zero: 253, normal: 3, xbzrle: 0 });
    expect((j['devices'] as object[]).map((d) => ({ ...d }))).toEqual([
      expect.objectContaining({ idstr: 'timer', instanceId: 0, versionId: 2, size: 24 }),
      expect.objectContaining({ idstr: 'slirp', instanceId: 0, versionId: 4, size: 131 }),
      expect.objectContaining({ idstr: 'globalstate', instanceId: 0, versionId: 1, size: 104 }),
    ]);
    expect(j['eof']).toBe(true);
    expect((j['devices'] as Record<string, unknown>[])[0]!['fields']).toBeUndefined(); // only with --fields
  });

  it('prints text by default, fields with --fields', async () => {
    const r = await run(['inspect', FIXTURE]);
    expect(r.code).toBe(0);
    expect(r.out).toContain('configuration: machine "none"');
    expect(r.out).toMatch(/FULL\s+id 5\s+globalstate \(0\) v1/);
    expect(r.out).not.toContain('cpu_ticks_offset');
    const f = await run(['inspect', FIXTURE, '--fields']);
    expect(f.out).toContain('cpu_ticks_offset: int64 = ');
  });

  it('exits 1 with "postcopy inspect: <message with offset>" on a truncated or corrupt stream', async () => {
    const bytes = fs.readFileSync(FIXTURE);
    const cut = path.join(tmp, 'cut.bin');
    fs.writeFileSync(cut, bytes.subarray(0, 5000));
    const r = await run(['inspect', cut]);
    expect(r.code).toBe(1);
    const m = /^postcopy inspect: .*stream ended, \d+ more byte\(s\) needed \(at offset (\d+)\)\n$/.exec(r.err);
    expect(m).not.toBeNull();
    // The offset of the item that was cut short: a record header just before the cut.
    expect(Number(m![1])).toBeGreaterThan(5000 - 16);
    expect(Number(m![1])).toBeLessThan(5000);
    const bad = path.join(tmp, 'bad.bin');
    const b = Buffer.from(bytes);
    b[0] = 0x51 ^ 1;
    fs.writeFileSync(bad, b);
    const r2 = await run(['inspect', bad, '--json']);
    expect(r2.code).toBe(1);
    expect(r2.err).toBe('postcopy inspect: stream header: Not a migration stream (at offset 0)\n');
    expect(r2.out).toBe('');
    const r3 = await run(['inspect', path.join(tmp, 'missing.bin')]);
    expect(r3.code).toBe(1);
    expect(r3.err).toMatch(/postcopy inspect: .*ENOENT/);
  });

  it('--vmdesc CAPTURE splits the devices of a postcopy stream field by field', async () => {
    const post = path.join(tmp, 'post.bin');
    fs.writeFileSync(post, postcopyStream().bytes);
    const cap = path.join(tmp, 'pre.bin');
    fs.writeFileSync(cap, precopyStream().bytes);
    const plain = JSON.parse((await run(['inspect', post, '--json'])).out) as { devices: { split: string }[] };
    expect(plain.devices.map((d) => d.split)).toEqual(['footer-scan']);
    const r = await run(['inspect', post, '--vmdesc', cap, '--fields']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('count: uint32 = 7');
    expect((await run(['inspect', post, '--vmdesc', FIXTURE.replace('.bin', '.pattern.mjs')])).err).toMatch(/--vmdesc .*no VMDESCRIPTION/);
    expect((await run(['inspect', post, '--vmdesc'])).code).toBe(2);
  });

  it('usage errors exit 2; --help exits 0', async () => {
    expect((await run(['inspect'])).code).toBe(2);
    expect((await run(['inspect', '--bogus', FIXTURE])).code).toBe(2);
    const h = await run(['inspect', '--help']);
    expect(h.code).toBe(0);
    expect(h.out).toMatch(/usage: postcopy inspect FILE \[--json\]/);
    const top = await run(['--help']);
    expect(top.out).toMatch(/inspect\s+decode a migration stream/);
  });

  it.skipIf(!fs.existsSync(path.join(ROOT, 'dist/src/cli/main.js')))('works through bin/postcopy.js, reading stdin with -', () => {
    const help = execFileSync(process.execPath, [path.join(ROOT, 'bin/postcopy.js'), 'inspect', '--help'], { encoding: 'utf8' });
    expect(help).toMatch(/usage: postcopy inspect/);
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin/postcopy.js'), 'inspect', '-', '--json'], {
      input: fs.readFileSync(FIXTURE),
      encoding: 'utf8',
    });
    if (r.status === 0) expect(JSON.parse(r.stdout).eof).toBe(true);
    else expect(r.stderr).toMatch(/^postcopy/); // a stale dist/ without inspect: still a clean error
  });
});
