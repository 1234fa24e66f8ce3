/*
 * swap_hog: fill memory with a known, compressible pattern and check every byte.
 *
 *     swap_hog MIB ROUNDS
 *
 * Maps MIB MiB of anonymous memory.  Each round writes every 4 KiB page (a
 * header with the page index and the round, then log-like text that depends on
 * both) and then reads every page back and compares each byte with the
 * expected contents.  Run in a memory cgroup smaller than MIB, the pages go
 * through swap and back, so a page lost, misplaced (the header names another
 * index or round) or corrupted (any byte of the text differs) shows.
 *
 * Output, one line per phase, for the test to parse:
 *     round R fill SECONDS
 *     round R verify SECONDS
 *     ok PAGES
 * Exit status: 0 all good, 2 a mismatch (described on stderr), 1 usage/mmap.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096

static const char *const LINES[] = {
    "kernel: zram0: page stored in size class 1024 of zspage chain 4\n",
    "zramfs[1001]: write offset=%lu length=4096 status=ok, handle reused\n",
    "kernel: loop7: discard sector 88192 count 8 flags 0x3 on swap area\n",
    "systemd[1]: Started session 12 of user alice; memory.high not set.\n",
    "kernel: Adding 1048572k swap on /dev/loop7.  Priority:-2 extents:1\n",
    "kswapd0: reclaim pass over lruvec, scanned 4096 pages, 512 written\n",
};
#define NLINES (sizeof LINES / sizeof LINES[0])

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The expected contents of page `index` in round `round`. */
static void make_page(unsigned char *p, uint64_t index, unsigned round)
{
    int n = snprintf((char *)p, PAGE, "<page %012llu round %03u>\n",
                     (unsigned long long)index, round);
    size_t at = (size_t)n;
    uint64_t k = index * 131 + (uint64_t)round * 0x10000000ULL;
    while (at < PAGE) {
        const char *line = LINES[k % NLINES];
        size_t len = strlen(line);
        if (len > PAGE - at)
            len = PAGE - at;
        memcpy(p + at, line, len);
        /* 6 hex digits of a hash of (page, round, line) at the start of each line,
         * like a timestamp: lz4 then compresses a page about 4:1, not 10:1. */
        uint64_t h = (k + 1) * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 29;
        for (size_t d = 0; d < 6 && d < len; d++)
            p[at + d] = "0123456789abcdef"[(h >> (4 * d)) & 15];
        at += len;
        k++;
    }
    /* A word that differs per page and round at the end, too: a page that is
     * half old and half new (torn) cannot pass. */
    uint64_t tag = index ^ ((uint64_t)round << 48) ^ 0x5a5a5a5a5a5a5a5aULL;
    memcpy(p + PAGE - sizeof tag, &tag, sizeof tag);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s MIB ROUNDS\n", argv[0]);
        return 1;
    }
    size_t mib = strtoul(argv[1], NULL, 10);
    unsigned rounds = (unsigned)strtoul(argv[2], NULL, 10);
    size_t size = mib << 20, pages = size / PAGE;
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    unsigned char expect[PAGE];
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned r = 1; r <= rounds; r++) {
        double t0 = now();
        for (size_t i = 0; i < pages; i++)
            make_page(mem + i * PAGE, i, r);
        double t1 = now();
        printf("round %u fill %.3f\n", r, t1 - t0);
        for (size_t i = 0; i < pages; i++) {
            make_page(expect, i, r);
            unsigned char *p = mem + i * PAGE;
            if (memcmp(p, expect, PAGE) != 0) {
                size_t off = 0;
                while (p[off] == expect[off])
                    off++;
                fprintf(stderr,
                        "MISMATCH round %u page %zu byte %zu: got 0x%02x expected 0x%02x; "
                        "page starts %.40s\n",
                        r, i, off, p[off], expect[off], (const char *)p);
                return 2;
            }
        }
        printf("round %u verify %.3f\n", r, now() - t1);
    }
    printf("ok %zu\n", pages * rounds);
    return 0;
}
