/**
 * `inspect` against streams the real QEMU 7.2 writes at test time
 * (`migrate "exec:cat > FILE"`), checked against what we know independently:
 * the RAM backing file, firmware images, SPEC.md §11, the file size.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { inspectStream } from '../../src/inspect/inspect.js';
import type { InspectResult } from '../../src/inspect/types.js';
import { captureStream, hasQemu, qemuSkipReason, startQemu, type QemuProcess } from './harness/index.js';

const sha256File = (p: string) => createHash('sha256').update(fs.readFileSync(p)).digest('hex');
const sha256Zeros = (n: number) => createHash('sha256').update(Buffer.alloc(n)).digest('hex');

/** Bytes of a FULL section's header + footer around its payload. */
const fullOverhead = (idstr: string) => 1 + 4 + 1 + Buffer.byteLength(idstr) + 4 + 4 + 5;

/** Checks every stream must pass: sizes add up from the first byte to the last. */
function checkLayout(r: InspectResult, fileSize: number): void {
  expect(r.eof).toBe(true);
  expect(r.totalBytes).toBe(fileSize);
  expect(r.vmdesc).not.toBeNull();
  expect(r.vmdesc!.offset + r.vmdesc!.length).toBe(fileSize);
  expect(r.vmdesc!.devices).toBe(r.devices.length);
  // RAM sections are contiguous and the device region starts where the RAM END finishes.
  const ramSecs = r.sections.filter((s) => s.idstr === 'ram');
  for (let i = 1; i < ramSecs.length; i++) {
    expect(ramSecs[i]!.offset).toBe(ramSecs[i - 1]!.offset + ramSecs[i - 1]!.length);
  }
  const end = ramSecs.at(-1)!;
  expect(end.kind).toBe('end');
  expect(r.deviceRegion!.start).toBe(end.offset + end.length);
  // Sum of device payloads + their headers/footers = bytes between RAM END and EOF.
  const sum = r.devices.reduce((n, d) => n + d.size + fullOverhead(d.idstr), 0);
  expect(sum).toBe(r.deviceRegion!.end - r.deviceRegion!.start);
  expect(r.devices.every((d) => d.split === 'vmdesc')).toBe(true);
  // Page records: every page of every block is sent exactly once in a -S precopy.
  const totalPages = r.ramBlocks.reduce((n, b) => n + b.usedLength / 4096, 0);
  expect(r.pages.zero + r.pages.normal).toBe(totalPages);
  expect(r.pages.xbzrle).toBe(0);
  expect(r.ramTotal).toBe(r.ramBlocks.reduce((n, b) => n + b.usedLength, 0));
}

/** The globalstate section carries the run state, NUL-padded (SPEC §1.8). */
function runstate(r: InspectResult): string {
  const g = r.devices.find((d) => d.idstr === 'globalstate')!;
  expect(g.fields![0]).toMatchObject({ name: 'size', value: 'prelaunch'.length + 1 });
  expect(g.fields![1]!.size).toBe(100);
  return g.fields![1]!.text ?? '?';
}

function findFirmware(name: string): string | undefined {
  for (const d of ['/usr/share/seabios', '/usr/share/qemu', '/usr/lib/ipxe/qemu', '/usr/share/ipxe/qemu']) {
    const p = `${d}/${name}`;
    if (fs.existsSync(p)) return p;
  }
  return undefined;
}

function paddedSha(file: string, size: number): string {
  const b = Buffer.alloc(size);
  fs.readFileSync(file).copy(b);
  return createHash('sha256').update(b).digest('hex');
}

const vms: QemuProcess[] = [];
afterAll(async () => {
  for (const v of vms) await v.cleanup();
});

