import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Interop tests start real QEMU processes; two cores, so keep parallelism modest.
    maxWorkers: 2,
  },
});
