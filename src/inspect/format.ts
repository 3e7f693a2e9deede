/** Human-readable rendering of an {@link InspectResult}. */

import type { DecodedField, DecodedStruct } from '../wire/vmdesc.js';
import type { InspectPageCounts, InspectResult, InspectSection } from './types.js';

/** Options of {@link formatInspect}. */
export interface FormatOptions {
  /** Print every device field (default false). */
  fields?: boolean;
  /** Print at most this many sections (default 200; the rest are summarised). */
  maxSections?: number;
}

const hex = (n: number, w = 8): string => `0x${n.toString(16).padStart(w, '0')}`;

function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    u++;
  }
  return `${v} ${units[u]}`;
}

function pageList(p: InspectPageCounts | undefined): string {
  if (!p) return '';
  const parts: string[] = [];
  if (p.zero) parts.push(`zero ${p.zero}`);
  if (p.normal) parts.push(`normal ${p.normal}`);
  if (p.xbzrle) parts.push(`xbzrle ${p.xbzrle}`);
  if (p.compressed) parts.push(`compressed ${p.compressed}`);
  return parts.join(', ');
}

function sectionLine(s: InspectSection): string {
  const kind = s.kind.toUpperCase().padEnd(8);
  const id = s.sectionId !== undefined ? `id ${String(s.sectionId).padEnd(4)}` : ''.padEnd(7);
  let what = '';
  if (s.idstr !== undefined) {
    what = s.idstr;
    if (s.instanceId !== undefined) what += ` (${s.instanceId}) v${s.versionId}`;
  } else if (s.command) what = s.command;
  const pages = pageList(s.pages);
  const pkg = s.packaged ? ' [packaged]' : '';
  return `  ${hex(s.offset)} ${kind}${id}${what.padEnd(40)} ${String(s.length).padStart(9)} B${pages ? `  ${pages}` : ''}${pkg}`;
}

function fieldValue(f: DecodedField): string {
  if (f.value !== undefined) return ` = ${String(f.value)}`;
  if (f.values !== undefined) return ` = [${f.values.join(', ')}]`;
  if (f.text !== undefined) return ` = "${f.text}"`;
  if (f.hex !== undefined) return ` = ${f.hex}`;
  if (f.elements !== undefined) return '';
  return ` (${f.size} bytes)`;
}

function fieldLines(fields: readonly DecodedField[], subs: readonly DecodedStruct[], indent: string, out: string[]): void {
  for (const f of fields) {
    const name = f.index !== undefined ? `${f.name}[${f.index}]` : f.arrayLen !== undefined ? `${f.name}[${f.arrayLen}]` : f.name;
    out.push(`${indent}${name}: ${f.type}${fieldValue(f)}`);
    if (f.elements) {
      f.elements.forEach((e, i) => {
        if (f.elements!.length > 1) out.push(`${indent}  [${i}] ${e.name}`);
        fieldLines(e.fields, e.subsections, `${indent}    `, out);
      });
    }
  }
  for (const s of subs) {
    out.push(`${indent}subsection ${s.name} v${s.version}`);
    fieldLines(s.fields, s.subsections, `${indent}  `, out);
  }
}

/** Render a result as text (what `postcopy inspect FILE` prints). */
export function formatInspect(r: InspectResult, opts: FormatOptions = {}): string {
  const out: string[] = [];
  out.push(`migration stream: ${r.totalBytes} bytes, format version ${r.version}`);
  if (r.configuration) {
    let line = `configuration: machine "${r.configuration.name}"`;
    if (r.configuration.capabilities) line += `, capabilities [${r.configuration.capabilities.join(', ')}]`;
    if (r.configuration.uuid) line += `, uuid ${r.configuration.uuid}`;
    out.push(line);
  } else {
    out.push('configuration: (none)');
  }
  out.push(`RAM: ${r.ramBlocks.length} block(s), total ${hex(r.ramTotal, 0)} (${human(r.ramTotal)})`);
  const w = Math.max(8, ...r.ramBlocks.map((b) => b.idstr.length));
  for (const b of r.ramBlocks) {
    const pages = pageList(b.pages) || 'no pages';
    out.push(`  ${b.idstr.padEnd(w)}  used ${hex(b.usedLength, 0).padEnd(11)} ${human(b.usedLength).padEnd(9)} ${pages}`);
    out.push(`  ${''.padEnd(w)}  sha256 ${b.sha256}`);
  }
  out.push(`pages: ${pageList(r.pages) || 'none'}`);
  if (r.commands.length) {
    out.push('commands:');
    for (const c of r.commands) {
      const args = Object.keys(c.args).length ? ` ${JSON.stringify(c.args)}` : '';
      out.push(`  ${hex(c.offset)} ${c.name}${args}${c.packaged ? ' [packaged]' : ''}`);
    }
  }
  for (const p of r.packaged) out.push(`package: at ${hex(p.offset)}, ${p.length} bytes, ${p.items} item(s)`);
  const max = opts.maxSections ?? 200;
  out.push(`sections (${r.sections.length}):`);
  r.sections.slice(0, max).forEach((s) => out.push(sectionLine(s)));
  if (r.sections.length > max) out.push(`  ... ${r.sections.length - max} more`);
  const split = new Set(r.devices.map((d) => d.split));
  out.push(`devices (${r.devices.length}${split.size ? `, split by ${[...split].join(' and ')}` : ''}):`);
  for (const d of r.devices) {
    out.push(`  ${hex(d.offset)} id ${String(d.sectionId).padEnd(4)}${`${d.idstr} (${d.instanceId}) v${d.versionId}`.padEnd(40)} ${String(d.size).padStart(9)} B`);
    if (opts.fields && (d.fields || d.subsections)) fieldLines(d.fields ?? [], d.subsections ?? [], '      ', out);
  }
  out.push(`EOF: ${r.eof ? 'yes' : 'no'}`);
  if (r.vmdesc) out.push(`VMDESCRIPTION: at ${hex(r.vmdesc.offset)}, ${r.vmdesc.length} bytes, ${r.vmdesc.devices} device(s)`);
  for (const wmsg of r.warnings) out.push(`warning: ${wmsg}`);
  return out.join('\n');
}
