/**
 * The package root is what users import: the wire codecs are reachable as the
 * `wire` namespace and interoperate with the top-level hot-path exports.
 */
import { describe, expect, it } from 'vitest';
import * as postcopy from '../../src/index.js';

describe('package root', () => {
  it('exposes the wire codecs as `wire`: a PING command section round-trips to the exact bytes', () => {
    const { wire } = postcopy;
    const bytes = wire.encodeToBytes((w) => wire.encodeSection(w, { kind: 'command', command: { kind: 'ping', value: 3 } }));
    // QEMU_VM_COMMAND, MIG_CMD_PING (2), len 4, be32 3 (SPEC §2.2)
    expect([...bytes]).toEqual([0x08, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x03]);
    expect(wire.decodeSection(new wire.ByteCursor(bytes))).toEqual({ kind: 'command', command: { kind: 'ping', value: 3 } });
    // a cut stream is an error that names where it ended, not a wrong value
    expect(() => wire.decodeSection(new wire.ByteCursor(bytes.subarray(0, 7)))).toThrow(postcopy.TruncatedError);
  });

  it('wire constants are the same objects as the `constants` namespace', () => {
    expect(postcopy.wire.QEMU_VM_FILE_MAGIC).toBe(postcopy.constants.QEMU_VM_FILE_MAGIC);
    expect(postcopy.wire.QEMU_VM_FILE_MAGIC).toBe(0x5145564d);
  });

  it('exports the destination postcopy states in SPEC §6.3 order and the keepalive defaults', () => {
    expect(postcopy.POSTCOPY_STATES).toEqual(['none', 'advise', 'discard', 'listening', 'running', 'end']);
    // the source pings more often than either side's silence timeout, or an idle link would pause
    expect(postcopy.KEEPALIVE_INTERVAL_MS).toBeLessThan(postcopy.KEEPALIVE_TIMEOUT_MS);
    expect(postcopy.KEEPALIVE_INTERVAL_MS).toBeLessThan(postcopy.DEST_KEEPALIVE_TIMEOUT_MS);
  });
});
