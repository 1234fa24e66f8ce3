/* _pagecodec: a whole request's pages compressed or decompressed in one call, with the
 * GIL released for the whole page loop.
 *
 * Python's per-page codec calls hold the GIL for several microseconds around each
 * library call, so worker threads and the trio thread mostly wait for each other.  Here
 * the loop over a request's pages (same-filled detection, compression, the huge
 * decision; or decompression into one preallocated output) runs without the GIL, so
 * several FUSE requests can compress or decompress on several cores at once while the
 * trio thread keeps serving.  The blocks are exactly what zramfs/codecs.py produces and
 * decodes: raw LZ4 blocks with no size prefix (python-lz4's store_size=False), and
 * magicless zstd frames without content size, checksum or dictionary id.  No dictionary
 * support: codecs with a dictionary use the per-page path.
 *
 *   encode(algo, level, data, huge) -> list of payloads, one per 4096-byte page:
 *       int (the fill word of a same-filled page), 4096 raw bytes (the page compressed
 *       to ``huge`` bytes or more), or the shorter compressed block.
 *   decode(algo, payloads) -> bytes of len(payloads) * 4096, or an int: the index of the
 *       first payload that is not a valid block decoding to exactly 4096 bytes.
 *
 * algo: 0 = lz4, 1 = zstd.  Thread-safe: zstd contexts are per thread (pthread key).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#define ZSTD_STATIC_LINKING_ONLY /* for ZSTD_c_format / ZSTD_d_format (setParameter only) */
#include <zstd.h>
#include <zstd_errors.h>

#define PAGE 4096
#define ALGO_LZ4 0
#define ALGO_ZSTD 1

enum { K_SAME = 0, K_COMP = 1, K_HUGE = 2 };

static pthread_key_t cctx_key, dctx_key;

static void free_cctx(void *p) { ZSTD_freeCCtx((ZSTD_CCtx *)p); }
static void free_dctx(void *p) { ZSTD_freeDCtx((ZSTD_DCtx *)p); }

static ZSTD_CCtx *thread_cctx(void) {
    ZSTD_CCtx *c = pthread_getspecific(cctx_key);
    if (!c) {
        c = ZSTD_createCCtx();
        if (c && pthread_setspecific(cctx_key, c) != 0) {
            ZSTD_freeCCtx(c);
            c = NULL;
        }
    }
    return c;
}

static ZSTD_DCtx *thread_dctx(void) {
    ZSTD_DCtx *d = pthread_getspecific(dctx_key);
    if (!d) {
        d = ZSTD_createDCtx();
        if (!d)
            return NULL;
        if (ZSTD_isError(ZSTD_DCtx_setParameter(d, ZSTD_d_format, ZSTD_f_zstd1_magicless)) ||
            pthread_setspecific(dctx_key, d) != 0) {
            ZSTD_freeDCtx(d);
            return NULL;
        }
    }
    return d;
}

/* Set up a zstd compression context for bare 4 KiB frames at ``level``; 0 on failure. */
static int zstd_setup(ZSTD_CCtx *c, int level) {
    ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters);
    return !ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level)) &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_format, ZSTD_f_zstd1_magicless)) &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0)) &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0)) &&
           !ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_dictIDFlag, 0));
}

/* Nonzero if every 8-byte word of the page equals the first (a period-8 page). */
static inline int same_filled(const unsigned char *p) {
    return memcmp(p, p + 8, PAGE - 8) == 0;
}

