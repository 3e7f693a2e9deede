/**
 * `postcopy inspect FILE [--json] [--fields]`: decode a migration stream that
 * a real QEMU (or we) wrote, e.g. with `migrate "exec:cat > FILE"`.
 */

import fs from 'node:fs';
import { PostcopyError } from '../errors.js';
import { formatInspect } from '../inspect/format.js';
import { vmdescFromCapture } from '../inspect/devices.js';
import { inspectStream } from '../inspect/inspect.js';
import type { Vmdesc } from '../wire/vmdesc.js';
import type { Verb } from './main.js';

const HELP = `usage: postcopy inspect FILE [--json] [--fields] [--vmdesc CAPTURE]

Decode a QEMU 7.2 migration stream (FILE, or - for stdin): header,
configuration, sections, RAM blocks with the SHA-256 of their rebuilt
content, page records by kind, commands (and a PACKAGED blob), EOF, and
each device section split into fields with the stream's VMDESCRIPTION.

  --json     print one JSON object instead of text
  --fields   include every decoded device field (text and JSON)
  --vmdesc CAPTURE
             split device sections that have no description of their own
             (postcopy streams: devices inside PACKAGED) with the VMDESCRIPTION
             of CAPTURE, a precopy capture of the same machine (or its JSON)
  -h, --help this help

Exit status: 0 decoded, 1 malformed or truncated stream (the message gives
the byte offset), 2 bad usage.`;

/** Read the tail of a capture (the vmdesc is at its end) and parse its VMDESCRIPTION. */
function readVmdesc(file: string): Vmdesc {
  const TAIL = 64 << 20;
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const n = Math.min(size, TAIL);
    const buf = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const k = fs.readSync(fd, buf, got, n - got, size - n + got);
      if (k === 0) break;
      got += k;
    }
    return vmdescFromCapture(buf.subarray(0, got));
  } finally {
    fs.closeSync(fd);
  }
}

/** Replace bigints (none expected) so JSON.stringify never throws. */
function jsonReplacer(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? v.toString() : v;
}

export const verb: Verb = {
  summary: 'decode a migration stream file (sections, RAM, devices) as text or JSON',
  async run(args: string[]): Promise<number> {
    let file: string | undefined;
    let json = false;
    let fields = false;
    let vmdescFile: string | undefined;
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      if (a === '--vmdesc') {
        vmdescFile = args[++i];
        if (vmdescFile === undefined) {
          console.error(`postcopy inspect: --vmdesc needs a file\n\n${HELP}`);
          return 2;
        }
      } else if (a === '-h' || a === '--help') {
        console.log(HELP);
        return 0;
      } else if (a === '--json') json = true;
      else if (a === '--fields') fields = true;
      else if (a.startsWith('-') && a !== '-') {
        console.error(`postcopy inspect: unknown option '${a}'\n\n${HELP}`);
        return 2;
      } else if (file === undefined) file = a;
      else {
        console.error(`postcopy inspect: one FILE only\n\n${HELP}`);
        return 2;
      }
    }
    if (file === undefined) {
      console.error(`postcopy inspect: FILE missing\n\n${HELP}`);
      return 2;
    }
    let vmdesc: Vmdesc | undefined;
    if (vmdescFile !== undefined) {
      try {
        vmdesc = readVmdesc(vmdescFile);
      } catch (err) {
        console.error(`postcopy inspect: --vmdesc ${vmdescFile}: ${(err as Error).message}`);
        return 1;
      }
    }
    let input: AsyncIterable<Uint8Array>;
    if (file === '-') {
      input = process.stdin;
    } else {
      try {
        const st = fs.statSync(file);
        if (!st.isFile() && !st.isFIFO()) throw new Error(`${file}: not a file`);
      } catch (err) {
        console.error(`postcopy inspect: ${(err as Error).message}`);
        return 1;
      }
      input = fs.createReadStream(file, { highWaterMark: 1 << 20 });
    }
    try {
      const result = await inspectStream(input, { fields, vmdesc });
      const text = json ? JSON.stringify(result, jsonReplacer, 1) : formatInspect(result, { fields });
      await new Promise<void>((resolve, reject) =>
        process.stdout.write(text + '\n', (err) => (err ? reject(err) : resolve())),
      );
      return 0;
    } catch (err) {
      if (err instanceof PostcopyError) {
        console.error(`postcopy inspect: ${err.message}`);
        return 1;
      }
      throw err;
    } finally {
      if ('destroy' in input && typeof input.destroy === 'function' && input !== process.stdin) input.destroy();
    }
  },
};
