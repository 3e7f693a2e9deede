/**
 * The guest-memory checker against images written by a TypeScript model of the
 * guest loop (the real guest is exercised in test/interop/guest.test.ts).
 */
import { describe, expect, it } from 'vitest';
import {
  checkGuestMemory,
  diffPages,
  DEFAULT_GUEST_PARAMS,
  guestAppend,
  guestPages,
  guestStep,
  guestVisitOrder,
  GUEST_PAGE_SIZE,
  type GuestParams,
} from './check.js';

const BASE: GuestParams = { ...DEFAULT_GUEST_PARAMS, start: 64 * 1024, size: 37 * GUEST_PAGE_SIZE, n: 24 };
const RAM = 256 * 1024;

/** Model of the guest: write page `index` for pass q, optionally only the first `upTo` fill bytes. */
function writePage(ram: Uint8Array, p: GuestParams, index: number, q: number, upTo = p.n): void {
  const base = p.start + index * GUEST_PAGE_SIZE;
  for (let j = 8; j < upTo; j++) ram[base + j] = (q * 31 + index * 7 + j) & 0xff;
  if (upTo < p.n) return; // stopped inside the fill loop
  new DataView(ram.buffer).setUint32(base + 4, index, true);
  new DataView(ram.buffer).setUint32(base, q, true);
}

/** Run the model for `visits` page visits from a zeroed RAM. */
function run(p: GuestParams, visits: number): Uint8Array {
  const ram = new Uint8Array(RAM);
  const order = guestVisitOrder(p);
  for (let v = 0; v < visits; v++) writePage(ram, p, order[v % order.length]!, 1 + Math.floor(v / order.length));
  return ram;
}

describe('checkGuestMemory', () => {
  it.each(['seq', 'rand'] as const)('accepts every stop point of a %s run and reports pass and boundary', (pattern) => {
    const p = { ...BASE, pattern };
    const pages = guestPages(p);
    for (let visits = 0; visits <= 3 * pages + 1; visits++) {
      const r = checkGuestMemory(run(p, visits), p);
      expect(r.ok, `visits ${visits}: ${r.detail}`).toBe(true);
      const done = visits % pages;
      expect(r.pass).toBe(done === 0 ? visits / pages : Math.floor(visits / pages));
      expect(r.newer).toBe(done);
    }
  });

  it('accepts a page caught mid-write only where the guest was writing', () => {
    const p = BASE;
    const ram = run(p, 2 * guestPages(p) + 5);
    writePage(ram, p, 5, 3, 15); // next page to visit, half filled with pass 3
    expect(checkGuestMemory(ram, p).ok).toBe(true);
    writePage(ram, p, 9, 3, 15); // a page further on: not allowed
    const r = checkGuestMemory(ram, p);
    expect(r.ok).toBe(false);
    expect(r.detail).toMatch(/page 9 .*byte 8/);
  });

  it('accepts the first page of the very first pass caught mid-write (fill, then index, then q)', () => {
    const p = BASE;
    const ram = run(p, 0);
    writePage(ram, p, 0, 1, 12); // part of the fill
    expect(checkGuestMemory(ram, p)).toMatchObject({ ok: true, pass: 0, newer: 0 });
    writePage(ram, p, 0, 1, p.n); // whole page: now pass 1 has begun
    new DataView(ram.buffer).setUint32(p.start, 0, true); // ...but q not yet stored
    expect(checkGuestMemory(ram, p)).toMatchObject({ ok: true, pass: 0, newer: 0 });
    writePage(ram, p, 3, 1, 12); // another never-written page partly filled: impossible
    expect(checkGuestMemory(ram, p).detail).toMatch(/page 3 .*byte 8/);
  });

  it('rejects a stale page (a lost dirty page) anywhere in the set', () => {
    const p = { ...BASE, pattern: 'rand' as const };
    const ram = run(p, 3 * guestPages(p) + 10);
    const order = guestVisitOrder(p);
    writePage(ram, p, order[20]!, 2); // visits 10.. hold pass 3: this one is a pass behind
    const r = checkGuestMemory(ram, p);
    expect(r.ok).toBe(false);
    expect(r.detail).toContain(`page ${order[20]}`);
  });

  it('rejects counters more than one pass apart and a newer page after the boundary', () => {
    const p = BASE;
    const ram = run(p, 4 * guestPages(p));
    writePage(ram, p, guestPages(p) - 1, 2);
    expect(checkGuestMemory(ram, p).detail).toMatch(/span 2\.\.4/);
    const ram2 = run(p, 4 * guestPages(p) + 3);
    writePage(ram2, p, 10, 5);
    const r = checkGuestMemory(ram2, p);
    expect(r.ok).toBe(false);
    expect(r.detail).toMatch(/page 10 .* holds pass 5, expected 4 after 3 pages of pass 5/);
  });

  it('rejects a wrong fill byte, a wrong index and a dirty byte past n', () => {
    const p = BASE;
    const addr = (index: number, j: number) => p.start + index * GUEST_PAGE_SIZE + j;
    const cases: Array<[(ram: Uint8Array) => void, RegExp]> = [
      [(ram) => (ram[addr(7, 20)] ^= 1), /page 7 .*byte 20 is/],
      [(ram) => (ram[addr(7, 4)] = 8), /page 7 .*index field 8/],
      [(ram) => (ram[addr(7, 4000)] = 1), /page 7 .*byte 4000 beyond the 24 written bytes/],
      [(ram) => (ram[addr(7, 0)] = 0), /page 7 .*holds pass 0/],
    ];
    for (const [corrupt, message] of cases) {
      const ram = run(p, 2 * guestPages(p));
      expect(checkGuestMemory(ram, p).ok).toBe(true);
      corrupt(ram);
      const r = checkGuestMemory(ram, p);
      expect(r.ok).toBe(false);
      expect(r.detail).toMatch(message);
    }
  });

  it('rejects bad parameters and images too small', () => {
    expect(checkGuestMemory(new Uint8Array(RAM), { ...BASE, start: 100 }).detail).toMatch(/not page aligned/);
    expect(checkGuestMemory(new Uint8Array(RAM), { ...BASE, size: 100 }).detail).toMatch(/empty/);
    expect(checkGuestMemory(new Uint8Array(64 * 1024), BASE).detail).toMatch(/beyond the RAM image/);
  });
});

