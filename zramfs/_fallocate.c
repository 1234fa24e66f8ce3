/*
 * _fallocate.c: the C half of zramfs/fusepatch.py, everything zramfs changes
 * in how pyfuse3 drives libfuse.
 *
 * - fallocate: pyfuse3 fills a struct fuse_lowlevel_ops without .fallocate,
 *   so libfuse answers every fallocate (and with it every discard the loop
 *   driver turns into FALLOC_FL_PUNCH_HOLE) with EOPNOTSUPP, and the kernel
 *   then stops sending them for the rest of the mount.  We add a handler; it
 *   may reply at once or hand the request to Python, which replies later
 *   (zramfs_fallocate_reply), so a large discard need not stall the loop.
 * - fuse_reply_open: FOPEN_PARALLEL_DIRECT_WRITES for direct-I/O files.
 * - init: max_background, and FUSE_DIRECT_IO_ALLOW_MMAP when the kernel
 *   offers it (libfuse 3.14 has no name for it, so the bit is set in the INIT
 *   reply on its way out, through libfuse's custom-I/O hook).
 *
 * This library is loaded with RTLD_GLOBAL before pyfuse3's extension module
 * (see fusepatch.py).  Objects loaded RTLD_GLOBAL are searched before an
 * extension's own dependencies, so pyfuse3's call to fuse_session_new binds
 * to the definition below (an unversioned definition satisfies pyfuse3's
 * fuse_session_new@FUSE_3.0 reference).  We copy the operations, add our
 * handler and hand over to the real libfuse function.
 *
 * It is a plain shared library opened with ctypes, not a Python module: no
 * PyInit, no Python API.
 */
#define _GNU_SOURCE /* RTLD_NEXT and dlvsym */
#define _FILE_OFFSET_BITS 64
#define FUSE_USE_VERSION 31

#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fuse_lowlevel.h>
#include <linux/fuse.h> /* FOPEN_* and struct fuse_open_out: the kernel's own ABI */

/* Returns 0 or a positive errno to reply now, or ZRAMFS_DEFERRED: Python keeps
 * `req` and answers it later through zramfs_fallocate_reply(). */
#define ZRAMFS_DEFERRED (-1)
typedef int (*zramfs_fallocate_cb)(uint64_t req, uint64_t ino, int mode, int64_t offset,
                                   int64_t length, uint64_t fh);

typedef struct fuse_session *(*session_new_fn)(struct fuse_args *, const struct fuse_lowlevel_ops *,
                                               size_t, void *);

/*
 * The registered callback.  It is set from Python and called by libfuse on the
 * thread that runs pyfuse3's request loop, which holds the GIL around the
 * whole dispatch; a plain pointer is enough.
 */
static zramfs_fallocate_cb callback;

/* Number of sessions created through this shim: lets Python check that the
 * interposition really happened (i.e. install() ran before pyfuse3 loaded). */
static int sessions_hooked;

void zramfs_set_fallocate_handler(zramfs_fallocate_cb cb)
{
    callback = cb;
}

int zramfs_fallocate_sessions(void)
{
    return sessions_hooked;
}

/* Answer a fallocate that the callback deferred. */
void zramfs_fallocate_reply(uint64_t req, int err)
{
    if (err < 0 || err >= 4096)
        err = EIO;
    fuse_reply_err((fuse_req_t)(uintptr_t)req, err);
}

static void zramfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                             struct fuse_file_info *fi)
{
    /* No callback yet: refuse this call only.  (libfuse's own ENOSYS would
     * make the kernel stop sending fallocate for the rest of the mount.) */
    int ret = EOPNOTSUPP;

    if (callback)
        ret = callback((uint64_t)(uintptr_t)req, ino, mode, offset, length, fi ? fi->fh : 0);
    if (ret == ZRAMFS_DEFERRED)
        return; /* Python owns req now and will reply */
    /* fuse_reply_err wants 0 or a positive errno; anything else is a bug in
     * the callback, which must not reach the kernel as a bogus error. */
    if (ret < 0 || ret >= 4096)
        ret = EIO;
    fuse_reply_err(req, ret);
}

