"""fusepatch's start-up self-check, without a mount: it passes on the pyfuse3 and libfuse this
project pins, and fails loudly, naming what changed, when they no longer look as expected.

Each case runs in a fresh interpreter: install() is process-wide and must precede pyfuse3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


PRELUDE = "from zramfs import fusepatch\nfusepatch.install()\nimport pyfuse3, trio\n"


def test_the_pinned_pyfuse3_passes_and_every_hook_binds_to_the_shim() -> None:
    res = python(
        PRELUDE + "fusepatch.check_pyfuse3()\n"
        "assert fusepatch._lib is not None\n"
        "print(fusepatch._lib.zramfs_hooks_bound(), fusepatch._lib.zramfs_libfuse_runtime())\n"
    )
    assert res.returncode == 0, res.stderr
    bound, runtime = (int(x) for x in res.stdout.split())
    assert bound == 7  # fuse_session_new, fuse_reply_open and fuse_session_mount are ours
    assert runtime // 100 == 3


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("pyfuse3.__version__ = '4.0.0'", "pyfuse3 4.0.0 is outside"),
        ("pyfuse3.__version__ = '3.2.0'", "pyfuse3 3.2.0 is outside"),
        ("pyfuse3.trio = object()", "pyfuse3.trio is"),
        ("del pyfuse3.trio", "pyfuse3.trio is None"),
        ("del trio.lowlevel.ParkingLot", "trio.lowlevel has no ParkingLot"),
        ("del pyfuse3.invalidate_entry_async", "pyfuse3 has no invalidate_entry_async"),
    ],
)
def test_check_pyfuse3_names_what_changed(change: str, named: str) -> None:
    res = python(PRELUDE + change + "\nfusepatch.check_pyfuse3()\n")
    assert res.returncode != 0
    assert "FusePatchError" in res.stderr and named in res.stderr, res.stderr


def test_check_session_before_a_session_names_the_missing_pieces() -> None:
    res = python(PRELUDE + "fusepatch.check_session()\n")
    assert res.returncode != 0
    assert "FusePatchError" in res.stderr
    assert "not created through the shim" in res.stderr
    assert "fastloop proxy is not installed" in res.stderr


def test_check_session_without_the_shim() -> None:
    res = python("from zramfs import fusepatch\nimport pyfuse3\nfusepatch.check_session()\n")
    assert res.returncode != 0 and "shim is not loaded" in res.stderr, res.stderr


def test_a_pyfuse3_imported_first_binds_libfuse_directly() -> None:
    """The reason install() must come first: imported before it, pyfuse3 binds libfuse's
    own fuse_session_new, and install() refuses rather than pretend."""
    res = python("import pyfuse3\nfrom zramfs import fusepatch\nfusepatch.install()\n")
    assert res.returncode != 0 and "before pyfuse3 is imported" in res.stderr


def test_a_c_extension_built_before_its_source_changed_is_named(tmp_path: Path) -> None:
    """A checkout updated without `make venv` kept a _pagecodec that took other arguments:
    the daemon mounted and answered EIO to every write. It now refuses to start, naming it."""
    from zramfs.daemon import stale_extensions

    for name in ("_fallocate", "_pagecodec"):
        (tmp_path / f"{name}.c").write_text("/* source */\n")
        (tmp_path / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    assert stale_extensions(str(tmp_path)) == []
    source = tmp_path / "_pagecodec.c"
    so = tmp_path / "_pagecodec.cpython-311-x86_64-linux-gnu.so"
    os.utime(so, (1_000_000, 1_000_000))
    os.utime(source, (2_000_000, 2_000_000))
    assert stale_extensions(str(tmp_path)) == ["_pagecodec"]
    source.unlink()  # an installed package ships no sources: never stale
    assert stale_extensions(str(tmp_path)) == []
    assert stale_extensions() == []  # this checkout was built after its sources (make venv)
