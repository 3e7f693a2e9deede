import { describe, expect, it } from 'vitest';
import { EventBus, qmpTimestamp, type QmpEvent } from '../../src/control/events.js';
import {
  destinationMigrationInfo,
  emptyMigrationStats,
  emptyXbzrleCacheStats,
  sourceMigrationInfo,
  type CompressionStats,
} from '../../src/control/info.js';
import { toQmpJson } from '../../src/control/json.js';
import { isLegalTransition, MIGRATION_STATUSES, StatusMachine } from '../../src/control/status.js';

function machine(events = true) {
  const bus = new EventBus();
  const seen: QmpEvent[] = [];
  bus.subscribe((e) => seen.push(e));
  let on = events;
  const m = new StatusMachine({ bus, eventsEnabled: () => on });
  return { m, seen, toggle: (v: boolean) => (on = v) };
}

describe('StatusMachine', () => {
  it('walks the captured source path with recovery and emits one MIGRATION per change', () => {
    const { m, seen } = machine();
    const path = ['setup', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'postcopy-active', 'completed'] as const;
    let from = m.status;
    for (const to of path) {
      expect(m.transition(from, to)).toBe(true);
      from = to;
    }
    expect(seen.map((e) => (e.data as { status: string }).status)).toEqual([...path]);
    expect(seen.every((e) => e.event === 'MIGRATION')).toBe(true);
    expect(m.history).toEqual([...path]);
  });

  it('is compare-and-set: a stale `from` changes nothing', () => {
    const { m, seen } = machine();
    m.transition('none', 'setup');
    expect(m.transition('none', 'setup')).toBe(false);
    expect(m.transition('active', 'completed')).toBe(false);
    expect(m.status).toBe('setup');
    expect(seen).toHaveLength(1);
  });

  it('refuses transitions QEMU never takes', () => {
    const { m } = machine();
    expect(() => m.transition('none', 'completed')).toThrow(/Illegal migration status transition: none -> completed/);
    expect(() => m.transition('completed', 'active')).toThrow(/Illegal/);
    expect(isLegalTransition('postcopy-active', 'active')).toBe(false);
    expect(isLegalTransition('postcopy-recover', 'postcopy-paused')).toBe(true);
    expect(MIGRATION_STATUSES).toHaveLength(14);
  });

  it('emits MIGRATION only with the events capability, but emitSetup always', () => {
    const { m, seen, toggle } = machine(false);
    m.transition('none', 'setup');
    expect(seen).toHaveLength(0);
    m.emitSetup();
    expect(seen.map((e) => e.data)).toEqual([{ status: 'setup' }]);
    expect(m.status).toBe('setup');
    m.emitPass(1);
    expect(seen).toHaveLength(1);
    toggle(true);
    m.transition('setup', 'active');
    m.emitPass(2);
    expect(seen).toHaveLength(3);
    expect(seen[2]).toMatchObject({ event: 'MIGRATION_PASS', data: { pass: 2 } });
  });

  it('waitFor resolves on the target and rejects on abort; reset only from terminal states', async () => {
    const { m } = machine();
    const p = m.waitFor(['completed', 'failed']);
    m.transition('none', 'setup');
    expect(() => m.reset()).toThrow(/Cannot reset/);
    m.transition('setup', 'failed');
    await expect(p).resolves.toBe('failed');
    const ac = new AbortController();
    m.reset();
    const q = m.waitFor(['active'], ac.signal);
    ac.abort(new Error('stop'));
    await expect(q).rejects.toThrow('stop');
    expect(m.status).toBe('none');
  });
});

describe('events', () => {
  it('have QEMU shape and member order with a microsecond timestamp', () => {
    const bus = new EventBus();
    const before = Date.now();
    const ev = bus.emit('MIGRATION_PASS', { pass: 3 });
    expect(Object.keys(ev)).toEqual(['timestamp', 'event', 'data']);
    expect(ev.timestamp.seconds * 1000).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000);
    expect(ev.timestamp.microseconds).toBeGreaterThanOrEqual(0);
    expect(ev.timestamp.microseconds).toBeLessThan(1e6);
    expect(Object.keys(bus.emit('STOP'))).toEqual(['timestamp', 'event']);
    expect(qmpTimestamp(1795320337172.077)).toEqual({ seconds: 1795320337, microseconds: 172077 });
  });
  it('a throwing subscriber does not starve the others', () => {
    const bus = new EventBus();
    let got = 0;
    bus.subscribe(() => {
      throw new Error('x');
    });
    const off = bus.subscribe(() => got++);
    bus.emit('RESUME');
    off();
    bus.emit('RESUME');
    expect(got).toBe(1);
  });
});

