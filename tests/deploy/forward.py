"""A loopback port on this machine that leads to an address inside the node's network namespace.

The node's daemon runs in a network namespace of its own (tests/deploy/daemon.py), so the
machine cannot reach its containers. Without Traefik nothing of the node is published; the
suite (the official ``openai`` client, requests) reaches the gateway through this forwarder:
each connection to ``127.0.0.1:<port>`` is answered by a thread that enters the namespace
(``setns``: a network namespace is per thread) and connects to the target there, then bytes
are copied both ways. The node's own networks and rules are not changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _enter(netns_path: str) -> None:
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns_path}")
    finally:
        os.close(fd)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((target, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)


class NetnsForwarder:
    def __init__(self, netns_path: str, host: str, port: int):
        self.netns_path, self.target = netns_path, (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._serve, name="netns-forwarder", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            _enter(self.netns_path)  # this thread only; it ends with the connection
            upstream = socket.create_connection(self.target, timeout=30)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
