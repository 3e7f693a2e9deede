/**
 * An adopting (knowledge-free) destination: RAM layout from the setup
 * payload, unknown device sections kept opaque and split with footers +
 * the trailing VMDESCRIPTION, even when payloads contain fake footers.
 */
import { describe, expect, it } from 'vitest';
import { MigrationSource } from '../../src/source/source.js';
import { MigrationDestination, encodeGlobalState } from '../../src/destination/destination.js';
import { findTail, splitSections } from '../../src/destination/device-split.js';
import { duplexPair, fillRandom, TestGuest } from '../engine/helpers.js';

describe('adopting destination', () => {
  it('adopts the layout and keeps device sections byte-exact, fake footers included', async () => {
    const g = new TestGuest([
      { idstr: 'pc.ram', size: 1 << 20 },
      { idstr: '0000:00:02.0/vga.vram', size: 64 << 10 },
    ]);
    fillRandom(g.blocks[0]!.bytes.subarray(0, 300 << 10), 4);
    // device 3's payload contains its own footer bytes 7e 00 00 00 04 and an EOF+vmdesc look-alike
    const tricky = Uint8Array.of(1, 0x7e, 0, 0, 0, 4, 0x04, 0, 0x06, 0, 0, 0, 2, 0x7b, 0x7d, 9);
    const timer = new Uint8Array(24);
    fillRandom(timer, 5);
    const devices = [
      { idstr: 'timer', instanceId: 0, versionId: 2, payload: timer },
      { idstr: 'i8259', instanceId: 1, versionId: 1, payload: tricky },
      { idstr: 'empty', instanceId: 0, versionId: 1, payload: new Uint8Array(0) },
      { idstr: 'globalstate', instanceId: 0, versionId: 1, payload: encodeGlobalState('paused') },
    ];
    const src = new MigrationSource(g, { parameters: { maxBandwidth: 1e12 } });
    const dst = new MigrationDestination({ adopt: true, machineName: 'pc-i440fx-7.2' });
    const [a, b] = duplexPair();
    const [s, d] = await Promise.all([src.migrate(a, { machineName: 'pc-i440fx-7.2', devices }), dst.load(b)]);
    expect([s, d]).toEqual(['completed', 'completed']);
    expect(dst.blocks.map((x) => [x.idstr, x.usedLength, x.ramAddr])).toEqual([
      ['pc.ram', 1 << 20, 0],
      ['0000:00:02.0/vga.vram', 64 << 10, 1 << 20],
    ]);
    for (let i = 0; i < 2; i++) expect(Buffer.compare(dst.blocks[i]!.bytes, g.blocks[i]!.bytes)).toBe(0);
    expect(dst.devices.map((x) => [x.sectionId, x.idstr, x.instanceId, x.versionId, Buffer.from(x.payload).toString('hex')])).toEqual([
      [3, 'timer', 0, 2, Buffer.from(timer).toString('hex')],
      [4, 'i8259', 1, 1, Buffer.from(tricky).toString('hex')],
      [5, 'empty', 0, 1, ''],
    ]);
    expect(dst.globalState).toBe('paused');
    expect(dst.runState).toBe('paused');
  });

  it('findTail needs the vmdesc to end exactly at the end of the data', () => {
    const json = Buffer.from('{"page_size": 4096, "devices": []}');
    const tail = Buffer.concat([Buffer.from([0x04, 0, 0x06]), Buffer.from([0, 6, 0, 0, 0, json.length]), json]);
    expect(findTail(tail)).toEqual({ eofAt: 3, vmdesc: json.toString() });
    expect(findTail(tail.subarray(0, tail.length - 1))).toBeUndefined();
  });

  it('splitSections reports sections that cannot be delimited', () => {
    const region = Uint8Array.of(0x04, 0, 0, 0, 3, 1, 0x61, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa, 0x7e, 0, 0, 0, 9);
    expect(() => splitSections(region, 100)).toThrow('cannot delimit the device sections');
    region[20] = 3;
    expect(splitSections(region, 100)).toEqual([
      { sectionId: 3, idstr: 'a', instanceId: 0, versionId: 1, payload: Uint8Array.of(0xaa) },
    ]);
    expect(() => splitSections(region, 100, [{ name: 'b', instance_id: 0 }])).toThrow('cannot delimit');
  });
});
