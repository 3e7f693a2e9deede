/** The proxy's live decoders: item sequences for streams built with our wire encoders. */
import { describe, expect, it } from 'vitest';
import { ProxySession, decodeMainStream, decodeReturnPath, type ProxyItem } from '../../src/proxy/decoder.js';
import { encodeCommand } from '../../src/wire/command.js';
import { RamRecordEncoder } from '../../src/wire/ram.js';
import { encodeRecvBitmapData, encodeRpMessage } from '../../src/wire/return-path.js';
import { encodeFooter, encodeSection } from '../../src/wire/stream.js';
import { ByteWriter } from '../../src/wire/writer.js';
import { chunks, pattern, postcopyStream, precopyStream } from '../inspect/streams.js';

async function mainItems(bytes: Uint8Array, size: number, session = new ProxySession()): Promise<ProxyItem[]> {
  const out: ProxyItem[] = [];
  await decodeMainStream(chunks(bytes, size), session, (i) => out.push(i));
  return out;
}
const kinds = (items: ProxyItem[]): string[] => items.map((i) => (i.fields['packaged'] ? `pkg:${i.kind}` : i.kind));

describe('main stream decoder', () => {
  it.each([1, 7, 4096, 1 << 20])('precopy stream in %i-byte chunks: every item, in order, with offsets', async (size) => {
    const { bytes } = precopyStream();
    const items = await mainItems(bytes, size);
    expect(kinds(items)).toEqual([
      'HEADER', 'CONFIGURATION',
      'START', 'MEM_SIZE', 'EOS',
      'PART', 'PAGE', 'ZERO', 'COMPRESS_PAGE', 'PAGE', 'ZERO', 'EOS',
      'PART', 'XBZRLE', 'EOS',
      'END', 'EOS',
      'FULL', 'FULL', 'EOF', 'VMDESCRIPTION',
    ]);
    expect(items[1]!.fields['machineName']).toBe('none');
    const pages = items.filter((i) => i.kind === 'PAGE' || i.kind === 'ZERO');
    expect(pages.map((p) => [p.fields['block'], p.fields['offset']])).toEqual([
      ['ram', 0], ['ram', 4096], ['rom', 0], ['rom', 4096],
    ]);
    expect(items.find((i) => i.kind === 'ZERO' && i.fields['block'] === 'rom')!.fields['fill']).toBe(0xab);
    expect(items.filter((i) => i.kind === 'FULL').map((i) => i.fields['idstr'])).toEqual(['dev', 'globalstate']);
    // Items tile the stream: each starts where something ended, the last ends at the end.
    expect(items[0]!.at).toBe(0);
    expect(items[items.length - 1]!.end).toBe(bytes.length);
    for (const i of items) expect(i.end).toBeGreaterThan(i.at);
    // No page payloads anywhere.
    expect(JSON.stringify(items).length).toBeLessThan(8000);
  });

  it('postcopy stream: package items marked, PING values, discard ranges, postcopy pages', async () => {
    const { bytes } = postcopyStream();
    const items = await mainItems(bytes, 1000);
    expect(kinds(items)).toEqual([
      'HEADER', 'CONFIGURATION', 'OPEN_RETURN_PATH', 'PING', 'POSTCOPY_ADVISE',
      'START', 'MEM_SIZE', 'EOS', 'PART', 'PAGE', 'ZERO', 'EOS',
      'POSTCOPY_RAM_DISCARD', 'PACKAGED',
      'pkg:POSTCOPY_LISTEN', 'pkg:FULL', 'pkg:PING', 'pkg:POSTCOPY_RUN',
      'PART', 'PAGE', 'PAGE', 'EOS', 'END', 'ZERO', 'EOS', 'EOF',
    ]);
    const pings = items.filter((i) => i.kind === 'PING').map((i) => i.fields['value']);
    expect(pings).toEqual([1, 3]);
    expect(items.find((i) => i.kind === 'POSTCOPY_RAM_DISCARD')!.fields).toMatchObject({ blockName: 'ram', ranges: [{ start: 0, length: 4096 }] });
    const pkg = items.find((i) => i.kind === 'PACKAGED')!;
    const inner = items.filter((i) => i.fields['packaged']);
    expect(inner[0]!.at).toBe(pkg.end);
    expect(inner[inner.length - 1]!.end).toBe(pkg.end + (pkg.fields['length'] as number));
  });

  it('a recovery channel with no header continues the session (RECV_BITMAP, POSTCOPY_RESUME, PART)', async () => {
    const session = new ProxySession();
    await mainItems(postcopyStream().bytes.subarray(0, 300), 64, session).catch(() => undefined);
    const w = new ByteWriter();
    const enc = new RamRecordEncoder();
    encodeCommand(w, { kind: 'recvBitmap', blockName: 'ram' });
    encodeCommand(w, { kind: 'recvBitmap', blockName: 'rom' });
    encodeCommand(w, { kind: 'postcopyResume' });
    encodeSection(w, { kind: 'part', sectionId: 2 });
    enc.page(w, 'ram', 0x3000, pattern(5));
    enc.page(w, 'ram', 0x1000, pattern(6));
    enc.eos(w);
    encodeFooter(w, 2);
    const items = await mainItems(w.toBytes(), 100, session);
    expect(kinds(items)).toEqual(['RECV_BITMAP', 'RECV_BITMAP', 'POSTCOPY_RESUME', 'PART', 'PAGE', 'PAGE', 'EOS']);
    expect(items.map((i) => i.fields['blockName']).slice(0, 2)).toEqual(['ram', 'rom']);
    expect(items[5]!.fields).toMatchObject({ block: 'ram', offset: 0x1000, continued: true });
  });

  it('precopy without a VMDESCRIPTION: device sections are split when the stream ends', async () => {
    const items = await mainItems(precopyStream({ vmdesc: null }).bytes, 333);
    expect(kinds(items).slice(-3)).toEqual(['FULL', 'FULL', 'EOF']);
  });

  it('a new stream with a header starts a fresh session (precopy XBZRLE after an earlier postcopy)', async () => {
    const session = new ProxySession();
    await mainItems(postcopyStream().bytes, 4096, session);
    expect(session.ram.postcopy).toBe(true);
    const items = await mainItems(precopyStream().bytes, 4096, session);
    expect(items.filter((i) => i.kind === 'XBZRLE')).toHaveLength(1);
  });

  it('bad bytes reject with a ProtocolError naming the offset', async () => {
    const { bytes } = precopyStream();
    const bad = bytes.slice();
    bad[8] = 0x42; // the configuration's type byte → an unknown section type
    await expect(mainItems(bad, 50)).rejects.toThrow(/Unknown savevm section type 66 \(at offset 8\)/);
  });
});

