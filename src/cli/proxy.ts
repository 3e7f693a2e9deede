/**
 * `postcopy proxy LISTEN-URI TARGET-URI [options]`: the decoding drill proxy
 * with fault injection; `postcopy proxy --print FILE` prints a record file.
 */

import { PostcopyError } from '../errors.js';
import { type CutMode, type CutRule, ITEM_KINDS, PREEMPT_KINDS, parseBytes, parseCutMode, parseCutOn } from '../proxy/cut.js';
import { FaultProxy } from '../proxy/proxy.js';
import { formatRecords, readRecordFile } from '../proxy/record.js';
import { startProxyControl } from '../proxy/control.js';
import type { Verb } from './main.js';

const HELP = `usage: postcopy proxy LISTEN-URI TARGET-URI [options]
       postcopy proxy --print FILE [--pages] [--json]

Relay migration connections from LISTEN-URI (tcp:HOST:PORT or unix:PATH;
where the source migrates to) to TARGET-URI (the destination), unchanged,
decoding both channels live: the main stream (source -> destination) and
the return path (destination -> source). Each accepted connection gets its
own target connection; after a cut, the next one (the recovery channel,
which in QEMU 7.2 starts with no header) is relayed the same way.

  --record FILE        write every decoded item as msgpack records
                       {t, dir, conn, kind, fields} (no page payloads)
  --cut-after BYTES    cut after BYTES main-channel bytes (k/M/G suffixes)
  --cut-on KIND[:N]    cut on the Nth (default 1st) item of KIND, counted per
                       connection; prefix main: or rp: to pick a direction,
                       preempt: for a postcopy-preempt connection's records
  --position P         after (default: the item is relayed whole, then the cut)
                       or before (the item's first byte is never relayed)
  --mode M             kill (default: close both sockets, peers see FIN),
                       reset (RST both: peers see ECONNRESET; unix sockets
                       have no RST and are just closed), blackhole (keep both
                       sockets open and silently drop everything)
  --repeat N           a cut rule applies to N connections (default 1)
  --qmp ADDR           control socket (unix:PATH or tcp:HOST:PORT), QMP-like:
                       cut {mode?, conn?}, cut-on {on|after, mode?, position?,
                       repeat?}, query-proxy; events PROXY_CONNECTION,
                       PROXY_CUT, PROXY_CLOSED, PROXY_DECODE_ERROR, PROXY_ITEM
  --no-decode          relay only
  --quiet              do not print items (default prints non-page items)
  --print FILE         print a record file (--pages: page records too;
                       --json: one JSON record per line)

KIND on the main channel: ${ITEM_KINDS.main.join(' ')}
  (items inside PACKAGED count too: POSTCOPY_LISTEN, FULL, PING (3), POSTCOPY_RUN),
  and in-package (cuts in the middle of the PACKAGED blob).
KIND on the return path: ${ITEM_KINDS.rp.join(' ')}
  (RECV_BITMAP exists in both directions: use main: or rp: to tell them apart.)
KIND on a postcopy-preempt connection, with the preempt: prefix: ${PREEMPT_KINDS.join(' ')}
Examples: --cut-on REQ_PAGES:3   --cut-on rp:PONG:2   --cut-on in-package
          --cut-on POSTCOPY_RUN --position before   --cut-after 64M --mode reset

With a QEMU 7.2 peer never cut inside the recovery handshake (RECV_BITMAP,
RECV_BITMAP_DATA, POSTCOPY_RESUME, RESUME_ACK of a recovery connection): the
destination crashes and the source stays in postcopy-recover. A blackholed
link is never noticed by QEMU: use migrate-pause on both sides.`;

function printRecords(file: string, pages: boolean, json: boolean): number {
  const recs = readRecordFile(file);
  if (json) for (const r of recs) console.log(JSON.stringify(r));
  else console.log(formatRecords(recs, { pages }));
  return 0;
}