static PyObject *encode(PyObject *self, PyObject *args) {
    int algo, level;
    Py_buffer buf;
    Py_ssize_t huge;
    if (!PyArg_ParseTuple(args, "iiy*n", &algo, &level, &buf, &huge))
        return NULL;
    PyObject *result = NULL;
    unsigned char *scratch = NULL;
    int32_t *lens = NULL;
    if (buf.len % PAGE || (algo != ALGO_LZ4 && algo != ALGO_ZSTD) || huge < 2 || huge > PAGE) {
        PyErr_SetString(PyExc_ValueError, "bad arguments to _pagecodec.encode");
        goto out;
    }
    Py_ssize_t n = buf.len / PAGE;
    int cap = (int)huge - 1; /* a block that does not fit in cap bytes is huge */
    scratch = malloc((size_t)(n ? n : 1) * (size_t)cap);
    lens = malloc((size_t)(n ? n : 1) * sizeof *lens);
    if (!scratch || !lens) {
        PyErr_NoMemory();
        goto out;
    }
    const unsigned char *src = buf.buf;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    ZSTD_CCtx *cctx = NULL;
    if (algo == ALGO_ZSTD) {
        cctx = thread_cctx();
        if (!cctx || !zstd_setup(cctx, level))
            failed = 1;
    }
    for (Py_ssize_t k = 0; k < n && !failed; k++) {
        const unsigned char *page = src + k * PAGE;
        if (same_filled(page)) {
            lens[k] = -1;
            continue;
        }
        char *dst = (char *)scratch + k * cap;
        if (algo == ALGO_LZ4) {
            lens[k] = LZ4_compress_default((const char *)page, dst, PAGE, cap); /* 0: > cap */
        } else {
            size_t r = ZSTD_compress2(cctx, dst, cap, page, PAGE);
            if (ZSTD_isError(r)) {
                if (ZSTD_getErrorCode(r) != ZSTD_error_dstSize_tooSmall)
                    failed = 1;
                lens[k] = 0;
            } else {
                lens[k] = (int32_t)r;
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "zstd compression failed");
        goto out;
    }
    result = PyList_New(n);
    if (!result)
        goto out;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item;
        const unsigned char *page = src + k * PAGE;
        if (lens[k] < 0) {
            uint64_t w;
            memcpy(&w, page, 8); /* little-endian host: the fill word as Python reads it */
            item = PyLong_FromUnsignedLongLong(w);
        } else if (lens[k] == 0) {
            item = PyBytes_FromStringAndSize((const char *)page, PAGE);
        } else {
            item = PyBytes_FromStringAndSize((const char *)scratch + k * cap, lens[k]);
        }
        if (!item) {
            Py_CLEAR(result);
            goto out;
        }
        PyList_SET_ITEM(result, k, item);
    }
out:
    free(scratch);
    free(lens);
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *decode(PyObject *self, PyObject *args) {
    int algo;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "iO", &algo, &seq))
        return NULL;
    if (algo != ALGO_LZ4 && algo != ALGO_ZSTD) {
        PyErr_SetString(PyExc_ValueError, "bad algorithm for _pagecodec.decode");
        return NULL;
    }
    /* A tuple of our own: the items stay alive and in place while the GIL is released. */
    PyObject *items = PySequence_Tuple(seq);
    if (!items)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject *out = NULL;
    const char **ptrs = malloc((size_t)(n ? n : 1) * sizeof *ptrs);
    Py_ssize_t *lens = malloc((size_t)(n ? n : 1) * sizeof *lens);
    uint64_t *words = malloc((size_t)(n ? n : 1) * sizeof *words);
    if (!ptrs || !lens || !words) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *it = PyTuple_GET_ITEM(items, k);
        if (PyLong_CheckExact(it)) {
            words[k] = PyLong_AsUnsignedLongLong(it);
            if (words[k] == (uint64_t)-1 && PyErr_Occurred())
                goto fail;
            lens[k] = -1;
        } else if (PyBytes_Check(it) || PyByteArray_Check(it)) {
            /* (a bytearray cannot be resized meanwhile: only this call's tuple holds it
             * besides the caller, who is waiting for the result) */
            ptrs[k] = PyBytes_Check(it) ? PyBytes_AS_STRING(it) : PyByteArray_AS_STRING(it);
            lens[k] = PyBytes_Check(it) ? PyBytes_GET_SIZE(it) : PyByteArray_GET_SIZE(it);
            if (lens[k] > PAGE) {
                PyErr_SetString(PyExc_ValueError, "payload longer than a page");
                goto fail;
            }
        } else {
            PyErr_SetString(PyExc_TypeError, "payloads must be int, bytes or bytearray");
            goto fail;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, n * PAGE);
    if (!out)
        goto fail;
    char *dst = PyBytes_AS_STRING(out);
    Py_ssize_t bad = -1;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    ZSTD_DCtx *dctx = NULL;
    if (algo == ALGO_ZSTD && !(dctx = thread_dctx()))
        nomem = 1;
    for (Py_ssize_t k = 0; k < n && !nomem; k++) {
        char *d = dst + k * PAGE;
        Py_ssize_t len = lens[k];
        if (len < 0) {
            uint64_t w = words[k];
            if (!w) {
                memset(d, 0, PAGE);
            } else {
                for (int i = 0; i < PAGE; i += 8)
                    memcpy(d + i, &w, 8);
            }
        } else if (len == PAGE) {
            memcpy(d, ptrs[k], PAGE);
        } else if (algo == ALGO_LZ4) {
            if (LZ4_decompress_safe(ptrs[k], d, (int)len, PAGE) != PAGE) {
                bad = k;
                break;
            }
        } else {
            size_t r = ZSTD_decompressDCtx(dctx, d, PAGE, ptrs[k], (size_t)len);
            if (ZSTD_isError(r) || r != PAGE) {
                bad = k;
                break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (nomem) {
        PyErr_NoMemory();
        goto fail;
    }
    free(ptrs);
    free(lens);
    free(words);
    Py_DECREF(items);
    if (bad >= 0) {
        Py_DECREF(out);
        return PyLong_FromSsize_t(bad);
    }
    return out;
fail:
    Py_XDECREF(out);
    free(ptrs);
    free(lens);
    free(words);
    Py_DECREF(items);
    return NULL;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, "encode(algo, level, data, huge) -> list of payloads"},
    {"decode", decode, METH_VARARGS, "decode(algo, payloads) -> bytes, or the bad index"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "zramfs._pagecodec",
    "A request's pages (de)compressed in one call with the GIL released.", -1, methods,
};

PyMODINIT_FUNC PyInit__pagecodec(void) {
    if (pthread_key_create(&cctx_key, free_cctx) || pthread_key_create(&dctx_key, free_dctx)) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_key_create failed");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m) {
        PyModule_AddIntConstant(m, "LZ4", ALGO_LZ4);
        PyModule_AddIntConstant(m, "ZSTD", ALGO_ZSTD);
    }
    return m;
}
