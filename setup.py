"""Build step for the two pieces of C in zramfs: the shim under zramfs/fusepatch.py and
the page codec.

pyfuse3 registers no fallocate handler, so without help the kernel's
FALLOC_FL_PUNCH_HOLE (which the loop driver sends for discard) is answered
EOPNOTSUPP and never reaches the daemon.  `_fallocate.c` is built as a plain
shared library (it is loaded with ctypes, never imported) and adds the
handler, parallel direct writes, a larger max_background and shared mmap of
images; see zramfs/fusepatch.py.

`_pagecodec.c` is a Python extension that compresses or decompresses a whole request's
pages with the GIL released (system liblz4 and libzstd); see zramfs/codecs.py.
"""

import subprocess

from setuptools import Extension, setup


def pkg_config(*args: str) -> list[str]:
    out = subprocess.run(["pkg-config", *args, "fuse3"], check=True, capture_output=True, text=True)
    return out.stdout.split()


setup(
    ext_modules=[
        Extension(
            "zramfs._fallocate",
            sources=["zramfs/_fallocate.c"],
            extra_compile_args=pkg_config("--cflags") + ["-O2", "-Wall"],
            extra_link_args=pkg_config("--libs") + ["-ldl"],
        ),
        Extension(
            "zramfs._pagecodec",
            sources=["zramfs/_pagecodec.c"],
            extra_compile_args=["-O2", "-Wall"],
            libraries=["lz4", "zstd", "pthread"],
        ),
    ]
)