export const verb: Verb = {
  summary: 'relay a migration, decode both channels, record, cut the link on cue',
  async run(args: string[]): Promise<number> {
    const pos: string[] = [];
    const triggers: CutRule['trigger'][] = [];
    let mode: CutMode = 'kill';
    let position: 'before' | 'after' | undefined;
    let repeat: number | undefined;
    let record: string | undefined;
    let qmpAddr: string | undefined;
    let decode = true;
    let quiet = false;
    let print: string | undefined;
    let pages = false;
    let json = false;
    try {
      for (let i = 0; i < args.length; i++) {
        const a = args[i]!;
        const val = (): string => {
          const v = args[++i];
          if (v === undefined) throw new RangeError(`${a} needs a value`);
          return v;
        };
        if (a === '-h' || a === '--help') {
          console.log(HELP);
          return 0;
        } else if (a === '--record') record = val();
        else if (a === '--cut-after') triggers.push({ type: 'bytes', bytes: parseBytes(val()) });
        else if (a === '--cut-on') triggers.push(parseCutOn(val()));
        else if (a === '--mode') mode = parseCutMode(val());
        else if (a === '--position') {
          const p = val();
          if (p !== 'before' && p !== 'after') throw new RangeError(`--position ${p}: before or after`);
          position = p;
        } else if (a === '--repeat') {
          repeat = Number(val());
          if (!Number.isSafeInteger(repeat) || repeat < 1) throw new RangeError('--repeat needs a positive integer');
        } else if (a === '--qmp') qmpAddr = val();
        else if (a === '--no-decode') decode = false;
        else if (a === '--quiet') quiet = true;
        else if (a === '--print') print = val();
        else if (a === '--pages') pages = true;
        else if (a === '--json') json = true;
        else if (a.startsWith('-')) throw new RangeError(`unknown option '${a}'`);
        else pos.push(a);
      }
      if (print !== undefined) {
        if (pos.length > 0) throw new RangeError('--print takes no URIs');
        return printRecords(print, pages, json);
      }
      if (pos.length !== 2) throw new RangeError('LISTEN-URI and TARGET-URI are required');
      if (!decode && triggers.some((t) => t.type === 'kind')) throw new RangeError('--cut-on needs decoding (drop --no-decode)');
    } catch (e) {
      if (e instanceof RangeError) {
        console.error(`postcopy proxy: ${e.message}\n\n${HELP}`);
        return 2;
      }
      if (e instanceof Error && print !== undefined) {
        console.error(`postcopy proxy: ${print}: ${e.message}`);
        return 1;
      }
      throw e;
    }
    const cuts: CutRule[] = triggers.map((trigger) => ({
      trigger,
      mode,
      ...(position ? { position } : {}),
      ...(repeat ? { repeat } : {}),
    }));
    const proxy = new FaultProxy({ listen: pos[0]!, target: pos[1]!, cuts, decode, ...(record ? { record } : {}) });
    try {
      await proxy.listen();
    } catch (e) {
      if (e instanceof PostcopyError || (e as NodeJS.ErrnoException).code) {
        console.error(`postcopy proxy: ${(e as Error).message}`);
        return 1;
      }
      throw e;
    }
    const control = qmpAddr ? await startProxyControl(proxy, qmpAddr) : undefined;
    const PAGE_KINDS = new Set(['ZERO', 'PAGE', 'XBZRLE', 'COMPRESS_PAGE', 'EOS']);
    console.error(`postcopy proxy: ${proxy.uri} -> ${pos[1]}`);
    proxy.on('connection', (c) => console.error(`#${c} connected`));
    proxy.on('close', (c) => console.error(`#${c} closed`));
    proxy.on('connect-error', (e) => console.error(`postcopy proxy: ${e.message}`));
    proxy.on('decode-error', (e, c, dir) => console.error(`#${c} ${dir}: decoding stopped: ${e.message}`));
    proxy.on('cut', (cut) =>
      console.error(`#${cut.conn} CUT (${cut.mode}, ${cut.reason}) after main ${cut.relayed.main} / rp ${cut.relayed.rp} bytes${cut.late ? `, ${cut.late} bytes late` : ''}`),
    );
    if (!quiet) {
      proxy.on('item', (it, c) => {
        if (PAGE_KINDS.has(it.kind)) return;
        console.log(`#${c} ${it.dir.padEnd(4)} @${it.at} ${it.kind} ${JSON.stringify(it.fields)}`);
      });
    }
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    await control?.close();
    await proxy.close();
    const q = proxy.query();
    console.error(`postcopy proxy: ${q.connections.length} connection(s), main ${q.bytes.main} bytes, rp ${q.bytes.rp} bytes, ${q.cuts.length} cut(s)`);
    return 0;
  },
};