describe('return-path decoder', () => {
  it('every message kind and the RECV_BITMAP out-of-band bitmap, in random chunking', async () => {
    const w = new ByteWriter();
    encodeRpMessage(w, { kind: 'pong', value: 1 });
    encodeRpMessage(w, { kind: 'reqPagesId', start: 0x5178000, length: 4096, blockName: 'pc.ram' });
    encodeRpMessage(w, { kind: 'reqPages', start: 0x5179000, length: 4096 });
    encodeRpMessage(w, { kind: 'recvBitmap', blockName: 'pc.ram' });
    const bm = new Uint8Array(16);
    bm[0] = 0xff;
    bm[9] = 0x11;
    encodeRecvBitmapData(w, bm);
    encodeRpMessage(w, { kind: 'resumeAck', value: 1 });
    encodeRpMessage(w, { kind: 'shut', value: 0 });
    const bytes = w.toBytes();
    for (const size of [1, 3, 17, 1000]) {
      const out: ProxyItem[] = [];
      await decodeReturnPath(chunks(bytes, size), (i) => out.push(i));
      expect(out.map((i) => i.kind)).toEqual(['PONG', 'REQ_PAGES_ID', 'REQ_PAGES', 'RECV_BITMAP', 'RECV_BITMAP_DATA', 'RESUME_ACK', 'SHUT']);
      expect(out[1]!.fields).toEqual({ start: 0x5178000, length: 4096, blockName: 'pc.ram' });
      expect(out[4]!.fields).toEqual({ blockName: 'pc.ram', size: 16, setBits: 10 });
      expect(out.every((i) => i.dir === 'rp')).toBe(true);
      expect(out[6]!.end).toBe(bytes.length);
    }
  });

  it('a wrong end mark is a decode error', async () => {
    const w = new ByteWriter();
    encodeRpMessage(w, { kind: 'recvBitmap', blockName: 'b' });
    encodeRecvBitmapData(w, new Uint8Array(8));
    const bytes = w.toBytes();
    bytes[bytes.length - 1] ^= 1;
    await expect(decodeReturnPath(chunks(bytes, 5), () => undefined)).rejects.toThrow(/end mark incorrect/);
  });
});
