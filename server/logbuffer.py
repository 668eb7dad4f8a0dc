"""The server's recent console output, for the frontend's terminal panel (/internal/logs).

ComfyUI's panel shows what the process prints: its own log, node packs' print() output,
progress bars. So the running server tees sys.stdout and sys.stderr (from before the engine
starts, so start-up messages are kept) into a ring of {"t": ISO time, "m": text} entries, and
sends new entries as `logs` websocket messages to the clients that subscribed. Replacing the
standard streams is process-wide by nature; only `serve` does it, and puts them back at exit.
"""
from __future__ import annotations

import shutil
import sys
import threading
from collections import deque
from datetime import datetime
from typing import Any

CAPACITY = 300  # entries kept, as ComfyUI


class _Tee:
    """A text stream that writes through to the real one and records what was written."""

    def __init__(self, stream, buffer: LogBuffer):
        self._stream = stream
        self._buffer = buffer

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._buffer.record(text)
        return written

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ... of the real stream
        return getattr(self._stream, name)


def terminal_size() -> dict[str, int]:
    size = shutil.get_terminal_size((80, 24))
    return {"cols": size.columns, "rows": size.lines}


class LogBuffer:
    def __init__(self, capacity: int = CAPACITY):
        self.entries: deque[dict[str, str]] = deque(maxlen=capacity)
        self.subscribers: set[str] = set()
        self._lock = threading.Lock()
        self._pending: list[dict[str, str]] = []
        self._scheduled = False
        self._hub = None
        self._streams: tuple | None = None
        self._size: dict[str, int] | None = None

    # -- capture ---------------------------------------------------------------------------
    def capture(self) -> LogBuffer:
        if self._streams is None:
            self._streams = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        return self

    def release(self) -> None:
        if self._streams is not None:
            sys.stdout, sys.stderr = self._streams
            self._streams = None

    def record(self, text: str) -> None:
        if not isinstance(text, str) or not text:
            return
        entry = {"t": datetime.now().isoformat(), "m": text}
        with self._lock:
            # a progress bar redraws its line with '\r': keep its latest state, not every frame
            if text.startswith("\r") and self.entries and not self.entries[-1]["m"].endswith("\n"):
                self.entries.pop()
            self.entries.append(entry)
            if not self.subscribers or self._hub is None:
                return
            self._pending.append(entry)
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._hub.loop
        try:
            loop.call_soon_threadsafe(self._send_pending)
        except (AttributeError, RuntimeError):  # no loop yet, or it closed (shutdown)
            with self._lock:
                self._scheduled = False

    # -- readers ---------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.entries)

    def text(self) -> str:
        return "".join(f"{e['t']} - {e['m']}" for e in self.snapshot())

    def raw(self) -> dict:
        self._size = terminal_size()
        return {"entries": self.snapshot(), "size": self._size}

    # -- subscribers (event loop thread) ---------------------------------------------------
    def attach(self, hub) -> None:
        self._hub = hub

    def subscribe(self, client_id: str, enabled: bool) -> None:
        with self._lock:
            if enabled:
                self.subscribers.add(client_id)
            else:
                self.subscribers.discard(client_id)

    def _send_pending(self) -> None:
        with self._lock:
            entries, self._pending, self._scheduled = self._pending, [], False
        if not entries:
            return
        size = terminal_size()
        changed = size if size != self._size else None  # ComfyUI sends the size only when it changed
        self._size = size
        for client_id in list(self.subscribers):
            if client_id not in self._hub.clients:  # gone: unsubscribe, as ComfyUI does
                self.subscribe(client_id, False)
                continue
            self._hub.send("logs", {"entries": entries, "size": changed}, client_id)