describe.skipIf(!hasQemu)(`inspect on streams written by real QEMU ${qemuSkipReason}`, () => {
  describe('-M none -m 64M -S, random RAM, default networking', () => {
    let r: InspectResult;
    let vm: QemuProcess;
    let file: string;
    beforeAll(async () => {
      vm = await startQemu({ machine: 'none', memory: '64M', ramFill: 'random', nodefaults: false });
      vms.push(vm);
      file = await captureStream(vm.qmp, { dir: vm.dir });
      r = await inspectStream(fs.createReadStream(file));
    });

    it('decodes configuration, the one RAM block (hash = backing file) and all pages', () => {
      expect(r.version).toBe(3);
      expect(r.configuration).toEqual({ name: 'none' });
      expect(r.ramBlocks.map((b) => [b.idstr, b.usedLength])).toEqual([['ram', 64 << 20]]);
      expect(r.ramBlocks[0]!.sha256).toBe(sha256File(vm.ramPath!));
      // Random RAM: no zero page is likely among 16384.
      expect(r.pages.normal).toBe(16384);
      expect(r.commands).toEqual([]);
      checkLayout(r, fs.statSync(file).size);
    });

    it('finds the device sections of SPEC §11.1 and decodes their fields', () => {
      expect(r.devices.map((d) => [d.sectionId, d.idstr, d.instanceId, d.versionId, d.size])).toEqual([
        [0, 'timer', 0, 2, 24],
        [4, 'slirp', 0, 4, 131],
        [5, 'globalstate', 0, 1, 104],
      ]);
      expect(r.devices[1]!.fields![0]).toMatchObject({ name: 'data', type: 'buffer', size: 131 });
      expect(runstate(r)).toBe('prelaunch');
      expect(r.sections.filter((s) => s.kind === 'start').map((s) => [s.offset, s.sectionId])).toEqual([[0x11, 2]]);
    });
  });

  describe('-M pc -m 128M -S, random pc.ram, default NIC (e1000 + user networking), -serial none', () => {
    let r: InspectResult;
    let vm: QemuProcess;
    let file: string;
    beforeAll(async () => {
      vm = await startQemu({
        machine: 'pc',
        memory: '128M',
        ramFill: 'random',
        nodefaults: false,
        extraArgs: ['-serial', 'none'],
      });
      vms.push(vm);
      file = await captureStream(vm.qmp, { dir: vm.dir });
      r = await inspectStream(fs.createReadStream(file));
    }, 120_000);

    it('lists the nine RAM blocks of SPEC §11.2 with their lengths', () => {
      expect(r.configuration).toEqual({ name: 'pc-i440fx-7.2' });
      expect(r.ramBlocks.map((b) => [b.idstr, b.usedLength])).toEqual([
        ['pc.ram', 0x8000000],
        ['0000:00:02.0/vga.vram', 0x1000000],
        ['/rom@etc/acpi/tables', 0x20000],
        ['pc.bios', 0x40000],
        ['0000:00:03.0/e1000.rom', 0x40000],
        ['pc.rom', 0x20000],
        ['0000:00:02.0/vga.rom', 0x10000],
        ['/rom@etc/table-loader', 0x1000],
        ['/rom@etc/acpi/rsdp', 0x1000],
      ]);
      expect(r.ramTotal).toBe(0x90d2000);
      checkLayout(r, fs.statSync(file).size);
    });

    it('rebuilds block contents we can know: pc.ram, blank VRAM/pc.rom, firmware images', () => {
      const sha = Object.fromEntries(r.ramBlocks.map((b) => [b.idstr, b.sha256]));
      expect(sha['pc.ram']).toBe(sha256File(vm.ramPath!));
      expect(sha['0000:00:02.0/vga.vram']).toBe(sha256Zeros(0x1000000)); // never ran: blank
      expect(sha['pc.rom']).toBe(sha256Zeros(0x20000));
      const bios = findFirmware('bios-256k.bin');
      if (bios) expect(sha['pc.bios']).toBe(sha256File(bios));
      const vgabios = findFirmware('vgabios-stdvga.bin');
      if (vgabios) expect(sha['0000:00:02.0/vga.rom']).toBe(paddedSha(vgabios, 0x10000));
      const ipxe = findFirmware('efi-e1000.rom');
      if (ipxe) expect(sha['0000:00:03.0/e1000.rom']).toBe(paddedSha(ipxe, 0x40000));
      // Firmware and option ROMs are the only non-zero pages besides pc.ram (SPEC §11.2: 120).
      const rest = r.ramBlocks.filter((b) => b.idstr !== 'pc.ram').reduce((n, b) => n + b.pages.normal, 0);
      expect(rest).toBe(120);
    });

    it('splits the 34 device sections of SPEC §11.2 with the vmdesc', () => {
      expect(r.devices.map((d) => `${d.sectionId} ${d.idstr}(${d.instanceId}) v${d.versionId}`)).toEqual([
        '0 timer(0) v2', '4 slirp(0) v4', '5 cpu_common(0) v1', '6 cpu(0) v12', '7 kvm-tpr-opt(0) v1',
        '8 apic(0) v3', '9 fw_cfg(0) v2', '10 PCIHost(0) v1', '11 PCIBUS(0) v1', '12 0000:00:00.0/I440FX(0) v3',
        '13 dma(0) v1', '14 dma(1) v1', '15 0000:00:01.0/PIIX3(0) v3', '16 i8259(0) v1', '17 i8259(1) v1',
        '18 ioapic(0) v3', '19 0000:00:02.0/vga(0) v2', '20 hpet(0) v2', '21 mc146818rtc(0) v3', '22 i8254(0) v3',
        '23 pcspk(0) v1', '24 parallel_isa(0) v1', '25 fdc(0) v2', '26 ps2kbd(0) v3', '27 ps2mouse(0) v2',
        '28 pckbd(0) v3', '29 vmmouse(0) v0', '30 port92(0) v1', '31 0000:00:03.0/e1000(0) v2',
        '32 0000:00:01.1/ide(0) v3', '33 i2c_bus(0) v1', '34 0000:00:01.3/piix4_pm(0) v3', '43 acpi_build(0) v1',
        '44 globalstate(0) v1',
      ]);
      expect(runstate(r)).toBe('prelaunch');
      // A few decoded values we can predict for a machine that never ran.
      const cpu = r.devices.find((d) => d.idstr === 'cpu')!;
      const eip = cpu.fields!.find((f) => f.name === 'env.eip');
      expect(eip?.value).toBe(0xfff0); // reset vector offset
      const cs = cpu.fields!.find((f) => f.name === 'env.segs')!;
      expect(cs.elements).toHaveLength(6);
      expect(cs.elements![1]!.fields.find((f) => f.name === 'selector')!.value).toBe(0xf000);
    });
  });
});
