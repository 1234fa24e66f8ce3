/*
 * tier_randhog: hold MIB MiB of incompressible data in anonymous memory and check it.
 *
 *     tier_randhog MIB [hold]
 *
 * Fills MIB MiB, one 4 KiB page at a time, with a pseudo-random stream seeded by the
 * page's index (no compressor shrinks it), printing "filled N" every 16 MiB.  Without
 * "hold" it then reads every page back and compares it with what it wrote; with "hold" it
 * prints "holding" and waits for SIGUSR1 first (the benchmark lets it sit, cold, while
 * other work pushes it out to swap).  Last line: "ok PAGES" (exit 0), or a mismatch on
 * stderr (exit 2).  Exit 1: usage or mmap.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096

static volatile sig_atomic_t go;

static void on_usr1(int sig)
{
    (void)sig;
    go = 1;
}

static void make_page(uint64_t *p, uint64_t index)
{
    uint64_t x = index * 0x9e3779b97f4a7c15ULL + 0x2545f4914f6cdd1dULL;
    for (size_t i = 0; i < PAGE / sizeof *p; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = x;
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "hold") != 0)) {
        fprintf(stderr, "usage: %s MIB [hold]\n", argv[0]);
        return 1;
    }
    size_t mib = strtoul(argv[1], NULL, 10);
    size_t pages = mib * 256;
    int hold = argc == 3;
    signal(SIGUSR1, on_usr1);
    uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t i = 0; i < pages; i++) {
        make_page(mem + i * (PAGE / 8), i);
        if ((i + 1) % (16 * 256) == 0) {
            printf("filled %zu\n", (i + 1) / 256);
            fflush(stdout);
        }
    }
    if (hold) {
        printf("holding\n");
        fflush(stdout);
        while (!go)
            pause();
    }
    uint64_t want[PAGE / 8];
    for (size_t i = 0; i < pages; i++) {
        make_page(want, i);
        if (memcmp(want, mem + i * (PAGE / 8), PAGE) != 0) {
            fprintf(stderr, "page %zu differs\n", i);
            return 2;
        }
    }
    printf("ok %zu\n", pages);
    return 0;
}
