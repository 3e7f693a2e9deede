/*
 * postcopy test guest: a freestanding 32-bit multiboot kernel that dirties a
 * working set of 4 KiB pages in a loop, in a layout a checker can verify from a
 * RAM image without trusting the guest (see ../check.ts for the contract).
 *
 * Page layout after the page was written in pass q (q >= 1), visit index i:
 *   bytes [0,4)   q, little-endian
 *   bytes [4,8)   page index within the working set
 *   bytes [8,n)   fill byte j = (q * 31 + index * 7 + j) & 0xff
 *   bytes [n,4096) untouched (zero)
 * A page never visited is all zero (pass 0). The fill is written first, then
 * the index, then q, so a stop in the middle of a page leaves the old q.
 *
 * Command line (multiboot cmdline, from QEMU's -append), all optional:
 *   start=<bytes> size=<bytes> n=<bytes per visit, 8..4096>
 *   rate=<pages per second>|max  pattern=seq|rand  report=<passes>
 *   flush=all|page|none   (TLB flushing, see below; default all)
 *
 * QEMU 7.2 under TCG loses dirty pages written through a cached softmmu TLB
 * entry, so every page is invlpg'ed right before it is written, and so are
 * the pages of the stack and of the guest's own data, after every visit.
 * flush=page keeps only the first, flush=none neither: they exist to show the
 * QEMU bug (tests expect them to corrupt a migration), never for real use.
 */
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;

#define PAGE_SIZE 4096u
#define COM1 0x3f8
#define HEADER_BYTES 8u
#define FLUSH_ALL 0u
#define FLUSH_PAGE 1u
#define FLUSH_NONE 2u

extern char __bss_end[];

