"""The pure core stays pure: importing a core module pulls in neither pyfuse3 nor trio.

Each module is imported in a fresh interpreter (an import in this one would see whatever the
other tests loaded) and sys.modules is checked afterwards. A core module that needs FUSE or the
event loop has crossed the boundary the architecture draws (docs/ARCHITECTURE.md): only the
shell (fs.py, daemon.py, fusepatch.py, dictionary.py) may.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# The pure core named in the brief, plus the pure tier pieces (policy, block map).
CORE = ["codecs", "zsmalloc", "pagestore", "device", "sizes", "report", "tierpolicy", "blockmap"]
FORBIDDEN = ("pyfuse3", "trio")

_PROBE = """
import importlib, sys
importlib.import_module("zramfs." + sys.argv[1])
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})))
"""


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_fuse_or_trio(module: str) -> None:
    probe = _PROBE.format(forbidden=set(FORBIDDEN))
    out = subprocess.run(
        [sys.executable, "-c", probe, module], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"zramfs.{module} imports {out}"


def test_the_probe_can_fail() -> None:
    """The same probe on a shell module finds pyfuse3: the check above is not vacuous."""
    probe = _PROBE.format(forbidden=set(FORBIDDEN))
    out = subprocess.run(
        [sys.executable, "-c", probe, "fs"], capture_output=True, text=True, check=True
    ).stdout
    assert "pyfuse3" in out.split() and "trio" in out.split()
