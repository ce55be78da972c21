"""sd_notify without a dependency: tell a service manager (systemd, Type=notify) how we are doing."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def sd_notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to $NOTIFY_SOCKET; False when there is no service manager.

    Never raises: a service manager that went away must not take the mount down with it.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or path[0] not in "@/":
        return False
    # A leading '@' names a socket in the abstract namespace.
    address = "\0" + path[1:] if path[0] == "@" else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as e:
        log.warning("could not notify the service manager at %s: %s", path, e)
        return False
