/**
 * Figures of QEMU's query-migrate recomputed from what the proxy decoded,
 * for checking a peer's statistics against its own wire.
 */
import type { ProxyItem } from './decoder.js';

/**
 * QEMU 7.2's `ram.transferred` for a main stream: the bytes of every PAGE,
 * ZERO and XBZRLE record (header and payload) plus 8 for each PART section
 * (the EOS of an iteration); not the setup record, not the END's EOS, no
 * section headers, commands or device state.
 */
export function qemuRamTransferred(items: Iterable<ProxyItem>): number {
  let n = 0;
  for (const i of items) {
    if (i.dir !== 'main') continue;
    if (i.kind === 'PAGE' || i.kind === 'ZERO' || i.kind === 'XBZRLE') n += i.end - i.at;
    else if (i.kind === 'PART') n += 8;
  }
  return n;
}
