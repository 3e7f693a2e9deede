/**
 * Offline verification of the test guest's working set in a RAM image.
 *
 * The guest (test/guest/src/guest.c) visits the pages of its working set in a
 * fixed order, pass after pass. After it wrote page `index` in pass `q`
 * (q >= 1) the page holds:
 *
 *   [0,4)   q (u32 little-endian)
 *   [4,8)   index (u32 little-endian)
 *   [8,n)   byte j = (q * 31 + index * 7 + j) & 0xff
 *   [n,4096) zero
 *
 * A page not yet written holds only zeros (pass 0). The guest writes the fill,
 * then the index, then q, so a page caught mid-write keeps its old q with part
 * of the next pass's fill. Seen along the visit order, a consistent image is a
 * prefix of pages from pass P+1 followed by pages from pass P, with at most one
 * partly written page: the first one of pass P. Nothing here trusts the guest:
 * every byte of every page is derived from (q, index) and checked.
 */

/** Guest page size (x86, 4 KiB). */
export const GUEST_PAGE_SIZE = 4096;
/** Bytes [0,8) of a written page: pass counter and page index. */
export const GUEST_HEADER_BYTES = 8;

/** Visit order of the working set: in address order, or a fixed-stride permutation. */
export type GuestPattern = 'seq' | 'rand';

/** Parameters of the guest, passed on its command line by {@link guestAppend}. */
export interface GuestParams {
  /** Guest-physical start of the working set in bytes (page aligned). */
  start: number;
  /** Size of the working set in bytes (whole pages are used). */
  size: number;
  /** Bytes written per page visit (8..4096): header plus fill. */
  n: number;
  /** Pages written per second, or 'max' for as fast as the vCPU goes. */
  rate: number | 'max';
  /** Visit order. */
  pattern: GuestPattern;
  /** Print `pass <q>` on the serial port every `report` passes. */
  report: number;
  /**
   * TLB flushing around writes: 'all' (invlpg each page before writing it, and the
   * stack and data pages after every visit), 'page' (only the written page), 'none'.
   * Anything but 'all' exposes QEMU 7.2's TCG dirty-tracking bug (SPEC.md §13);
   * those modes exist to prove the tests catch it.
   */
  flush?: 'all' | 'page' | 'none';
}

/** Defaults: 2 MiB .. 100 MiB, 16 bytes per visit, full speed, sequential. */
export const DEFAULT_GUEST_PARAMS: GuestParams = {
  start: 2 * 1024 * 1024,
  size: 98 * 1024 * 1024,
  n: 16,
  rate: 'max',
  pattern: 'seq',
  report: 16,
};

/** The multiboot command line (QEMU `-append`) that gives the guest `params`. */
export function guestAppend(params: GuestParams): string {
  const rate = params.rate === 'max' ? 'max' : String(params.rate);
  return (
    `start=0x${params.start.toString(16)} size=0x${params.size.toString(16)} n=${params.n} ` +
    `rate=${rate} pattern=${params.pattern} report=${params.report} flush=${params.flush ?? 'all'}`
  );
}

