/**
 * Fault-injection rules of the proxy: when to cut (after N main-channel
 * bytes, or on the Nth decoded item of a kind) and how (kill, reset,
 * blackhole).
 */

import type { ProxyDirection, ProxyItem } from './decoder.js';

/** How a cut looks to the peers. */
export type CutMode = 'kill' | 'reset' | 'blackhole';

/** All cut modes (for option parsing). */
export const CUT_MODES: readonly CutMode[] = ['kill', 'reset', 'blackhole'];

/** What triggers a cut. */
export type CutTrigger =
  /** After this many bytes of the main channel (source → destination) of a connection. */
  | { type: 'bytes'; bytes: number }
  /**
   * On the `nth` (1-based, counted per connection) decoded item of `kind`,
   * in direction `dir` (either when absent). Kind `in-package` cuts in the
   * middle of the PACKAGED blob. `preempt`: the item is a page record of a
   * postcopy-preempt connection (items there match only such rules).
   */
  | { type: 'kind'; kind: string; nth: number; dir?: ProxyDirection; preempt?: true };

/** A cut rule. */
export interface CutRule {
  trigger: CutTrigger;
  mode: CutMode;
  /** For kind triggers: cut after the item went through (default) or before its first byte. */
  position?: 'after' | 'before';
  /** How many connections this rule cuts (default 1: the recovery connection is relayed normally). */
  repeat?: number;
}

/** The pseudo-kind that cuts inside a PACKAGED blob. */
export const IN_PACKAGE = 'in-package';

/** Item kinds of a postcopy-preempt connection. */
export const PREEMPT_KINDS: readonly string[] = ['PAGE', 'ZERO', 'EOS'];

/**
 * Parse a `--cut-on` value: `[main:|rp:|preempt:]KIND[:N]` (KIND
 * case-insensitive, `in-package`/`PACKAGED`-relative; `preempt:` names the
 * page records of a postcopy-preempt connection). Throws a RangeError with a
 * clear message.
 */
export function parseCutOn(spec: string): Extract<CutTrigger, { type: 'kind' }> {
  let rest = spec.trim();
  let dir: ProxyDirection | undefined;
  let preempt = false;
  const m = /^(main|rp|preempt):(.*)$/i.exec(rest);
  if (m) {
    const prefix = m[1]!.toLowerCase();
    preempt = prefix === 'preempt';
    dir = preempt ? 'main' : (prefix as ProxyDirection);
    rest = m[2]!;
  }
  let nth = 1;
  const n = /^(.*):(\d+)$/.exec(rest);
  if (n) {
    rest = n[1]!;
    nth = Number(n[2]);
    if (!Number.isSafeInteger(nth) || nth < 1) throw new RangeError(`--cut-on ${spec}: N must be a positive integer`);
  }
  const kind = rest.toLowerCase() === IN_PACKAGE ? IN_PACKAGE : rest.toUpperCase();
  if (!/^[A-Z_]+$/.test(kind) && kind !== IN_PACKAGE) throw new RangeError(`--cut-on ${spec}: bad item kind '${rest}'`);
  if (kind !== IN_PACKAGE && !KNOWN_KINDS.has(kind)) {
    throw new RangeError(`--cut-on ${spec}: unknown item kind '${rest}' (see --help for the list)`);
  }
  if (preempt && !PREEMPT_KINDS.includes(kind)) {
    throw new RangeError(`--cut-on ${spec}: a preempt connection carries only ${PREEMPT_KINDS.join(', ')}`);
  }
  const t: Extract<CutTrigger, { type: 'kind' }> = { type: 'kind', kind, nth };
  if (dir) t.dir = dir;
  if (preempt) t.preempt = true;
  return t;
}

