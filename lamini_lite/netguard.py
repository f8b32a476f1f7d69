"""A guard that refuses every network connection except to loopback.

The book promises to run offline; the test suite installs this guard so that
any attempt to reach the network (a model hub, a data download) fails loudly
instead of passing on a machine that happens to be online. Set
``LAMINI_LITE_NO_NETWORK=1`` to install it in notebooks too.
"""

from __future__ import annotations

import ipaddress
import socket

_ORIGINAL_CONNECT = socket.socket.connect
_ORIGINAL_CONNECT_EX = socket.socket.connect_ex


class NetworkAccessError(RuntimeError):
    """Something tried to open a network connection while the guard was on."""


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX socket path
        return True
    host = address[0] if isinstance(address, tuple) and address else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_loopback(address):
        raise NetworkAccessError(f"network access to {address!r} is not allowed: "
                                 "lamini-lite runs offline")
    return _ORIGINAL_CONNECT(self, address)


def _guarded_connect_ex(self, address):
    if not _is_loopback(address):
        raise NetworkAccessError(f"network access to {address!r} is not allowed: "
                                 "lamini-lite runs offline")
    return _ORIGINAL_CONNECT_EX(self, address)


def install() -> None:
    """Refuse non-loopback connections from now on (idempotent)."""
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex


def uninstall() -> None:
    """Restore normal networking."""
    socket.socket.connect = _ORIGINAL_CONNECT
    socket.socket.connect_ex = _ORIGINAL_CONNECT_EX
