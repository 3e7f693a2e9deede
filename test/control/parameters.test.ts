import { describe, expect, it } from 'vitest';
import { toQmpJson, parseQmpJson, type QmpValue } from '../../src/control/json.js';
import { applyParameters, defaultParameters, queryParameters } from '../../src/control/parameters.js';

// Captured from qemu-system-x86_64 7.2.22 (-M none): query-migrate-parameters on a fresh process.
const QEMU_DEFAULT_PARAMS =
  '{"cpu-throttle-tailslow": false, "xbzrle-cache-size": 67108864, "cpu-throttle-initial": 20, "announce-max": 550, "decompress-threads": 2, "compress-threads": 8, "compress-level": 1, "multifd-channels": 2, "multifd-zstd-level": 1, "announce-initial": 50, "block-incremental": false, "compress-wait-thread": true, "downtime-limit": 300, "tls-authz": "", "multifd-compression": "none", "announce-rounds": 5, "announce-step": 100, "tls-creds": "", "multifd-zlib-level": 1, "max-cpu-throttle": 99, "max-postcopy-bandwidth": 0, "tls-hostname": "", "throttle-trigger-threshold": 50, "max-bandwidth": 134217728, "x-checkpoint-delay": 20000, "cpu-throttle-increment": 10}';

// [arguments of migrate-set-parameters, desc QEMU 7.2.22 answered] — captured from the real binary.
const QEMU_ERRORS: Array<[string, string]> = [
  ['{"compress-level":10}', "Parameter 'compress_level' expects a value between 0 and 9"],
  ['{"compress-level":256}', "Parameter 'compress-level' expects uint8_t"],
  ['{"compress-level":"a"}', "Parameter 'compress-level' expects uint64"],
  ['{"compress-threads":0}', "Parameter 'compress_threads' expects a value between 1 and 255"],
  ['{"decompress-threads":0}', "Parameter 'decompress_threads' expects a value between 1 and 255"],
  ['{"throttle-trigger-threshold":101}', "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100"],
  ['{"cpu-throttle-initial":0}', "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"],
  ['{"cpu-throttle-increment":100}', "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99"],
  ['{"downtime-limit":2000001}', "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"],
  ['{"downtime-limit":1e3}', "Parameter 'downtime-limit' expects uint64"],
  ['{"x-checkpoint-delay":4294967296}', "Parameter 'x-checkpoint-delay' expects uint32_t"],
  ['{"multifd-channels":0}', "Parameter 'multifd_channels' expects a value between 1 and 255"],
  ['{"xbzrle-cache-size":4097}', "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"],
  ['{"xbzrle-cache-size":2048}', "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"],
  ['{"max-cpu-throttle":10}', "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"],
  ['{"announce-initial":100001}', "Parameter 'announce_initial' expects a value between 0 and 100000"],
  ['{"announce-rounds":1001}', "Parameter 'announce_rounds' expects a value between 0 and 1000"],
  ['{"announce-step":0}', "Parameter 'announce_step' expects a value between 0 and 10000"],
  ['{"multifd-compression":"lz4"}', "Parameter 'multifd-compression' does not accept value 'lz4'"],
  ['{"bogus":1}', "Parameter 'bogus' is unexpected"],
  ['{"tls-creds":5}', "Invalid parameter type for 'tls-creds', expected: StrOrNull"],
  ['{"compress-wait-thread":1}', "Invalid parameter type for 'compress-wait-thread', expected: boolean"],
];

const set = (json: string, p = defaultParameters()) => applyParameters(p, parseQmpJson(json) as QmpValue);

describe('parameters', () => {
  it('defaults print exactly as QEMU 7.2 prints them (field set, order, types)', () => {
    expect(toQmpJson(queryParameters(defaultParameters()))).toBe(QEMU_DEFAULT_PARAMS);
  });

  it.each(QEMU_ERRORS)('%s → QEMU error text', (json, desc) => {
    const before = defaultParameters();
    expect(() => set(json, before)).toThrow(desc);
    expect(before).toEqual(defaultParameters());
  });

  it('max-bandwidth -1 is stored as 2^64-1 and printed exactly', () => {
    const p = set('{"max-bandwidth": -1}');
    expect(p['max-bandwidth']).toBe(2n ** 64n - 1n);
    expect(toQmpJson(queryParameters(p))).toContain('"max-bandwidth": 18446744073709551615');
  });

  it('tls-* null means ""', () => {
    const p = set('{"tls-creds": "c", "tls-hostname": "h"}');
    expect(p['tls-creds']).toBe('c');
    expect(set('{"tls-creds": null}', p)['tls-creds']).toBe('');
  });

  it('checks max-cpu-throttle against the merged cpu-throttle-initial', () => {
    expect(set('{"cpu-throttle-initial": 50, "max-cpu-throttle": 60}')['max-cpu-throttle']).toBe(60);
    expect(() => set('{"cpu-throttle-initial": 70, "max-cpu-throttle": 60}')).toThrow(/cpu_throttle_initial to 99/);
    const p = set('{"cpu-throttle-initial": 50}');
    expect(() => set('{"max-cpu-throttle": 49}', p)).toThrow(/cpu_throttle_initial to 99/);
  });

  it('7.2 quirk: multifd-zlib-level / multifd-zstd-level are accepted, not range-checked, not applied', () => {
    const p = set('{"multifd-zlib-level": 21, "multifd-zstd-level": 30}');
    expect(p['multifd-zlib-level']).toBe(1);
    expect(p['multifd-zstd-level']).toBe(1);
    expect(() => set('{"multifd-zlib-level": 256}')).toThrow("Parameter 'multifd-zlib-level' expects uint8_t");
  });

  it('applies good values with their types', () => {
    const p = set('{"downtime-limit": 2000000, "xbzrle-cache-size": 1048576, "max-postcopy-bandwidth": 1000, "multifd-compression": "zstd"}');
    expect(p['downtime-limit']).toBe(2000000);
    expect(p['xbzrle-cache-size']).toBe(1048576);
    expect(p['max-postcopy-bandwidth']).toBe(1000n);
    expect(p['multifd-compression']).toBe('zstd');
  });

  it('zero-copy-send refuses multifd-compression', () => {
    expect(() => applyParameters(defaultParameters(), { 'multifd-compression': 'zlib' }, { zeroCopySend: true })).toThrow(
      'Zero copy only available for non-compressed non-TLS multifd migration',
    );
  });
});
