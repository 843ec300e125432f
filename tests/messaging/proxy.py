"""A TCP proxy in front of RabbitMQ that a test can pause and cut, to lose confirms and
connections at chosen moments."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target`.

    `pause(upstream=..., downstream=...)` stops reading in that direction (bytes wait in
    socket buffers), `cut()` closes every connection (what waits is lost), `resume()`.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self.up_paused = threading.Event()
        self.down_paused = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def pause(self, upstream: bool = True, downstream: bool = True) -> None:
        if upstream:
            self.up_paused.set()
        if downstream:
            self.down_paused.set()

    def resume(self) -> None:
        self.up_paused.clear()
        self.down_paused.clear()

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, self.up_paused),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.down_paused),
                             daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, paused: threading.Event) -> None:
        with selectors.DefaultSelector() as sel:
            try:
                sel.register(source, selectors.EVENT_READ)
                while True:
                    if paused.is_set():
                        time.sleep(0.02)
                        if source.fileno() < 0:
                            return
                        continue
                    if not sel.select(0.05) or paused.is_set():
                        continue
                    data = source.recv(65536)
                    if not data:
                        break
                    sink.sendall(data)
            except (OSError, ValueError):
                pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