/** Item kinds by direction, as the decoders name them. */
export const ITEM_KINDS: Readonly<Record<ProxyDirection, readonly string[]>> = {
  main: [
    'HEADER', 'CONFIGURATION', 'START', 'PART', 'END', 'FULL', 'EOF', 'VMDESCRIPTION',
    'OPEN_RETURN_PATH', 'PING', 'POSTCOPY_ADVISE', 'POSTCOPY_LISTEN', 'POSTCOPY_RUN', 'POSTCOPY_RAM_DISCARD',
    'PACKAGED', 'ENABLE_COLO', 'POSTCOPY_RESUME', 'RECV_BITMAP',
    'MEM_SIZE', 'ZERO', 'PAGE', 'XBZRLE', 'COMPRESS_PAGE', 'EOS',
  ],
  rp: ['SHUT', 'PONG', 'REQ_PAGES_ID', 'REQ_PAGES', 'RECV_BITMAP', 'RECV_BITMAP_DATA', 'RESUME_ACK'],
};

const KNOWN_KINDS = new Set([...ITEM_KINDS.main, ...ITEM_KINDS.rp]);

/** Parse a byte count: digits with an optional k/M/G suffix (powers of 1024). */
export function parseBytes(spec: string): number {
  const m = /^(\d+)([kKmMgG]?)$/.exec(spec.trim());
  if (!m) throw new RangeError(`bad byte count '${spec}' (digits with an optional k, M or G suffix)`);
  const mul = { '': 1, k: 1024, m: 1 << 20, g: 1 << 30 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mul;
}

/** Parse a --mode value. */
export function parseCutMode(spec: string): CutMode {
  const m = spec.trim().toLowerCase();
  if (!(CUT_MODES as readonly string[]).includes(m)) throw new RangeError(`bad cut mode '${spec}' (kill, reset or blackhole)`);
  return m as CutMode;
}

/** Per-connection matching state of one rule. */
export class RuleState {
  /** Connections cut by this rule so far. */
  fired = 0;
  constructor(readonly rule: CutRule) {}

  /** True while the rule may still cut a connection. */
  get active(): boolean {
    return this.fired < (this.rule.repeat ?? 1);
  }
}

/** Counts matches of rules inside one connection. */
export class ConnectionMatcher {
  private readonly counts = new Map<RuleState, number>();
  constructor(private readonly rules: readonly RuleState[]) {}

  /** Rules that may fire on items of `dir` in this connection. */
  armedFor(dir: ProxyDirection): boolean {
    return this.rules.some((r) => r.active && r.rule.trigger.type === 'kind' && (r.rule.trigger.dir ?? dir) === dir);
  }

  /** The smallest main-channel byte limit of the active byte rules. */
  byteLimit(): { rule: RuleState; bytes: number } | undefined {
    let best: { rule: RuleState; bytes: number } | undefined;
    for (const r of this.rules) {
      const t = r.rule.trigger;
      if (r.active && t.type === 'bytes' && (!best || t.bytes < best.bytes)) best = { rule: r, bytes: t.bytes };
    }
    return best;
  }

  /**
   * Count `item` against the kind rules; returns the rule that fires on it
   * and the stream offset (in the item's direction) at which to cut.
   */
  match(item: ProxyItem): { rule: RuleState; offset: number } | undefined {
    for (const r of this.rules) {
      const t = r.rule.trigger;
      if (!r.active || t.type !== 'kind') continue;
      if (t.dir !== undefined && t.dir !== item.dir) continue;
      if ((t.preempt === true) !== (item.fields['preempt'] === true)) continue;
      const isPkg = t.kind === IN_PACKAGE && item.kind === 'PACKAGED';
      if (!isPkg && t.kind !== item.kind) continue;
      const n = (this.counts.get(r) ?? 0) + 1;
      this.counts.set(r, n);
      if (n !== t.nth) continue;
      if (isPkg) {
        const len = Number(item.fields['length'] ?? 0);
        return { rule: r, offset: item.end + Math.floor(len / 2) };
      }
      return { rule: r, offset: r.rule.position === 'before' ? item.at : item.end };
    }
    return undefined;
  }
}