describe('visit order and command line', () => {
  it('the rand order is a permutation with a stride coprime to the page count', () => {
    for (const pages of [1, 2, 3, 37, 128, 256, 1000, 25088]) {
      const p: GuestParams = { ...BASE, size: pages * GUEST_PAGE_SIZE, pattern: 'rand' };
      const order = guestVisitOrder(p);
      expect(new Set(order).size).toBe(pages);
      if (pages >= 4) expect(guestStep(p)).toBeGreaterThan(1);
    }
    expect(guestStep({ ...BASE, pattern: 'seq' })).toBe(1);
    expect([...guestVisitOrder({ ...BASE, size: 4 * GUEST_PAGE_SIZE })]).toEqual([0, 1, 2, 3]);
  });

  it('guestAppend spells every parameter the guest parses', () => {
    expect(guestAppend({ ...DEFAULT_GUEST_PARAMS, rate: 5000, pattern: 'rand', flush: 'page' })).toBe(
      'start=0x200000 size=0x6200000 n=16 rate=5000 pattern=rand report=16 flush=page',
    );
    expect(guestAppend(DEFAULT_GUEST_PARAMS)).toMatch(/rate=max .*flush=all$/);
  });
});

describe('diffPages', () => {
  it('counts differing pages and finds the first one', () => {
    const a = new Uint8Array(8 * GUEST_PAGE_SIZE);
    const b = a.slice();
    expect(diffPages(a, b, 0, a.length)).toEqual({ pages: 0, firstAddress: -1 });
    b[3 * GUEST_PAGE_SIZE + 17] = 1;
    b[6 * GUEST_PAGE_SIZE] = 1;
    expect(diffPages(a, b, 0, a.length)).toEqual({ pages: 2, firstAddress: 3 * GUEST_PAGE_SIZE });
    expect(diffPages(a, b, 4 * GUEST_PAGE_SIZE, 2 * GUEST_PAGE_SIZE)).toEqual({ pages: 0, firstAddress: -1 });
  });
});
