"""Cache keys and the output caches that keep node results between prompts.

A node's key is a digest of its class type, its literal inputs, its IS_CHANGED value and the keys
of the nodes it links to, so keys ignore node ids and layout: the same sub-graph in another
prompt is the same key. Entries hold references to the node's own output objects; nothing is
copied, so a large tensor lives once however many prompts share it.
"""
from __future__ import annotations

import hashlib
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

from graph.prompt import is_link

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One node's result: a list of values per output slot, and its UI payload."""

    outputs: list[list]
    ui: dict | None = None


class _AlwaysNew:
    """Stands in for values that must never match (NaN, IS_CHANGED failures)."""


def node_key(class_type: str, inputs: dict, upstream: dict[str, str], changed: Any = None,
             node_id: str | None = None) -> str:
    """The digest for one node, given the keys of the nodes it links to."""
    parts = []
    for name in sorted(inputs):
        value = inputs[name]
        if is_link(value):
            parts.append((name, "link", upstream[str(value[0])], value[1]))
        elif type(value) in _PLAIN or (type(value) is float and math.isfinite(value)):
            parts.append((name, value))  # repr() below tells 1, 1.0, True and "1" apart
        else:
            parts.append((name, "value", _canonical(value)))
    doc = (class_type, _canonical(changed), node_id, parts)
    return hashlib.blake2b(repr(doc).encode(), digest_size=20).hexdigest()


_PLAIN = (int, str, bool, type(None))


def safe_node_key(*args, **kwargs) -> str:
    """node_key, or a key that matches nothing when the inputs cannot be fingerprinted
    (nesting deeper than the interpreter's recursion limit)."""
    try:
        return node_key(*args, **kwargs)
    except RecursionError:
        return "unkeyable:" + uuid.uuid4().hex


def _canonical(value: Any) -> Any:
    """A JSON-safe, order-independent form; NaN and unknown objects become unique (never equal)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan:" + uuid.uuid4().hex
    if value is None or isinstance(value, (bool, int, float, str)):
        return [type(value).__name__, value if not isinstance(value, float) or math.isfinite(value) else repr(value)]
    if isinstance(value, (list, tuple)):
        return ["list", [_canonical(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", sorted(([str(k), _canonical(v)] for k, v in value.items()), key=lambda kv: kv[0])]
    if isinstance(value, bytes):
        return ["bytes", hashlib.blake2b(value).hexdigest()]
    return "object:" + uuid.uuid4().hex


class OutputCache:
    """Base policy: remembers entries by key. Subclasses decide what survives between prompts.

    The executor calls begin_prompt with the keys of the prompt's nodes before any node runs, and
    `expanded` with the keys of nodes that expansion adds while it runs.
    """

    retains = True

    def __init__(self):
        self._entries: dict[str, Entry] = {}

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def put(self, key: str, entry: Entry) -> None:
        self._entries[key] = entry

    def begin_prompt(self, keys: Iterable[str]) -> None:
        """Called once a prompt's keys are known, before any node runs."""

    def expanded(self, keys: Iterable[str]) -> None:
        """Keys of nodes that an expansion added to the running prompt."""

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class ClassicCache(OutputCache):
    """Keeps what the current prompt uses: the last prompt's outputs survive to the next. Nodes
    that expansions added survive one more prompt (ComfyUI keeps them under their expanding node),
    so a node that expands again into the same subgraph finds it cached."""

    def __init__(self):
        super().__init__()
        self._expanded: set[str] = set()

    def begin_prompt(self, keys: Iterable[str]) -> None:
        used = set(keys) | self._expanded
        self._expanded = set()
        self._entries = {k: v for k, v in self._entries.items() if k in used}

    def expanded(self, keys: Iterable[str]) -> None:
        self._expanded.update(keys)

    def clear(self) -> None:
        super().clear()
        self._expanded.clear()


class LRUCache(OutputCache):
    """ComfyUI's --cache-lru N: holds up to N node results (more while one prompt needs them).

    Every key a prompt uses is stamped with that prompt's generation; when a prompt starts and
    more than N results are held, whole generations are dropped oldest first, never the current.
    """

    def __init__(self, max_size: int):
        super().__init__()
        if max_size < 1:
            raise ValueError("an LRU cache needs room for at least one node result")
        self.max_size = max_size
        self._generation = 0
        self._oldest = 0  # generations below this one have been dropped
        self._last_used: dict[str, int] = {}

    def begin_prompt(self, keys: Iterable[str]) -> None:
        self._generation += 1
        self._mark(keys)
        while len(self._entries) > self.max_size and self._oldest < self._generation:
            self._oldest += 1
            for key in [k for k in self._entries if self._last_used.get(k, 0) < self._oldest]:
                del self._entries[key]
                self._last_used.pop(key, None)

    def expanded(self, keys: Iterable[str]) -> None:
        self._mark(keys)

    def _mark(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._last_used[key] = self._generation

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._last_used[key] = self._generation
        return entry

    def put(self, key: str, entry: Entry) -> None:
        self._last_used[key] = self._generation
        super().put(key, entry)

    def clear(self) -> None:
        super().clear()
        self._last_used.clear()


class NoCache(OutputCache):
    """Nothing survives a prompt; the executor also frees outputs once their consumers ran."""

    retains = False

    def get(self, key: str) -> Entry | None:
        return None

    def put(self, key: str, entry: Entry) -> None:
        pass


def make_cache(policy: str) -> OutputCache:
    """'classic' (default), 'lru:N' (N node results) or 'none'."""
    name, _, arg = policy.partition(":")
    if name == "classic" and not arg:
        return ClassicCache()
    if name == "none" and not arg:
        return NoCache()
    if name == "lru":
        try:
            return LRUCache(int(arg))
        except ValueError:
            pass
    raise ValueError(f"unknown cache policy {policy!r}: use 'classic', 'lru:N' (N node results) or 'none'")
