import { describe, expect, it } from 'vitest';
import { formatDouble, qdictBucket, JsonFloat, JsonParseError, parseQmpJson, toQmpJson } from '../../src/control/json.js';
import { JsonSplitter } from '../../src/control/json-stream.js';

describe('parseQmpJson', () => {
  it('keeps integers exact and tells them from floats', () => {
    expect(parseQmpJson('1')).toBe(1);
    expect(parseQmpJson('-1')).toBe(-1);
    expect(parseQmpJson('18446744073709551615')).toBe(18446744073709551615n);
    expect(parseQmpJson('-9223372036854775808')).toBe(-9223372036854775808n);
    expect(parseQmpJson('1.0')).toEqual(new JsonFloat(1));
    expect(parseQmpJson('1e3')).toEqual(new JsonFloat(1000));
    // beyond 64 bits QEMU falls back to a double
    expect(parseQmpJson('18446744073709551616')).toBeInstanceOf(JsonFloat);
  });
  it('parses objects, arrays, escapes and single-quoted strings (QEMU extension)', () => {
    expect(parseQmpJson(`{"a": [true, false, null], 'b': "x\\u00e9\\n\\/"}`)).toEqual({ a: [true, false, null], b: 'xé\n/' });
  });
  it('reports errors with QEMU texts', () => {
    expect(() => parseQmpJson('garbage')).toThrow(new JsonParseError("JSON parse error, invalid keyword 'garbage'"));
    expect(() => parseQmpJson('{"a":1,"a":2}')).toThrow('JSON parse error, duplicate key');
    expect(() => parseQmpJson('}')).toThrow('JSON parse error, expecting value');
  });
  it('does not let __proto__ keys pollute prototypes', () => {
    const v = parseQmpJson('{"__proto__": {"x": 1}}') as Record<string, unknown>;
    expect(Object.keys(v)).toEqual(['__proto__']);
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });
});

describe('toQmpJson', () => {
  it('prints like QEMU: ", " and ": " separators, exact big integers', () => {
    expect(toQmpJson({ a: 1, b: [1, 2], c: {}, d: [], e: 18446744073709551615n, f: undefined })).toBe(
      '{"d": [], "e": 18446744073709551615, "a": 1, "b": [1, 2], "c": {}}', // QDict bucket order

    );
  });
  it("orders members as QEMU's QDict does, whatever the insertion order", () => {
    expect(toQmpJson({ type: 'inet', host: '127.0.0.1', ipv4: true, port: '5701' })).toBe(
      '{"port": "5701", "ipv4": true, "host": "127.0.0.1", "type": "inet"}',
    );
    expect(toQmpJson({ error: { desc: 'd', class: 'GenericError' }, id: 1 })).toBe('{"id": 1, "error": {"class": "GenericError", "desc": "d"}}');
    expect(toQmpJson({ id: 1, return: {} })).toBe('{"return": {}, "id": 1}');
    expect(qdictBucket('micro')).toBe(qdictBucket('minor'));
    // Replies captured from QEMU 7.2.22 that nothing here builds in order:
    expect(toQmpJson({ running: true, singlestep: false, status: 'running' })).toBe('{"status": "running", "singlestep": false, "running": true}');
    expect(toQmpJson({ data: { pass: 1 }, event: 'MIGRATION_PASS', timestamp: { microseconds: 407539, seconds: 1795320368 } })).toBe(
      '{"timestamp": {"seconds": 1795320368, "microseconds": 407539}, "event": "MIGRATION_PASS", "data": {"pass": 1}}',
    );
    expect(toQmpJson({ reason: 'error', mode: 'primary' })).toBe('{"mode": "primary", "reason": "error"}');
  });
  it('escapes non-ASCII and control characters in upper-case \\u form, keeps "/"', () => {
    expect(toQmpJson('é\u0001/😀"\\\n')).toBe('"\\u00E9\\u0001/\\uD83D\\uDE00\\"\\\\\\n"');
  });
  it('prints doubles with %.17g (a captured mbps value)', () => {
    expect(formatDouble(7.2493374233128831)).toBe('7.2493374233128831');
    expect(formatDouble(2.5)).toBe('2.5');
    expect(formatDouble(1e-7)).toBe('9.9999999999999995e-08');
    expect(toQmpJson(0.1)).toBe('0.10000000000000001');
    expect(toQmpJson(new JsonFloat(3))).toBe('3');
  });
});

describe('JsonSplitter', () => {
  it('splits back-to-back objects, objects across chunks, and bare words', () => {
    const s = new JsonSplitter();
    expect(s.push('{"a":1}{"b":[1,')).toEqual(['{"a":1}']);
    expect(s.push('2]} garbage\n')).toEqual(['{"b":[1,2]}', 'garbage']);
    expect(s.push('"x}"')).toEqual(['"x}"']);
    expect(s.push('{"s":"}{"}')).toEqual(['{"s":"}{"}']);
    expect(s.push(' }')).toEqual(['}']);
  });
  it('drops an endless text instead of growing without bound', () => {
    expect(JsonSplitter.MAX_TEXT).toBe(64 << 20);
    const s = new JsonSplitter(1000);
    const big = '{"a":"' + 'x'.repeat(1000);
    const out = s.push(big);
    expect(out).toHaveLength(1);
    expect(() => parseQmpJson(out[0]!)).toThrow(/JSON parse error/);
    expect(s.push('{"b":1}')).toEqual(['{"b":1}']);
  });
});