/*
 * pyfuse3's FileInfo cannot ask for FOPEN_PARALLEL_DIRECT_WRITES (nor can
 * libfuse 3.14's fuse_file_info), and without it the kernel takes the inode
 * lock exclusively for every direct write: one write in flight per image,
 * whatever queue depth the loop device has.  Our zram pages are independent
 * and each request's commit is atomic on the trio thread, so concurrent
 * writes are safe.  This definition takes the place of libfuse's (as
 * fuse_session_new above does) and sends the same reply with that bit added
 * for direct-I/O files.
 */
int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi)
{
    struct fuse_open_out arg;

    memset(&arg, 0, sizeof(arg));
    arg.fh = fi->fh;
    if (fi->direct_io)
        arg.open_flags |= FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
    if (fi->keep_cache)
        arg.open_flags |= FOPEN_KEEP_CACHE;
    if (fi->nonseekable)
        arg.open_flags |= FOPEN_NONSEEKABLE;
    if (fi->cache_readdir)
        arg.open_flags |= FOPEN_CACHE_DIR;
    if (fi->noflush)
        arg.open_flags |= FOPEN_NOFLUSH;
    return fuse_reply_buf(req, (const char *)&arg, sizeof(arg));
}

/*
 * The kernel lets 12 background requests (the async direct I/O a loop
 * device sends) be in flight per connection unless the daemon asks for more
 * at INIT; a loop device at queue depth 16 or more would queue in the kernel.
 */
#define ZRAMFS_MAX_BACKGROUND 64

static void (*pyfuse3_init)(void *userdata, struct fuse_conn_info *conn);

static void zramfs_init(void *userdata, struct fuse_conn_info *conn)
{
    if (pyfuse3_init)
        pyfuse3_init(userdata, conn);
    conn->max_background = ZRAMFS_MAX_BACKGROUND;
    conn->congestion_threshold = ZRAMFS_MAX_BACKGROUND * 3 / 4;
}

/*
 * FUSE_DIRECT_IO_ALLOW_MMAP (kernel 6.6+, init flags2 bit 4): without it the
 * kernel refuses mmap(MAP_SHARED) of a file opened with FOPEN_DIRECT_IO
 * (ENODEV), and every file here is.  libfuse 3.14 neither names nor forwards
 * the bit, so the session's replies go through our writev (libfuse's custom
 * I/O hook, installed when pyfuse3 mounts): it sees the kernel's INIT request
 * through our read, and sets the bit in the INIT reply if the kernel offered
 * it.  Every other message passes through untouched.
 */
#ifndef FUSE_DIRECT_IO_ALLOW_MMAP
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36)
#endif
#define ZRAMFS_ALLOW_MMAP_FLAGS2 ((uint32_t)(FUSE_DIRECT_IO_ALLOW_MMAP >> 32))

static uint64_t init_unique;      /* unique of the INIT request, 0 when none is pending */
static uint32_t kernel_flags2;    /* flags2 the kernel offered at INIT */
static int allow_mmap;            /* 1 once the INIT reply carried the bit */

static ssize_t zramfs_io_read(int fd, void *buf, size_t len, void *userdata)
{
    ssize_t n = read(fd, buf, len);

    (void)userdata;
    if (n >= (ssize_t)(sizeof(struct fuse_in_header) + offsetof(struct fuse_init_in, flags2) +
                       sizeof(uint32_t))) {
        const struct fuse_in_header *in = buf;
        const struct fuse_init_in *init = (const void *)(in + 1);

        if (in->opcode == FUSE_INIT) {
            init_unique = in->unique;
            kernel_flags2 = (init->flags & FUSE_INIT_EXT) ? init->flags2 : 0;
        }
    }
    return n;
}