/** Number of pages in the working set. */
export function guestPages(params: GuestParams): number {
  return Math.floor(params.size / GUEST_PAGE_SIZE);
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Stride between consecutive visits (1 for 'seq'); the guest computes the same value. */
export function guestStep(params: GuestParams): number {
  const pages = guestPages(params);
  if (params.pattern === 'seq' || pages <= 2) return 1;
  let step = Math.floor((pages * 40503) / 65536) | 1;
  while (gcd(step, pages) !== 1) step += 2;
  return step % pages;
}

/** Page indexes of the working set in the order the guest visits them in each pass. */
export function guestVisitOrder(params: GuestParams): Uint32Array {
  const pages = guestPages(params);
  const step = guestStep(params);
  const order = new Uint32Array(pages);
  let index = 0;
  for (let k = 0; k < pages; k++) {
    order[k] = index;
    index += step;
    if (index >= pages) index -= pages;
  }
  return order;
}

/** Expected fill byte at offset j of page `index` written in pass q. */
function fillByte(q: number, index: number, j: number): number {
  return (Math.imul(q, 31) + Math.imul(index, 7) + j) & 0xff;
}

/** Result of {@link checkGuestMemory}. */
export interface GuestCheck {
  /** True when the working set is consistent. */
  ok: boolean;
  /** Human-readable summary, or the first problem found (with its guest-physical address). */
  detail: string;
  /** Oldest pass number present (P); pages hold P or P + 1. */
  pass: number;
  /** Number of pages (a visit-order prefix) that already hold pass P + 1. */
  newer: number;
}

/**
 * Verify the guest's working set in `ramImage`, where byte `a` of the image is
 * guest-physical address `a` (true for the low RAM of `-M pc`, which is what a
 * `memory-backend-file` of the machine's RAM holds).
 */
export function checkGuestMemory(ramImage: Uint8Array, params: GuestParams): GuestCheck {
  const pages = guestPages(params);
  const n = Math.min(Math.max(params.n, GUEST_HEADER_BYTES), GUEST_PAGE_SIZE);
  const fail = (detail: string): GuestCheck => ({ ok: false, detail, pass: -1, newer: -1 });
  if (params.start % GUEST_PAGE_SIZE !== 0) return fail(`start 0x${params.start.toString(16)} is not page aligned`);
  if (pages === 0) return fail('empty working set');
  if (params.start + pages * GUEST_PAGE_SIZE > ramImage.length) {
    return fail(`working set ends beyond the RAM image (${ramImage.length} bytes)`);
  }
  const view = new DataView(ramImage.buffer, ramImage.byteOffset, ramImage.byteLength);
  const order = guestVisitOrder(params);
  const passes = new Uint32Array(pages);
  for (let k = 0; k < pages; k++) passes[k] = view.getUint32(params.start + order[k]! * GUEST_PAGE_SIZE, true);

  // Along the visit order: non-increasing, first minus last at most 1.
  const first = passes[0]!;
  const last = passes[pages - 1]!;
  if (first !== last && first !== last + 1) {
    return fail(`pass counters span ${last}..${first}, more than two passes`);
  }
  let boundary = 0;
  for (let k = 0; k < pages; k++) {
    const q = passes[k]!;
    if (q === first && boundary === k && first !== last) boundary = k + 1;
    else if (q !== last) {
      const at = params.start + order[k]! * GUEST_PAGE_SIZE;
      return fail(`page ${order[k]} (0x${at.toString(16)}, visit ${k}) holds pass ${q}, expected ${last}` +
        (first !== last ? ` after ${boundary} pages of pass ${first}` : ''));
    }
  }
  // The page being written when the guest stopped: first page of the older pass.
  const inProgress = boundary < pages ? boundary : -1;

  for (let k = 0; k < pages; k++) {
    const index = order[k]!;
    const q = passes[k]!;
    const base = params.start + index * GUEST_PAGE_SIZE;
    const partial = k === inProgress;
    const where = `page ${index} (0x${base.toString(16)}, pass ${q})`;
    const storedIndex = view.getUint32(base + 4, true);
    if (q === 0) {
      if (!(storedIndex === 0 || (partial && storedIndex === index))) {
        return fail(`${where}: index field ${storedIndex} in a page never written`);
      }
    } else if (storedIndex !== index) {
      return fail(`${where}: index field ${storedIndex}, expected ${index}`);
    }
    for (let j = GUEST_HEADER_BYTES; j < n; j++) {
      const got = ramImage[base + j]!;
      const want = q === 0 ? 0 : fillByte(q, index, j);
      if (got !== want && !(partial && got === fillByte(q + 1, index, j))) {
        return fail(`${where}: byte ${j} is 0x${got.toString(16)}, expected 0x${want.toString(16)}`);
      }
    }
    for (let j = n; j < GUEST_PAGE_SIZE; j++) {
      if (ramImage[base + j] !== 0) {
        return fail(`${where}: byte ${j} beyond the ${n} written bytes is 0x${ramImage[base + j]!.toString(16)}`);
      }
    }
  }
  const newer = first === last ? 0 : boundary;
  return {
    ok: true,
    detail: `${pages} pages consistent: ${newer} of pass ${last + 1}, ${pages - newer} of pass ${last}`,
    pass: last,
    newer,
  };
}

/** Where two RAM images differ inside [start, start + size): count of differing pages and the first one. */
export function diffPages(
  a: Uint8Array,
  b: Uint8Array,
  start: number,
  size: number,
): { pages: number; firstAddress: number } {
  let pages = 0;
  let firstAddress = -1;
  const end = Math.min(start + size, a.length, b.length);
  for (let page = start; page < end; page += GUEST_PAGE_SIZE) {
    const stop = Math.min(page + GUEST_PAGE_SIZE, end);
    if (Buffer.compare(a.subarray(page, stop), b.subarray(page, stop)) !== 0) {
      if (firstAddress < 0) firstAddress = page;
      pages++;
    }
  }
  return { pages, firstAddress };
}
