/*
 * Same-run C baselines for bench:hotpath (built with gcc -O2 -mavx2 at bench
 * time when gcc is present). Prints one JSON object, nanoseconds per 4 KiB
 * page or milliseconds per scan:
 *   zeroHotNs   - AVX2 zero-page test over 32 hot pages
 *   zeroColdNs  - the same over a 256 MiB sequential walk (DRAM-bound)
 *   zeroSseHotNs / zeroSseColdNs - the same test with 128-bit SSE4.1 loads,
 *                 the widest WebAssembly SIMD has (v128)
 *   encIdenticalNs / encClustered1Ns - XBZRLE encode (SPEC.md §4.1, an 8-byte
 *                 word-at-a-time scan with a has-zero-byte test inside differing
 *                 runs, the shape of QEMU's scalar encoder) over 32 hot page pairs,
 *                 identical / 1 % of bytes changed in runs of 8..63
 *   scan1Ms / scan50Ms - word + count-trailing-zeros walk listing every set bit
 *                 of a 16.8 M-bit bitmap (64 GiB of 4 KiB pages) at 1 % / 50 %
 * Our own code, written for this benchmark.
 */
#include <immintrin.h>
#include <smmintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static int is_zero(const uint8_t *p) {
  for (int i = 0; i < 4096; i += 128) {
    __m256i a = _mm256_or_si256(_mm256_or_si256(_mm256_load_si256((const void *)(p + i)), _mm256_load_si256((const void *)(p + i + 32))),
                                _mm256_or_si256(_mm256_load_si256((const void *)(p + i + 64)), _mm256_load_si256((const void *)(p + i + 96))));
    if (!_mm256_testz_si256(a, a)) return 0;
  }
  return 1;
}

static int is_zero_sse(const uint8_t *p) {
  for (int i = 0; i < 4096; i += 256) {
    __m128i a = _mm_setzero_si128();
    for (int j = 0; j < 256; j += 16) a = _mm_or_si128(a, _mm_load_si128((const void *)(p + i + j)));
    if (!_mm_testz_si128(a, a)) return 0;
  }
  return 1;
}

static int put_uleb(uint8_t *out, int d, int v) {
  if (v < 0x80) {
    out[d] = (uint8_t)v;
    return d + 1;
  }
  out[d] = (uint8_t)((v & 0x7f) | 0x80);
  out[d + 1] = (uint8_t)(v >> 7);
  return d + 2;
}

