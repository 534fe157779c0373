"""Small network helpers: "are we offline?" and a free local port."""

from __future__ import annotations

import socket
import threading


def reachable(host: str, port: int = 443, timeout_s: float = 3.0) -> bool:
    """A TCP connect with a short timeout: the fast answer to "are we offline?". The connect runs in a
    daemon thread because the DNS lookup before it ignores socket timeouts and can hang on a dead resolver."""
    answer: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                answer.append(True)
        except OSError:
            answer.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout_s + 0.5)
    return bool(answer and answer[0])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
