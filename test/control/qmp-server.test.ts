import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EventBus } from '../../src/control/events.js';
import { QmpServer } from '../../src/control/qmp-server.js';
import { QmpError } from '../../src/errors.js';
import { memoryChannelPair } from '../../src/transport/channel.js';
import { RawQmp } from './raw-client.js';

describe('QmpServer', () => {
  let dir: string;
  let bus: EventBus;
  let server: QmpServer;
  let path: string;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'qmp-srv-'));
    bus = new EventBus();
    server = new QmpServer({ bus, version: { major: 7, minor: 2, micro: 22 } });
    path = join(dir, 'qmp.sock');
    const addr = await server.listen(`unix:${path}`);
    expect(addr).toEqual({ path, type: 'unix' });
  });
  afterEach(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('greets like QEMU with package "postcopy"', async () => {
    const c = await RawQmp.connect({ path });
    expect(c.greeting).toBe('{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "postcopy"}, "capabilities": ["oob"]}}');
    c.close();
  });

  it('requires qmp_capabilities first, then runs async handlers with id', async () => {
    server.register('echo', async (args) => {
      await new Promise((r) => setTimeout(r, 5));
      return { got: args.v ?? null };
    });
    const c = await RawQmp.connect({ path });
    expect(await c.cmd('{"execute":"echo","id":7}')).toBe(
      `{"id": 7, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}`,
    );
    expect(await c.cmd('{"execute":"qmp_capabilities"}')).toBe('{"return": {}}');
    expect(await c.cmd('{"execute":"echo","arguments":{"v":[1,"a"]},"id":"q"}')).toBe('{"return": {"got": [1, "a"]}, "id": "q"}');
    expect(await c.cmd('{"execute":"nope"}')).toBe('{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}');
    c.close();
  });

  it('maps QmpError to its class and other errors to GenericError; undefined returns {}', async () => {
    server.register('bad', () => {
      throw new QmpError('No such thing', 'DeviceNotActive');
    });
    server.register('boom', async () => {
      throw new Error('it broke');
    });
    server.register('nothing', () => undefined);
    const c = await RawQmp.connect({ path });
    await c.cmd('{"execute":"qmp_capabilities"}');
    expect(await c.cmd('{"execute":"bad"}')).toBe('{"error": {"class": "DeviceNotActive", "desc": "No such thing"}}');
    expect(await c.cmd('{"execute":"boom"}')).toBe('{"error": {"class": "GenericError", "desc": "it broke"}}');
    expect(await c.cmd('{"execute":"nothing"}')).toBe('{"return": {}}');
    c.close();
  });

  it('answers in-band requests in order even when sent in one write, and split across writes', async () => {
    let n = 0;
    server.register('slow', async () => {
      await new Promise((r) => setTimeout(r, 20));
      return ++n;
    });
    server.register('fast', () => ++n);
    const c = await RawQmp.connect({ path });
    c.sock.write('{"execute":"qmp_capabilities"}{"execute":"slow","id":1}{"execute":"fast","id":2}\n{"execute":');
    expect(await c.next()).toBe('{"return": {}}');
    expect(await c.next()).toBe('{"return": 1, "id": 1}');
    expect(await c.next()).toBe('{"return": 2, "id": 2}');
    c.sock.write('"fast","id":3}\n');
    expect(await c.next()).toBe('{"return": 3, "id": 3}');
    c.close();
  });

  it('runs exec-oob commands past a busy in-band one once oob is enabled', async () => {
    let release!: () => void;
    server.register('block', () => new Promise<void>((r) => (release = r)));
    server.register('migrate-pause', () => ({ paused: true }), { allowOob: true });
    const c = await RawQmp.connect({ path });
    expect(await c.cmd('{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}')).toBe('{"return": {}}');
    c.sock.write('{"execute":"block","id":"b"}\n{"exec-oob":"migrate-pause","id":"p"}\n');
    expect(await c.next()).toBe('{"return": {"paused": true}, "id": "p"}');
    release();
    expect(await c.next()).toBe('{"return": {}, "id": "b"}');
    expect(await c.cmd('{"exec-oob":"block"}')).toBe('{"error": {"class": "GenericError", "desc": "The command block does not support OOB"}}');
    // texts captured from QEMU 7.2.22 with oob enabled
    expect(await c.cmd('{"exec-oob":"migrate-pause","execute":"query-version","id":1}')).toBe(
      `{"id": 1, "error": {"class": "GenericError", "desc": "QMP input member 'execute' clashes with 'exec-oob'"}}`,
    );
    expect(await c.cmd('{"exec-oob":5,"id":2}')).toBe(`{"id": 2, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' must be a string"}}`);
    expect(await c.cmd('{"exec-oob":"nosuch","id":3}')).toBe('{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}');
    c.close();
  });

  it('broadcasts events with timestamps to every negotiated client, none before negotiation', async () => {
    const a = await RawQmp.connect({ path });
    const b = await RawQmp.connect({ path });
    await a.cmd('{"execute":"qmp_capabilities"}');
    bus.emit('MIGRATION', { status: 'setup' });
    await b.cmd('{"execute":"qmp_capabilities"}');
    bus.emit('STOP');
    await a.cmd('{"execute":"query-version"}');
    await b.cmd('{"execute":"query-version"}');
    expect(a.events).toHaveLength(2);
    expect(b.events).toHaveLength(1);
    expect(a.events[0]).toMatch(/^\{"timestamp": \{"seconds": \d+, "microseconds": \d+\}, "event": "MIGRATION", "data": \{"status": "setup"\}\}$/);
    expect(b.events[0]).toMatch(/^\{"timestamp": \{"seconds": \d+, "microseconds": \d+\}, "event": "STOP"\}$/);
    expect(server.clients).toHaveLength(2);
    a.close();
    b.close();
  });

  it('serves tcp on port 0 and an attached in-memory stream; query-commands lists registrations', async () => {
    server.register('migrate', () => undefined);
    const addr = await server.listen('tcp:127.0.0.1:0');
    expect(addr).toMatchObject({ ipv4: true, host: '127.0.0.1', type: 'inet' });
    const c = await RawQmp.connect({ host: '127.0.0.1', port: Number((addr as { port: string }).port) });
    await c.cmd('{"execute":"qmp_capabilities"}');
    const cmds = JSON.parse(await c.cmd('{"execute":"query-commands"}')).return.map((x: { name: string }) => x.name);
    expect(cmds).toEqual(expect.arrayContaining(['qmp_capabilities', 'query-version', 'migrate']));
    c.close();

    const [ours, theirs] = memoryChannelPair();
    server.attach(ours);
    theirs.setEncoding('utf8');
    let text = '';
    theirs.on('data', (d: string) => (text += d));
    theirs.write('{"execute":"qmp_capabilities"}\n');
    await new Promise((r) => setTimeout(r, 20));
    expect(text.split('\r\n')[1]).toBe('{"return": {}}');
  });
});