static inline void outb(unsigned short port, u8 v) {
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline u8 inb(unsigned short port) {
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline void invlpg(const volatile void *p) {
    __asm__ volatile("invlpg (%0)" : : "r"(p) : "memory");
}
/* (hi:lo) / d with a 32-bit quotient (no libgcc in a freestanding build). */
static inline u32 div64_32(u64 v, u32 d) {
    u32 q, r;
    __asm__("divl %4" : "=a"(q), "=d"(r) : "a"((u32)v), "d"((u32)(v >> 32)), "rm"(d));
    return q;
}
static inline u64 rdtsc(void) {
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

/* All mutable globals live in one page-aligned block so one invlpg covers them. */
static struct {
    u32 start, size, pages, n, rate, rand, report, step, flush;
    u64 tsc_per_sec;
} __attribute__((aligned(4096))) g;

static void flush_own(void) {
    u32 sp;
    __asm__ volatile("mov %%esp, %0" : "=r"(sp));
    invlpg((void *)sp);
    invlpg((void *)(sp - PAGE_SIZE));
    invlpg((void *)(sp + PAGE_SIZE));
    invlpg(&g);
}

static void serial_init(void) {
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1 + 0, 0x01); /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); /* 8N1 */
    outb(COM1 + 2, 0xc7);
    outb(COM1 + 4, 0x03);
}
static void ser_putc(char c) {
    while (!(inb(COM1 + 5) & 0x20)) {}
    outb(COM1, (u8)c);
}
static void ser_puts(const char *s) { while (*s) ser_putc(*s++); }
static void ser_putu(u32 v) {
    char b[11];
    int i = 0;
    do { b[i++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (i) ser_putc(b[--i]);
}
static void ser_puthex(u32 v) {
    ser_puts("0x");
    for (int s = 28; s >= 0; s -= 4) ser_putc("0123456789abcdef"[(v >> s) & 15]);
}

static int streq_prefix(const char *s, const char *p) {
    while (*p) if (*s++ != *p++) return 0;
    return 1;
}
/* Decimal or 0x-hex, with optional K/M/G suffix. */
static u32 parse_num(const char *s) {
    u32 v = 0, base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) { base = 16; s += 2; }
    for (;; s++) {
        char c = *s;
        u32 d;
        if (c >= '0' && c <= '9') d = (u32)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f') d = (u32)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F') d = (u32)(c - 'A' + 10);
        else break;
        v = v * base + d;
    }
    if (*s == 'K' || *s == 'k') v <<= 10;
    else if (*s == 'M' || *s == 'm') v <<= 20;
    else if (*s == 'G' || *s == 'g') v <<= 30;
    return v;
}
static void parse_cmdline(const char *s) {
    while (s && *s) {
        while (*s == ' ') s++;
        if (streq_prefix(s, "start=")) g.start = parse_num(s + 6);
        else if (streq_prefix(s, "size=")) g.size = parse_num(s + 5);
        else if (streq_prefix(s, "n=")) g.n = parse_num(s + 2);
        else if (streq_prefix(s, "report=")) g.report = parse_num(s + 7);
        else if (streq_prefix(s, "rate=max")) g.rate = 0;
        else if (streq_prefix(s, "rate=")) g.rate = parse_num(s + 5);
        else if (streq_prefix(s, "pattern=rand")) g.rand = 1;
        else if (streq_prefix(s, "pattern=seq")) g.rand = 0;
        else if (streq_prefix(s, "flush=all")) g.flush = FLUSH_ALL;
        else if (streq_prefix(s, "flush=page")) g.flush = FLUSH_PAGE;
        else if (streq_prefix(s, "flush=none")) g.flush = FLUSH_NONE;
        while (*s && *s != ' ') s++;
    }
}

static u32 gcd(u32 a, u32 b) {
    while (b) { u32 t = a % b; a = b; b = t; }
    return a;
}
/* Stride of the "rand" visit order; check.ts computes the same value. */
static u32 rand_step(u32 pages) {
    u32 step = (u32)(((u64)pages * 40503u) >> 16) | 1u;
    if (pages <= 2) return 1;
    while (gcd(step, pages) != 1) step += 2;
    return step % pages;
}

/* TSC ticks per second, measured against PIT channel 2 over 50 ms. */
static u64 calibrate_tsc(void) {
    const u32 pit_hz = 1193182, ms = 50;
    u32 count = pit_hz * ms / 1000;
    outb(0x61, (u8)((inb(0x61) & ~0x02) | 0x01)); /* gate on, speaker off */
    outb(0x43, 0xb0);                             /* ch2, lo/hi, mode 0 */
    outb(0x42, (u8)(count & 0xff));
    outb(0x42, (u8)(count >> 8));
    u64 t0 = rdtsc();
    while (!(inb(0x61) & 0x20)) {}
    u64 dt = rdtsc() - t0;
    return dt * (1000 / ms);
}

static void write_page(u32 index, u32 q) {
    volatile u8 *p = (volatile u8 *)(g.start + index * PAGE_SIZE);
    u8 base = (u8)(q * 31u + index * 7u);
    if (g.flush != FLUSH_NONE) invlpg((const void *)p);
    for (u32 j = HEADER_BYTES; j < g.n; j++) p[j] = (u8)(base + j);
    *(volatile u32 *)(p + 4) = index;
    *(volatile u32 *)p = q;
}

void guest_main(u32 magic, const u32 *mbi) {
    g.start = 2u << 20;
    g.size = 98u << 20;
    g.n = 16;
    g.report = 16;
    serial_init();
    if (magic == 0x2BADB002u && (mbi[0] & 4u)) parse_cmdline((const char *)mbi[4]);
    g.start &= ~(PAGE_SIZE - 1);
    if (g.n < HEADER_BYTES) g.n = HEADER_BYTES;
    if (g.n > PAGE_SIZE) g.n = PAGE_SIZE;
    if (!g.report) g.report = 1;
    g.pages = g.size / PAGE_SIZE;
    g.step = g.rand ? rand_step(g.pages) : 1;
    if (g.rate) g.tsc_per_sec = calibrate_tsc();

    ser_puts("GUEST START start=");
    ser_puthex(g.start);
    ser_puts(" pages=");
    ser_putu(g.pages);
    ser_puts(" n=");
    ser_putu(g.n);
    ser_puts(" rate=");
    if (g.rate) ser_putu(g.rate); else ser_puts("max");
    ser_puts(g.rand ? " pattern=rand step=" : " pattern=seq step=");
    ser_putu(g.step);
    ser_puts(g.flush == FLUSH_ALL ? " flush=all\n" : g.flush == FLUSH_PAGE ? " flush=page\n" : " flush=none\n");
    if (!g.pages) { ser_puts("GUEST EMPTY\n"); return; }
    /* Refuse a working set over the kernel itself or beyond RAM (multiboot mem_upper). */
    if (g.start < (u32)__bss_end ||
        ((mbi[0] & 1u) && g.start + g.pages * PAGE_SIZE > (1u << 20) + mbi[2] * 1024u)) {
        ser_puts("GUEST BAD WORKING SET\n");
        return;
    }

    /* Rate limiting: in chunks of `chunk` pages, busy-wait for the chunk's
     * time budget. No catch-up: if the TSC jumps (migration to another host
     * process) or we fall behind, the baseline is simply reset. */
    u32 chunk = g.rate ? (g.rate / 100 ? g.rate / 100 : 1) : 0;
    u64 budget = chunk ? div64_32(g.tsc_per_sec * chunk, g.rate) : 0;
    u64 t_next = rdtsc() + budget;
    u32 in_chunk = 0;

    for (u32 q = 1;; q++) {
        u32 index = 0;
        for (u32 k = 0; k < g.pages; k++) {
            write_page(index, q);
            if (g.flush == FLUSH_ALL) flush_own();
            index += g.step;
            if (index >= g.pages) index -= g.pages;
            if (chunk && ++in_chunk == chunk) {
                in_chunk = 0;
                u64 now = rdtsc();
                if (now < t_next && t_next - now <= budget) {
                    while (rdtsc() < t_next) __asm__ volatile("pause");
                    t_next += budget;
                } else {
                    t_next = now + budget;
                }
            }
        }
        if (q % g.report == 0) {
            ser_puts("pass ");
            ser_putu(q);
            ser_puts("\n");
        }
    }
}
