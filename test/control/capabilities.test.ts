import { describe, expect, it } from 'vitest';
import {
  applyCapabilities,
  CAPABILITY_NAMES,
  defaultCapabilities,
  queryCapabilities,
  UNSUPPORTED_CAPABILITIES,
} from '../../src/control/capabilities.js';
import { toQmpJson, type QmpValue } from '../../src/control/json.js';
import { QmpError } from '../../src/errors.js';

// Captured from qemu-system-x86_64 7.2.22 (-M none), query-migrate-capabilities on a fresh process.
const QEMU_DEFAULT_CAPS =
  '[{"state": false, "capability": "xbzrle"}, {"state": false, "capability": "rdma-pin-all"}, {"state": false, "capability": "auto-converge"}, {"state": false, "capability": "zero-blocks"}, {"state": false, "capability": "compress"}, {"state": false, "capability": "events"}, {"state": false, "capability": "postcopy-ram"}, {"state": false, "capability": "x-colo"}, {"state": false, "capability": "release-ram"}, {"state": false, "capability": "block"}, {"state": false, "capability": "return-path"}, {"state": false, "capability": "pause-before-switchover"}, {"state": false, "capability": "multifd"}, {"state": false, "capability": "dirty-bitmaps"}, {"state": false, "capability": "postcopy-blocktime"}, {"state": false, "capability": "late-block-activate"}, {"state": false, "capability": "x-ignore-shared"}, {"state": false, "capability": "validate-uuid"}, {"state": false, "capability": "background-snapshot"}, {"state": false, "capability": "zero-copy-send"}, {"state": false, "capability": "postcopy-preempt"}]';

const list = (...l: Array<[string, boolean]>): QmpValue => l.map(([capability, state]) => ({ capability, state }));
const err = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(QmpError);
    return (e as Error).message;
  }
  throw new Error('did not throw');
};

describe('capabilities', () => {
  it('lists the 21 capabilities of 7.2, all off, exactly as QEMU prints them', () => {
    expect(CAPABILITY_NAMES).toHaveLength(21);
    expect(toQmpJson(queryCapabilities(defaultCapabilities()))).toBe(QEMU_DEFAULT_CAPS);
  });

  it('applies a list and returns a new record, leaving the old one alone', () => {
    const before = defaultCapabilities();
    const after = applyCapabilities(before, list(['postcopy-ram', true], ['events', true], ['xbzrle', true], ['xbzrle', false]));
    expect(after['postcopy-ram']).toBe(true);
    expect(after.events).toBe(true);
    expect(after.xbzrle).toBe(false); // the last entry for a name wins
    expect(before['postcopy-ram']).toBe(false);
  });

  it('QAPI shape errors use QEMU texts', () => {
    const c = defaultCapabilities();
    expect(err(() => applyCapabilities(c, undefined))).toBe("Parameter 'capabilities' is missing");
    expect(err(() => applyCapabilities(c, list(['x', true])))).toBe("Parameter 'capability' does not accept value 'x'");
    expect(err(() => applyCapabilities(c, [{ capability: 'xbzrle', state: 1 }]))).toBe(
      "Invalid parameter type for 'capabilities[0].state', expected: boolean",
    );
  });

  it('cross-checks are all or nothing', () => {
    const c = applyCapabilities(defaultCapabilities(), list(['postcopy-ram', true]), { unsupported: [] });
    expect(err(() => applyCapabilities(c, list(['x-ignore-shared', true]), { unsupported: [] }))).toBe(
      'Postcopy is not compatible with ignore-shared',
    );
    expect(c['x-ignore-shared']).toBe(false);
  });

  it('refuses changes while a migration runs', () => {
    expect(err(() => applyCapabilities(defaultCapabilities(), list(['xbzrle', true]), { migrationActive: true }))).toBe(
      "There's a migration process in progress",
    );
  });

  it('runs the destination userfaultfd check only when enabling postcopy-ram while incoming', () => {
    let calls = 0;
    const no = () => (calls++, false);
    expect(err(() => applyCapabilities(defaultCapabilities(), list(['postcopy-ram', true]), { incoming: true, postcopySupported: no }))).toBe(
      'Postcopy is not supported',
    );
    expect(applyCapabilities(defaultCapabilities(), list(['postcopy-ram', true]), { incoming: false, postcopySupported: no })['postcopy-ram']).toBe(true);
    expect(calls).toBe(1);
  });

  it('refuses what we cannot do, but keeps it queryable and allows turning it off', () => {
    for (const name of UNSUPPORTED_CAPABILITIES) {
      expect(err(() => applyCapabilities(defaultCapabilities(), list([name, true])))).toBe(
        `Capability '${name}' is not supported by this implementation`,
      );
      expect(applyCapabilities(defaultCapabilities(), list([name, false]))[name]).toBe(false);
    }
    expect(queryCapabilities(defaultCapabilities()).map((c) => c.capability)).toContain('multifd');
  });

  it('TLS and multifd-compression count against zero-copy-send', () => {
    const ctx = { unsupported: [] };
    const base = applyCapabilities(defaultCapabilities(), list(['multifd', true]), ctx);
    expect(applyCapabilities(base, list(['zero-copy-send', true]), ctx)['zero-copy-send']).toBe(true);
    expect(err(() => applyCapabilities(base, list(['zero-copy-send', true]), { ...ctx, tls: true }))).toMatch(/^Zero copy only/);
    expect(err(() => applyCapabilities(base, list(['zero-copy-send', true]), { ...ctx, multifdCompression: 'zlib' }))).toMatch(/^Zero copy only/);
  });
});