static ssize_t zramfs_io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    (void)userdata;
    if (init_unique && count >= 2 && iov[0].iov_len == sizeof(struct fuse_out_header) &&
        iov[1].iov_len >= offsetof(struct fuse_init_out, flags2) + sizeof(uint32_t)) {
        const struct fuse_out_header *out = iov[0].iov_base;

        if (out->unique == init_unique) {
            init_unique = 0;
            if (out->error == 0 && (kernel_flags2 & ZRAMFS_ALLOW_MMAP_FLAGS2)) {
                struct fuse_init_out *arg = iov[1].iov_base;

                if (arg->flags & FUSE_INIT_EXT) {
                    arg->flags2 |= ZRAMFS_ALLOW_MMAP_FLAGS2;
                    allow_mmap = 1;
                }
            }
        }
    }
    return writev(fd, iov, count);
}

/* 1 if the kernel granted shared mmap of direct-I/O files on this mount. */
int zramfs_direct_io_allow_mmap(void)
{
    return allow_mmap;
}

typedef int (*session_mount_fn)(struct fuse_session *, const char *);

int fuse_session_mount(struct fuse_session *se, const char *mountpoint)
{
    static const struct fuse_custom_io io = {
        .writev = zramfs_io_writev,
        .read = zramfs_io_read,
    };
    session_mount_fn real = (session_mount_fn)dlvsym(RTLD_NEXT, "fuse_session_mount", "FUSE_3.0");
    int res;

    if (!real) {
        fprintf(stderr, "zramfs: real fuse_session_mount not found: %s\n", dlerror());
        return -1;
    }
    res = real(se, mountpoint);
    if (res == 0 && fuse_session_custom_io(se, &io, fuse_session_fd(se)) != 0)
        fprintf(stderr, "zramfs: fuse_session_custom_io failed: no shared mmap of images\n");
    return res;
}

/*
 * Which of our definitions the process really uses (bit set = bound to ours):
 * 1 fuse_session_new, 2 fuse_reply_open, 4 fuse_session_mount.  pyfuse3's
 * references resolve through the same global scope as RTLD_DEFAULT.
 */
int zramfs_hooks_bound(void)
{
    int bound = 0;

    if (dlsym(RTLD_DEFAULT, "fuse_session_new") == (void *)fuse_session_new)
        bound |= 1;
    if (dlsym(RTLD_DEFAULT, "fuse_reply_open") == (void *)fuse_reply_open)
        bound |= 2;
    if (dlsym(RTLD_DEFAULT, "fuse_session_mount") == (void *)fuse_session_mount)
        bound |= 4;
    return bound;
}

/* The libfuse this process runs (e.g. 314) and the one this shim was built against. */
int zramfs_libfuse_runtime(void)
{
    return fuse_version();
}

int zramfs_libfuse_built(void)
{
    return FUSE_VERSION;
}

struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op,
                                      size_t op_size, void *userdata)
{
    /* Look the real function up each time (this runs once per mount).  Ask
     * for the version pyfuse3 links against; RTLD_NEXT skips this library. */
    session_new_fn real = (session_new_fn)dlvsym(RTLD_NEXT, "fuse_session_new", "FUSE_3.0");
    struct fuse_lowlevel_ops ops;

    if (!real) {
        fprintf(stderr, "zramfs: real fuse_session_new not found: %s\n", dlerror());
        return NULL;
    }

    /* The caller may have been compiled against a shorter (older) or longer
     * (newer) struct: copy what both know about, zero the rest.  libfuse
     * copies the struct into the session, so a stack copy is enough. */
    memset(&ops, 0, sizeof(ops));
    memcpy(&ops, op, op_size < sizeof(ops) ? op_size : sizeof(ops));
    ops.fallocate = zramfs_fallocate;
    pyfuse3_init = ops.init;
    ops.init = zramfs_init;
    sessions_hooked++;

    /* Our struct matches the libfuse we were built against. */
    return real(args, &ops, sizeof(ops), userdata);
}
