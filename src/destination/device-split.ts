/**
 * Opaque device state for a knowledge-free destination (SPEC §1.6): the
 * bytes from the first unknown FULL section up to EOF are buffered, the
 * trailing VMDESCRIPTION is located, and the buffer is split into sections
 * using the section headers and footers (backtracking over false footers),
 * checked against the device list of the vmdesc.
 */
import { ProtocolError } from '../errors.js';
import { SectionType } from '../wire/constants.js';

/** One device section as received. */
export interface ReceivedSection {
  sectionId: number;
  idstr: string;
  instanceId: number;
  versionId: number;
  payload: Uint8Array;
}

/** Where the stream tail is: region = [0, eofAt), vmdesc JSON text after it. */
export interface StreamTail {
  eofAt: number;
  vmdesc: string | undefined;
}

const be32 = (b: Uint8Array, i: number): number =>
  ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;

/**
 * Finds `00 06 <be32 L> <L bytes of JSON object>` ending exactly at the end
 * of `data`. Returns undefined when the data does not (yet) end that way.
 */
export function findTail(data: Uint8Array): StreamTail | undefined {
  const n = data.length;
  for (let i = n - 7; i >= 0; i--) {
    if (data[i] !== SectionType.EOF || data[i + 1] !== SectionType.VMDESCRIPTION) continue;
    const len = be32(data, i + 2);
    if (i + 6 + len !== n || data[i + 6] !== 0x7b) continue;
    const text = Buffer.from(data.buffer, data.byteOffset + i + 6, len).toString('utf8');
    try {
      const j = JSON.parse(text) as { devices?: unknown };
      if (Array.isArray(j.devices)) return { eofAt: i, vmdesc: text };
    } catch {
      // not the vmdesc: keep looking
    }
  }
  return undefined;
}

/**
 * Splits `region` (a run of FULL sections with footers) into sections.
 * `expected`, from the vmdesc, lists (name, instance_id) in order; sections
 * absent from it (none in practice) are allowed only when it is undefined.
 */
export function splitSections(
  region: Uint8Array,
  baseOffset: number,
  expected?: readonly { name: string; instance_id: number }[],
): ReceivedSection[] {
  const failed = new Set<number>();
  const walk = (pos: number, k: number): ReceivedSection[] | undefined => {
    if (pos === region.length) return expected && k !== expected.length ? undefined : [];
    if (failed.has(pos)) return undefined;
    if (region[pos] !== SectionType.FULL || pos + 6 > region.length) return undefined;
    const id = be32(region, pos + 1);
    const nameLen = region[pos + 5]!;
    const hdrEnd = pos + 6 + nameLen + 8;
    if (hdrEnd > region.length) return undefined;
    const idstr = Buffer.from(region.subarray(pos + 6, pos + 6 + nameLen)).toString('latin1');
    const instanceId = be32(region, pos + 6 + nameLen);
    const versionId = be32(region, pos + 10 + nameLen);
    if (expected) {
      const e = expected[k];
      // vmdesc lists vmstate devices; sections missing from it break the match
      if (!e || e.name !== idstr || e.instance_id !== instanceId) {
        failed.add(pos);
        return undefined;
      }
    }
    for (let q = hdrEnd; q + 5 <= region.length; q++) {
      if (region[q] !== SectionType.FOOTER || be32(region, q + 1) !== id) continue;
      const rest = walk(q + 5, k + 1);
      if (rest) {
        return [{ sectionId: id, idstr, instanceId, versionId, payload: region.slice(hdrEnd, q) }, ...rest];
      }
    }
    failed.add(pos);
    return undefined;
  };
  const out = walk(0, 0);
  if (!out) throw new ProtocolError('device state', 'cannot delimit the device sections (footers do not match the vmdesc)', baseOffset);
  return out;
}
