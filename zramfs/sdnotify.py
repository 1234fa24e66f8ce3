"""sd_notify(3) without libsystemd: tell the service manager we are ready.

systemd passes a datagram unix socket in $NOTIFY_SOCKET (a path, or a name in the abstract
namespace written with a leading '@'); a service of Type=notify sends "READY=1" there once it
is up.  `notify` sends one message; `barrier` is sd_notify_barrier(): it sends BARRIER=1 with
the write end of a pipe and waits until the manager closes it, so everything sent before has
been processed (needed when the sender exits right after, as `zramfs start` does).  Without
$NOTIFY_SOCKET both do nothing and return False.
"""

from __future__ import annotations

import array
import os
import select
import socket
from collections.abc import Mapping


def _address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        return "\0" + addr[1:]
    if addr.startswith("/"):
        return addr
    return None  # unset, or a vsock address this implementation does not speak


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1\\nMAINPID=42") to $NOTIFY_SOCKET; False if there is none."""
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(addr)
        s.sendall(message.encode())
    return True


def barrier(timeout: float = 5.0, env: Mapping[str, str] | None = None) -> bool:
    """Wait until the manager has read every message sent before; False on timeout or none."""
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            fds = array.array("i", [write_end])
            s.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        os.close(write_end)
        write_end = -1
        poller = select.poll()
        poller.register(read_end, select.POLLHUP)
        return bool(poller.poll(int(timeout * 1000)))
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
