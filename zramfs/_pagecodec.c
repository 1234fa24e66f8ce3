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
 *   encode(algo, data, huge) -> list of payloads, one per 4096-byte page (lz4
 *       only: the system libzstd 1.5.4 compressed 4 KiB pages ~12 % slower than the
 *       python-zstandard build, so zstd pages are compressed there, one call each):
 *       int (the fill word of a same-filled page), 4096 raw bytes (the page compressed
 *       to ``huge`` bytes or more), or the shorter compressed block.
 *   decode(algo, payloads) -> bytes of len(payloads) * 4096, or an int: the index of the
 *       first payload that is not a valid block decoding to exactly 4096 bytes.
 *
 *   decompress_page(algo, block) -> bytes of 4096, or None if the block is not valid or
 *       does not decode to exactly 4096 bytes.
 *       (One page keeps the GIL: the call is a few microseconds, and this is the 4 KiB
 *       request path, where python-lz4's keyword handling cost about a microsecond more.)
 *
 * algo: 0 = lz4, 1 = zstd.  Thread-safe: zstd decompression contexts are per thread (pthread key).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#define ZSTD_STATIC_LINKING_ONLY /* for ZSTD_d_format (through setParameter only) */
#include <zstd.h>

#define PAGE 4096
#define ALGO_LZ4 0
#define ALGO_ZSTD 1

enum { K_SAME = 0, K_COMP = 1, K_HUGE = 2 };

static pthread_key_t dctx_key;

static void free_dctx(void *p) { ZSTD_freeDCtx((ZSTD_DCtx *)p); }

/* lz4 pages go through LZ4_compress_default: measured against the stream API with
 * LZ4_resetStream_fast per page, it was 8.3 against 11.9 us/page on /usr/lib pages
 * (and it makes the same blocks as the one-page path). */
static inline int lz4_page(const void *page, char *dst, int cap) {
    return LZ4_compress_default(page, dst, PAGE, cap);
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

/* Nonzero if every 8-byte word of the page equals the first (a period-8 page). */
static inline int same_filled(const unsigned char *p) {
    return memcmp(p, p + 8, PAGE - 8) == 0;
}

static PyObject *encode(PyObject *self, PyObject *args) {
    int algo;
    Py_buffer buf;
    Py_ssize_t huge;
    if (!PyArg_ParseTuple(args, "iy*n", &algo, &buf, &huge))
        return NULL;
    PyObject *result = NULL;
    unsigned char *scratch = NULL;
    int32_t *lens = NULL;
    if (buf.len % PAGE || algo != ALGO_LZ4 || huge < 2 || huge > PAGE) {
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
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n; k++) {
        const unsigned char *page = src + k * PAGE;
        if (same_filled(page)) {
            lens[k] = -1;
            continue;
        }
        char *dst = (char *)scratch + k * cap;
        lens[k] = lz4_page(page, dst, cap); /* 0: does not fit in cap */
    }
    Py_END_ALLOW_THREADS
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

static PyObject *decompress_page(PyObject *self, PyObject *args) {
    int algo;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "iy*", &algo, &buf))
        return NULL;
    PyObject *out = NULL;
    if (algo != ALGO_LZ4 && algo != ALGO_ZSTD) {
        PyErr_SetString(PyExc_ValueError, "bad algorithm for decompress_page");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, PAGE);
    if (!out)
        goto done;
    int ok;
    if (algo == ALGO_LZ4) {
        ok = buf.len <= INT_MAX &&
             LZ4_decompress_safe(buf.buf, PyBytes_AS_STRING(out), (int)buf.len, PAGE) == PAGE;
    } else {
        ZSTD_DCtx *d = thread_dctx();
        if (!d) {
            Py_CLEAR(out);
            PyErr_NoMemory();
            goto done;
        }
        size_t r = ZSTD_decompressDCtx(d, PyBytes_AS_STRING(out), PAGE, buf.buf, (size_t)buf.len);
        ok = !ZSTD_isError(r) && r == PAGE;
    }
    if (!ok) {
        Py_DECREF(out);
        out = Py_None;
        Py_INCREF(out);
    }
done:
    PyBuffer_Release(&buf);
    return out;
}

static PyMethodDef methods[] = {
    {"decompress_page", decompress_page, METH_VARARGS,
     "decompress_page(algo, block) -> 4096 bytes, or None if it does not decode"},
    {"encode", encode, METH_VARARGS, "encode(algo, data, huge) -> list of payloads"},
    {"decode", decode, METH_VARARGS, "decode(algo, payloads) -> bytes, or the bad index"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "zramfs._pagecodec",
    "A request's pages (de)compressed in one call with the GIL released.", -1, methods,
};

PyMODINIT_FUNC PyInit__pagecodec(void) {
    if (pthread_key_create(&dctx_key, free_dctx)) {
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
