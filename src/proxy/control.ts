/**
 * The proxy's own QMP-like control socket: `cut` {mode?, conn?},
 * `cut-on` {on?, after?, mode?, position?, repeat?} (arm a rule),
 * `query-proxy`; events PROXY_CONNECTION, PROXY_CUT, PROXY_CLOSED,
 * PROXY_DECODE_ERROR and PROXY_ITEM (every decoded item except RAM page
 * records and EOS).
 */

import { QmpError } from '../errors.js';
import { qmpTimestamp } from '../control/events.js';
import type { QmpObject } from '../control/json.js';
import { QmpServer } from '../control/qmp-server.js';
import { type CutMode, type CutRule, parseBytes, parseCutMode, parseCutOn } from './cut.js';
import type { FaultProxy } from './proxy.js';

const PAGE_KINDS = new Set(['ZERO', 'PAGE', 'XBZRLE', 'COMPRESS_PAGE', 'EOS']);

function str(args: QmpObject, name: string): string | undefined {
  const v = args[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new QmpError(`Invalid parameter type for '${name}', expected: string`);
  return v;
}

function num(args: QmpObject, name: string): number | undefined {
  const v = args[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new QmpError(`Invalid parameter type for '${name}', expected: integer`);
  return v;
}

function wrap<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof RangeError) throw new QmpError(e.message);
    throw e;
  }
}

/** Serve control commands for `proxy` on `address` (unix:PATH, tcp:HOST:PORT or a path). */
export async function startProxyControl(proxy: FaultProxy, address: string): Promise<QmpServer> {
  const qmp = new QmpServer({ package: 'postcopy proxy' });
  const send = (event: string, data: Record<string, unknown>): void => qmp.broadcast({ timestamp: qmpTimestamp(), event, data });
  qmp.register('query-proxy', () => JSON.parse(JSON.stringify(proxy.query())) as unknown);
  qmp.register('cut', (args) => {
    const mode: CutMode = wrap(() => parseCutMode(str(args, 'mode') ?? 'kill'));
    const cut = proxy.cut(mode, num(args, 'conn'));
    if (!cut) throw new QmpError('no open connection to cut');
    return JSON.parse(JSON.stringify(cut)) as unknown;
  });
  qmp.register('cut-on', (args) => {
    const on = str(args, 'on');
    const after = str(args, 'after') ?? (args['after'] !== undefined ? String(num(args, 'after')) : undefined);
    if ((on === undefined) === (after === undefined)) throw new QmpError("cut-on needs exactly one of 'on' (KIND[:N]) and 'after' (bytes)");
    const rule: CutRule = wrap(() => ({
      trigger: on !== undefined ? parseCutOn(on) : { type: 'bytes', bytes: parseBytes(after!) },
      mode: parseCutMode(str(args, 'mode') ?? 'kill'),
    }));
    const pos = str(args, 'position');
    if (pos !== undefined && pos !== 'before' && pos !== 'after') throw new QmpError("position must be 'before' or 'after'");
    if (pos) rule.position = pos;
    const repeat = num(args, 'repeat');
    if (repeat !== undefined) rule.repeat = repeat;
    proxy.addCut(rule);
    return {};
  });
  proxy.on('connection', (conn) => send('PROXY_CONNECTION', { conn }));
  proxy.on('close', (conn) => send('PROXY_CLOSED', { conn }));
  proxy.on('cut', (cut) => send('PROXY_CUT', JSON.parse(JSON.stringify(cut)) as Record<string, unknown>));
  proxy.on('decode-error', (e, conn, dir) => send('PROXY_DECODE_ERROR', { conn, dir, message: e.message }));
  proxy.on('item', (item, conn) => {
    if (!PAGE_KINDS.has(item.kind)) send('PROXY_ITEM', { conn, dir: item.dir, kind: item.kind, at: item.at, fields: item.fields });
  });
  await qmp.listen(address);
  return qmp;
}
