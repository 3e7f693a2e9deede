import { describe, expect, it } from 'vitest';
import { DEFAULT_WORKLOAD, parseSize, parseWorkload } from '../../src/vm/options.js';

describe('parseSize', () => {
  it('reads suffixes as powers of 1024, case-insensitive', () => {
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('64k')).toBe(65536);
    expect(parseSize('256M')).toBe(268435456);
    expect(parseSize('1G')).toBe(1073741824);
    expect(parseSize('1.5g')).toBe(1610612736);
    expect(parseSize('2T')).toBe(2 * 1024 ** 4);
  });
  it('applies the default unit to bare numbers, like QEMU -m', () => {
    expect(parseSize('96', 'M')).toBe(96 * 1024 * 1024);
    expect(parseSize('96B', 'M')).toBe(96);
  });
  it('rejects garbage and fractional bytes', () => {
    expect(() => parseSize('')).toThrow(/invalid size/);
    expect(() => parseSize('12X')).toThrow(/invalid size '12X'/);
    expect(() => parseSize('-1M')).toThrow(/invalid size/);
    expect(() => parseSize('1.5')).toThrow(/whole number/);
  });
});

describe('parseWorkload', () => {
  it('fills defaults for missing keys', () => {
    expect(parseWorkload('')).toEqual(DEFAULT_WORKLOAD);
    expect(parseWorkload('pattern=rand')).toEqual({ ...DEFAULT_WORKLOAD, pattern: 'rand' });
  });
  it('parses every key', () => {
    expect(parseWorkload('pattern=hot,rate=5000,bytes=4096,wss=64M,mode=read')).toEqual({
      mode: 'read',
      pattern: 'hot',
      rate: 5000,
      bytes: 4096,
      wss: 64 * 1024 * 1024,
    });
    expect(parseWorkload('rate=max').rate).toBe(0);
  });
  it('names the bad key or value', () => {
    expect(() => parseWorkload('pattern=zigzag')).toThrow(/pattern must be seq, rand or hot, not 'zigzag'/);
    expect(() => parseWorkload('bytes=0')).toThrow(/bytes must be between 1 and 4096, not 0/);
    expect(() => parseWorkload('bytes=4097')).toThrow(/between 1 and 4096/);
    expect(() => parseWorkload('rate=fast')).toThrow(/rate must be a whole number/);
    expect(() => parseWorkload('speed=1')).toThrow(/unknown key 'speed'/);
    expect(() => parseWorkload('pattern')).toThrow(/expected key=value/);
  });
});
