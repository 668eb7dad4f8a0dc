"""The durable prompt queue and history, one SQLite table under <user_dir>/latentgraph.db.

A prompt is a row that moves pending -> running -> done. Every move is committed before anyone
is told about it, so a process killed at any moment loses nothing: on the next start rows still
marked running are put back to pending (they run again, first, and their history says they were
cut short) and finished entries are all still there.

Rows keep their JSON as text: the queue item exactly as ComfyUI lists it, and the history
entry's parts, so /queue and /history replies are assembled from stored text without decoding
every prompt again.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from app.folders import FoldersBusy, hold_lock
from server.jsonio import dumps

DB_NAME = "latentgraph.db"
MAX_HISTORY = 10_000  # as ComfyUI: the oldest finished entries go beyond this

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done')),
    item TEXT NOT NULL,
    client_id TEXT,
    restarts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    history_seq INTEGER,
    outputs TEXT,
    status TEXT,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS prompts_queue ON prompts (state, number, seq);
CREATE INDEX IF NOT EXISTS prompts_history ON prompts (history_seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class DuplicatePromptId(ValueError):
    pass


StoreBusy = FoldersBusy  # another server process already owns this queue


@dataclass(frozen=True)
class Job:
    """A queue item: ComfyUI's (number, prompt_id, prompt, extra_data, outputs_to_execute)."""

    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list[str]
    restarts: int = 0  # times the server stopped while this prompt was running

    @property
    def client_id(self) -> str | None:
        cid = self.extra_data.get("client_id")
        return cid if isinstance(cid, str) else None

    def as_item(self) -> list:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class PromptStore:
    """Queue and history. Thread-safe: the event loop and the worker thread share it."""

    def __init__(self, path: Path, lock: BinaryIO | None = None):
        """`lock`: the held lock of path's folder (FolderPaths.claim), else one is taken here."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._own_lock = lock is None
        self._owner = lock or hold_lock(self.path.with_name(self.path.name + ".lock"))
        self._lock = threading.Lock()
        # `with self._db:` blocks are transactions: committed whole or rolled back.
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        # WAL + NORMAL survives a killed process (only a power cut can lose the last commits),
        # and keeps commits cheap enough to do inside a request.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.recovered: list[str] = self._recover()

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._own_lock:
            self._owner.close()

    def _recover(self) -> list[str]:
        """Rows left running by a process that died go back to the queue."""
        with self._lock, self._db:
            ids = [r[0] for r in self._db.execute("SELECT prompt_id FROM prompts WHERE state = 'running'")]
            self._db.execute("UPDATE prompts SET state = 'pending', restarts = restarts + 1, started = NULL "
                             "WHERE state = 'running'")
        return ids

    # -- queue -----------------------------------------------------------------------------
    def next_number(self, front: bool) -> int:
        """ComfyUI's priority numbers: a rising counter, negated to jump the queue. The counter
        is stored so numbers given after a restart still sort after older pending prompts."""
        with self._lock, self._db:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'number'").fetchone()
            value = row[0] if row else 0
            self._db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('number', ?)", (value + 1,))
        return -value if front else value

    def enqueue(self, job: Job) -> None:
        item = dumps(job.as_item())
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT INTO prompts (prompt_id, number, state, item, client_id, created) "
                    "VALUES (?, ?, 'pending', ?, ?, ?)",
                    (job.prompt_id, job.number, item, job.client_id, time.time()))
        except sqlite3.IntegrityError:
            raise DuplicatePromptId(job.prompt_id) from None

    def claim_next(self) -> Job | None:
        """Mark the first pending prompt running and return it (lowest number, then oldest)."""
        with self._lock, self._db:
            row = self._db.execute("SELECT seq, item, restarts FROM prompts WHERE state = 'pending' "
                                   "ORDER BY number, seq LIMIT 1").fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE prompts SET state = 'running', started = ? WHERE seq = ? AND state = 'pending'",
                             (time.time(), row[0]))
        number, prompt_id, prompt, extra_data, outputs = json.loads(row[1])
        return Job(number, prompt_id, prompt, extra_data, outputs, row[2])

    def remaining(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM prompts WHERE state != 'done'").fetchone()[0]

    def queue_items(self, state: str) -> list[str]:
        """JSON text of each item in a state, in the order they will run."""
        with self._lock:
            rows = self._db.execute("SELECT item FROM prompts WHERE state = ? ORDER BY number, seq", (state,))
            return [r[0] for r in rows]

    def delete_pending(self, prompt_ids: list[str] | None = None) -> list[str]:
        """Drop pending prompts (all of them when prompt_ids is None); running ones are untouched."""
        with self._lock, self._db:
            if prompt_ids is None:
                rows = self._db.execute("SELECT prompt_id FROM prompts WHERE state = 'pending'").fetchall()
            else:
                rows = [(p,) for p in prompt_ids if self._db.execute(
                    "SELECT 1 FROM prompts WHERE state = 'pending' AND prompt_id = ?", (p,)).fetchone()]
            self._db.executemany("DELETE FROM prompts WHERE state = 'pending' AND prompt_id = ?", rows)
        return [r[0] for r in rows]

    # -- history ---------------------------------------------------------------------------
    def finish(self, prompt_id: str, outputs: dict, status: dict, meta: dict) -> None:
        with self._lock, self._db:
            row = self._db.execute("SELECT MAX(history_seq) FROM prompts").fetchone()
            history_seq = (row[0] or 0) + 1
            self._db.execute(
                "UPDATE prompts SET state = 'done', finished = ?, history_seq = ?, outputs = ?, status = ?, meta = ? "
                "WHERE prompt_id = ?",
                (time.time(), history_seq, dumps(outputs), dumps(status), dumps(meta), prompt_id))
            self._db.execute(
                "DELETE FROM prompts WHERE state = 'done' AND history_seq <= ?", (history_seq - MAX_HISTORY,))

    def history_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM prompts WHERE state = 'done'").fetchone()[0]

    def history_text(self, max_items: int | None = None, offset: int | None = None) -> str:
        """The /history document as JSON text, oldest first.

        ComfyUI's window: max_items alone gives the newest max_items; offset starts the window
        at that index; neither gives everything.
        """
        with self._lock:
            if offset is None or offset < 0:
                if max_items is None:
                    offset = 0
                else:
                    total = self._db.execute("SELECT COUNT(*) FROM prompts WHERE state = 'done'").fetchone()[0]
                    offset = max(0, total - max_items)
            rows = self._db.execute(
                "SELECT prompt_id, item, outputs, status, meta FROM prompts WHERE state = 'done' "
                "ORDER BY history_seq LIMIT ? OFFSET ?", (-1 if max_items is None else max_items, offset)).fetchall()
        return "{" + ", ".join(f"{dumps(r[0])}: {_entry(r)}" for r in rows) + "}"

    def history_entry_text(self, prompt_id: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT prompt_id, item, outputs, status, meta FROM prompts "
                                   "WHERE state = 'done' AND prompt_id = ?", (prompt_id,)).fetchone()
        return "{}" if row is None else "{" + f"{dumps(row[0])}: {_entry(row)}" + "}"

    def history_entry(self, prompt_id: str) -> dict | None:
        return json.loads(self.history_entry_text(prompt_id)).get(prompt_id)

    def delete_history(self, prompt_ids: list[str] | None = None) -> None:
        with self._lock, self._db:
            if prompt_ids is None:
                self._db.execute("DELETE FROM prompts WHERE state = 'done'")
            else:
                self._db.executemany("DELETE FROM prompts WHERE state = 'done' AND prompt_id = ?",
                                     [(p,) for p in prompt_ids])

    def state_of(self, prompt_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM prompts WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return row[0] if row else None


def _entry(row: Any) -> str:
    _, item, outputs, status, meta = row
    return f'{{"prompt": {item}, "outputs": {outputs}, "status": {status}, "meta": {meta}}}'
