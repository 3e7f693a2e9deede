/** splitPackage: device sections split by footers, with false footers inside device state. */
import { describe, expect, it } from 'vitest';
import { splitPackage } from '../../src/proxy/package.js';
import { encodeCommand } from '../../src/wire/command.js';
import { encodeFooter, encodeSection } from '../../src/wire/stream.js';
import { ByteWriter } from '../../src/wire/writer.js';

function pkg(payloads: Uint8Array[]): Uint8Array {
  const w = new ByteWriter();
  encodeCommand(w, { kind: 'postcopyListen' });
  payloads.forEach((p, i) => {
    encodeSection(w, { kind: 'full', sectionId: 3 + i, idstr: `dev${i}`, instanceId: 0, versionId: 1 });
    w.bytes(p);
    encodeFooter(w, 3 + i);
  });
  encodeCommand(w, { kind: 'ping', value: 3 });
  encodeCommand(w, { kind: 'postcopyRun' });
  return w.toBytes();
}

describe('splitPackage', () => {
  it('LISTEN, FULL sections with their sizes, PING 3, RUN; offsets continue the stream', () => {
    const blob = pkg([new Uint8Array(10).fill(1), new Uint8Array(3)]);
    const items = splitPackage(blob, 1000);
    expect(items.map((i) => i.kind)).toEqual(['POSTCOPY_LISTEN', 'FULL', 'FULL', 'PING', 'POSTCOPY_RUN']);
    expect(items.map((i) => i.fields['size'])).toEqual([undefined, 10, 3, undefined, undefined]);
    expect(items[3]!.fields).toEqual({ value: 3, packaged: true });
    expect(items[0]!.at).toBe(1000);
    expect(items[4]!.end).toBe(1000 + blob.length);
  });

  it.each([
    ['a false footer followed by a command-like byte', [0x7e, 0, 0, 0, 3, 0x08, 0x00, 0x02, 0x00, 0x04, 1, 2]],
    ['a false footer followed by a FULL-like byte', [0x7e, 0, 0, 0, 3, 0x04, 0, 0, 0, 9, 3, 0x41]],
    ['a false footer followed by a zero byte', [0x7e, 0, 0, 0, 3, 0x00, 0x00]],
  ])('%s inside device state does not end the section', (_n, bytes) => {
    const payload = Uint8Array.from([...bytes, 5, 6, 7]);
    const items = splitPackage(pkg([payload, new Uint8Array(4)]), 0);
    expect(items.map((i) => i.kind)).toEqual(['POSTCOPY_LISTEN', 'FULL', 'FULL', 'PING', 'POSTCOPY_RUN']);
    expect(items[1]!.fields['size']).toBe(payload.length);
  });

  it('a blob that never reaches RUN is a ProtocolError', () => {
    const blob = pkg([new Uint8Array(4)]);
    expect(() => splitPackage(blob.subarray(0, blob.length - 5), 50)).toThrow(/no split of the package reaches POSTCOPY_RUN or EOF \(at offset 50\)/);
  });
});
