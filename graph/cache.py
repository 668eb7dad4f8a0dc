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
    """Base policy: remembers entries by key. Subclasses decide what survives between prompts."""

    retains = True

    def __init__(self):
        self._entries: dict[str, Entry] = {}

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def put(self, key: str, entry: Entry) -> None:
        self._entries[key] = entry

    def begin_prompt(self, keys: Iterable[str]) -> None:
        """Called once a prompt's keys are known, before any node runs."""

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class ClassicCache(OutputCache):
    """Keeps only what the current prompt uses: the last prompt's outputs survive to the next."""

    def begin_prompt(self, keys: Iterable[str]) -> None:
        used = set(keys)
        self._entries = {k: v for k, v in self._entries.items() if k in used}


class LRUCache(OutputCache):
    """Keeps every entry used by any of the last `prompts` prompts."""

    def __init__(self, prompts: int):
        super().__init__()
        if prompts < 1:
            raise ValueError("an LRU cache needs room for at least one prompt")
        self.prompts = prompts
        self._generation = 0
        self._last_used: dict[str, int] = {}

    def begin_prompt(self, keys: Iterable[str]) -> None:
        self._generation += 1
        for key in keys:
            self._last_used[key] = self._generation
        oldest = self._generation - self.prompts
        for key in [k for k, g in self._last_used.items() if g <= oldest]:
            del self._last_used[key]
            self._entries.pop(key, None)

    def put(self, key: str, entry: Entry) -> None:
        self._last_used.setdefault(key, self._generation)
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
    """'classic' (default), 'lru:N' or 'none'."""
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
    raise ValueError(f"unknown cache policy {policy!r}: use 'classic', 'lru:N' (N prompts) or 'none'")