/* XBZRLE encode of 4096-byte pages into out (dlen 4096); -1 on overflow. */
static int xbzrle_encode(const uint8_t *old, const uint8_t *neu, uint8_t *out) {
  const int n = 4096, dlen = 4096;
  int i = 0, d = 0;
  while (i < n) {
    if (d + 2 > dlen) return -1;
    int z = i;
    while (i < n && (i & 7)) {
      if (old[i] != neu[i]) break;
      i++;
    }
    if (i < n && !(i & 7) && old[i] == neu[i]) {
      while (i + 8 <= n) {
        uint64_t a, b;
        memcpy(&a, old + i, 8);
        memcpy(&b, neu + i, 8);
        if (a != b) break;
        i += 8;
      }
      while (i < n && old[i] == neu[i]) i++;
    }
    if (i == n) break;
    d = put_uleb(out, d, i - z);
    if (d + 2 > dlen) return -1;
    int nz = i;
    while (i < n && (i & 7)) {
      if (old[i] == neu[i]) goto done;
      i++;
    }
    while (i + 8 <= n) {
      uint64_t a, b;
      memcpy(&a, old + i, 8);
      memcpy(&b, neu + i, 8);
      uint64_t x = a ^ b;
      if ((x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull) break;
      i += 8;
    }
    while (i < n && old[i] != neu[i]) i++;
  done:
    d = put_uleb(out, d, i - nz);
    if (d + (i - nz) > dlen) return -1;
    memcpy(out + d, neu + nz, i - nz);
    d += i - nz;
  }
  return d;
}

static volatile long sink;

static double best_zero(int (*test)(const uint8_t *), const uint8_t *base, size_t pages, size_t calls) {
  double best = 1e18;
  for (int r = 0; r < 5; r++) {
    long z = 0;
    size_t k = 0;
    double t0 = now_ns();
    for (size_t i = 0; i < calls; i++) {
      z += test(base + k * 4096);
      if (++k == pages) k = 0;
    }
    double ns = (now_ns() - t0) / calls;
    sink = z;
    if (ns < best) best = ns;
  }
  return best;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static double best_encode(const uint8_t *olds, const uint8_t *news, uint8_t *out) {
  double best = 1e18;
  const size_t calls = 1000000;
  for (int r = 0; r < 5; r++) {
    long total = 0;
    double t0 = now_ns();
    for (size_t i = 0; i < calls; i++) {
      size_t k = i & 31;
      total += xbzrle_encode(olds + k * 4096, news + k * 4096, out + k * 4096);
    }
    double ns = (now_ns() - t0) / calls;
    sink = total;
    if (ns < best) best = ns;
  }
  return best;
}

static double best_scan(uint64_t *bm, size_t words, uint32_t *out) {
  double best = 1e18;
  for (int r = 0; r < 5; r++) {
    size_t n = 0;
    double t0 = now_ns();
    for (size_t w = 0; w < words; w++) {
      uint64_t v = bm[w];
      while (v) {
        out[n & 4095] = (uint32_t)(w * 64 + __builtin_ctzll(v));
        n++;
        v &= v - 1;
      }
    }
    double ms = (now_ns() - t0) / 1e6;
    sink = (long)n + out[0];
    if (ms < best) best = ms;
  }
  return best;
}

int main(void) {
  const size_t cold = 256u << 20;
  uint8_t *m = aligned_alloc(4096, cold);
  memset(m, 0, cold);
  double hot = best_zero(is_zero, m, 32, 2000000);
  double coldNs = best_zero(is_zero, m, cold / 4096, 3 * (cold / 4096));
  double sseHot = best_zero(is_zero_sse, m, 32, 2000000);
  double sseCold = best_zero(is_zero_sse, m, cold / 4096, 3 * (cold / 4096));
  free(m);
  uint8_t *olds = aligned_alloc(4096, 32 * 4096), *news = aligned_alloc(4096, 32 * 4096), *eout = aligned_alloc(4096, 32 * 4096);
  for (size_t i = 0; i < 32 * 4096; i++) olds[i] = (uint8_t)next();
  memcpy(news, olds, 32 * 4096);
  double encIdentical = best_encode(olds, news, eout);
  for (int k = 0; k < 32; k++) {
    int left = 41; /* 1 % of 4096 */
    while (left > 0) {
      int len = 8 + (int)(next() % 56);
      if (len > left) len = left;
      int at = (int)(next() % (uint64_t)(4096 - len));
      for (int j = 0; j < len; j++) news[k * 4096 + at + j] ^= 0x5a;
      left -= len;
    }
  }
  double encClustered = best_encode(olds, news, eout);
  const size_t bits = (size_t)16 << 20, words = bits / 64;
  uint64_t *bm = aligned_alloc(64, words * 8);
  uint32_t *out = aligned_alloc(64, 4096 * 4);
  memset(bm, 0, words * 8);
  for (size_t i = 0; i < bits / 100; i++) {
    size_t b = next() % bits;
    bm[b / 64] |= 1ull << (b % 64);
  }
  double s1 = best_scan(bm, words, out);
  for (size_t w = 0; w < words; w++) bm[w] = next();
  double s50 = best_scan(bm, words, out);
  printf("{\"zeroHotNs\":%.1f,\"zeroColdNs\":%.1f,\"zeroSseHotNs\":%.1f,\"zeroSseColdNs\":%.1f,"
         "\"encIdenticalNs\":%.1f,\"encClustered1Ns\":%.1f,\"scan1Ms\":%.3f,\"scan50Ms\":%.3f}\n",
         hot, coldNs, sseHot, sseCold, encIdentical, encClustered, s1, s50);
  return 0;
}
