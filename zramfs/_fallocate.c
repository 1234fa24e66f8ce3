/*
 * _fallocate.c: give pyfuse3 a FUSE fallocate handler.
 *
 * pyfuse3 fills a struct fuse_lowlevel_ops without .fallocate, so libfuse
 * answers every fallocate (and with it every discard the loop driver turns
 * into FALLOC_FL_PUNCH_HOLE) with EOPNOTSUPP, and the kernel then stops
 * sending them for the rest of the mount.
 *
 * This library is loaded with RTLD_GLOBAL before pyfuse3's extension module
 * (see fallocate.py).  Objects loaded RTLD_GLOBAL are searched before an
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
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <fuse_lowlevel.h>
#include <linux/fuse.h> /* FOPEN_* and struct fuse_open_out: the kernel's own ABI */

typedef int (*zramfs_fallocate_cb)(uint64_t ino, int mode, int64_t offset, int64_t length,
                                   uint64_t fh);

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

static void zramfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                             struct fuse_file_info *fi)
{
    /* No callback yet: refuse this call only.  (libfuse's own ENOSYS would
     * make the kernel stop sending fallocate for the rest of the mount.) */
    int ret = EOPNOTSUPP;

    if (callback)
        ret = callback(ino, mode, offset, length, fi ? fi->fh : 0);
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
