/**
 * Splitting a PACKAGED blob (SPEC.md §2.7) into items. Device sections carry
 * no length and the blob no VMDESCRIPTION, so a section ends at a footer
 * `7E be32(section id)` — but those five bytes can also occur inside device
 * state. The split is therefore a search: a footer candidate is accepted
 * only if the rest of the blob then parses, up to POSTCOPY_RUN (or a final
 * EOF), which QEMU 7.2 always puts last.
 */

import { ProtocolError } from '../errors.js';
import { MIG_CMD_NAMES, MigCmd, SectionType } from '../wire/constants.js';
import { commandId } from '../wire/command.js';
import { ByteCursor } from '../wire/cursor.js';
import { decodeSection } from '../wire/stream.js';
import type { ProxyFieldValue, ProxyItem } from './decoder.js';

/** Candidate footers tried in all before giving up (guards against pathological blobs). */
const MAX_STEPS = 100_000;

function plausibleStart(b: Uint8Array, k: number): boolean {
  if (k >= b.length) return false;
  const t = b[k];
  if (t === SectionType.COMMAND) {
    if (k + 5 > b.length) return false;
    const cmd = (b[k + 1]! << 8) | b[k + 2]!;
    return cmd > MigCmd.INVALID && cmd < MigCmd.MAX;
  }
  if (t === SectionType.FULL) return k + 6 <= b.length && b[k + 5]! > 0;
  return t === SectionType.EOF && k === b.length - 1;
}

/**
 * Items of a PACKAGED blob whose first byte is at stream offset `base`.
 * Throws a ProtocolError when no split reaches POSTCOPY_RUN or a final EOF.
 */
export function splitPackage(blob: Uint8Array, base: number): ProxyItem[] {
  let steps = 0;
  const out: ProxyItem[] = [];
  const parse = (pos: number): boolean => {
    if (++steps > MAX_STEPS) return false;
    if (pos >= blob.length) return false;
    const c = new ByteCursor(blob, pos, base);
    let s;
    try {
      s = decodeSection(c);
    } catch {
      return false;
    }
    const mark = out.length;
    if (s.kind === 'eof') {
      if (c.pos !== blob.length) return false;
      out.push({ dir: 'main', kind: 'EOF', at: base + pos, end: base + c.pos, fields: { packaged: true } });
      return true;
    }
    if (s.kind === 'command') {
      if (s.command.kind === 'packaged') return false;
      const { kind: _k, ...args } = s.command;
      const fields = { ...(JSON.parse(JSON.stringify(args)) as Record<string, ProxyFieldValue>), packaged: true };
      out.push({ dir: 'main', kind: MIG_CMD_NAMES[commandId(s.command)]!, at: base + pos, end: base + c.pos, fields });
      if (s.command.kind === 'postcopyRun') return true; // QEMU ignores anything after RUN
      if (parse(c.pos)) return true;
      out.length = mark;
      return false;
    }
    if (s.kind !== 'full') return false;
    const id = s.sectionId;
    const i0 = (id >>> 24) & 0xff, i1 = (id >>> 16) & 0xff, i2 = (id >>> 8) & 0xff, i3 = id & 0xff;
    for (let j = c.pos; j + 5 <= blob.length; j++) {
      if (blob[j] !== SectionType.FOOTER || blob[j + 1] !== i0 || blob[j + 2] !== i1 || blob[j + 3] !== i2 || blob[j + 4] !== i3) continue;
      if (!plausibleStart(blob, j + 5)) continue;
      out.push({
        dir: 'main',
        kind: 'FULL',
        at: base + pos,
        end: base + j + 5,
        fields: { sectionId: id, idstr: s.idstr, instanceId: s.instanceId, versionId: s.versionId, size: j - c.pos, packaged: true },
      });
      if (parse(j + 5)) return true;
      out.length = mark;
      if (steps > MAX_STEPS) return false;
    }
    return false;
  };
  if (!parse(0)) throw new ProtocolError('MIG_CMD PACKAGED', 'no split of the package reaches POSTCOPY_RUN or EOF', base);
  return out;
}