describe('MigrationInfo', () => {
  const ram = { ...emptyMigrationStats(), total: 268435456, remaining: 0, transferred: 589932, 'dirty-sync-count': 3, mbps: 7.2493374233128831 };
  it('none is {}, setup is status only, failed has error-desc', () => {
    expect(sourceMigrationInfo({ status: 'none' })).toEqual({});
    expect(sourceMigrationInfo({ status: 'setup', ram })).toEqual({ status: 'setup' });
    expect(toQmpJson(sourceMigrationInfo({ status: 'failed', errorDesc: "Failed to connect to '127.0.0.1:1': Connection refused", ram }))).toBe(
      '{"status": "failed", "error-desc": "Failed to connect to \'127.0.0.1:1\': Connection refused"}',
    );
    expect(sourceMigrationInfo({ status: 'cancelled', ram })).toEqual({ status: 'cancelled' });
  });

  it('active and completed list their fields in QEMU 7.2 order (captured with xbzrle+compress)', () => {
    const compression: CompressionStats = { 'compression-rate': 0, busy: 0, 'compressed-size': -128, pages: 16, 'busy-rate': 0 };
    const xbzrle = emptyXbzrleCacheStats(67108864);
    const active = sourceMigrationInfo({ status: 'active', expectedDowntime: 300, setupTime: 2, totalTime: 9, ram, xbzrle, compression });
    expect(Object.keys(active)).toEqual(['expected-downtime', 'compression', 'xbzrle-cache', 'status', 'setup-time', 'total-time', 'ram']);
    const done = sourceMigrationInfo({ status: 'completed', setupTime: 2, downtime: 0, totalTime: 654, ram, xbzrle, compression });
    // The exact line QEMU 7.2.22 printed (ram and xbzrle members in QEMU order).
    expect(toQmpJson(done)).toBe(
      '{"compression": {"compression-rate": 0, "busy": 0, "compressed-size": -128, "pages": 16, "busy-rate": 0}, "xbzrle-cache": {"encoding-rate": 0, "bytes": 0, "cache-size": 67108864, "cache-miss-rate": 0, "pages": 0, "overflow": 0, "cache-miss": 0}, "status": "completed", "setup-time": 2, "downtime": 0, "total-time": 654, "ram": {"total": 268435456, "postcopy-requests": 0, "dirty-sync-count": 3, "multifd-bytes": 0, "pages-per-second": 0, "downtime-bytes": 0, "page-size": 4096, "remaining": 0, "postcopy-bytes": 0, "mbps": 7.2493374233128831, "transferred": 589932, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 0, "duplicate": 0, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 0, "normal": 0}}',
    );
    for (const s of ['postcopy-active', 'postcopy-paused', 'postcopy-recover', 'pre-switchover', 'device', 'cancelling'] as const) {
      expect(sourceMigrationInfo({ status: s, ram })).toHaveProperty('ram');
    }
    expect(sourceMigrationInfo({ status: 'active', ram })).not.toHaveProperty('xbzrle-cache');
  });

  it('destination: no status while listening, status + socket-address later, blocktime when completed', () => {
    const sa = [{ port: '5701', ipv4: true as const, host: '127.0.0.1', type: 'inet' as const }];
    expect(toQmpJson(destinationMigrationInfo({ status: 'none', socketAddress: sa }))).toBe(
      '{"socket-address": [{"port": "5701", "ipv4": true, "host": "127.0.0.1", "type": "inet"}]}',
    );
    expect(toQmpJson(destinationMigrationInfo({ status: 'postcopy-active', socketAddress: sa }))).toBe(
      '{"status": "postcopy-active", "socket-address": [{"port": "5701", "ipv4": true, "host": "127.0.0.1", "type": "inet"}]}',
    );
    expect(destinationMigrationInfo({ status: 'completed', blocktime: { total: 12, vcpu: [12] } })).toEqual({
      status: 'completed',
      'postcopy-blocktime': 12,
      'postcopy-vcpu-blocktime': [12],
    });
    expect(destinationMigrationInfo({ status: 'active', blocktime: { total: 1, vcpu: [1] } })).toEqual({ status: 'active' });
  });
});
