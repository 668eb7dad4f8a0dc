"""Which node runs next: the prompt's dependency graph, dissolved as nodes finish.

A node is pending until it has run; it is ready when no pending node blocks it. A node that is
staged may go back to pending with new dependencies (lazy inputs it asks for, the subgraph it
expanded into) or with an external block (async work in flight). This is ComfyUI's
ExecutionList, so the order in which nodes become ready (and which node a cycle is blamed on)
matches ComfyUI's.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from graph.prompt import is_link


class NodeInputError(Exception):
    """A node asked for a lazy input that is not a link."""


class DependencyCycle(Exception):
    """No node can run: `blamed` is the node to report (an expansion's display node if any)."""

    def __init__(self, blamed: str, cycle: list[str]):
        super().__init__("Dependency cycle detected")
        self.blamed = blamed
        self.cycle = cycle


class ExecutionList:
    def __init__(self, node_of: Callable[[str], dict], lazy_inputs: Callable[[str], frozenset],
                 is_available: Callable[[str], bool], is_preferred: Callable[[str], tuple[bool, bool]],
                 display_of: Callable[[str], str]):
        """`node_of(id)` is the API-format node; `lazy_inputs(id)` the names of its lazy inputs;
        `is_available(id)` whether its outputs exist already (cached or run); `is_preferred(id)`
        (is an output node, is async); `display_of(id)` the node the editor shows for it."""
        self.node_of = node_of
        self.lazy_inputs = lazy_inputs
        self.is_available = is_available
        self.is_preferred = is_preferred
        self.display_of = display_of
        self.pending: dict[str, int] = {}  # node -> the order it became pending in
        self.ready: set[str] = set()  # pending nodes nothing blocks
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}  # source -> consumer -> sockets
        self.external_blocks = 0
        self.unblocked = asyncio.Event()
        self.staged: str | None = None

    # -- building --------------------------------------------------------------------------
    def add_node(self, node_id: str, include_lazy: bool = False) -> None:
        """Make `node_id` pending along with every unavailable node it needs (lazy inputs only
        when asked for)."""
        stack = [node_id]
        links = []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = len(self.pending)
            self.block_count[current] = 0
            self.ready.add(current)
            self.blocking[current] = {}
            lazy = self.lazy_inputs(current)
            for name, value in self.node_of(current)["inputs"].items():
                if is_link(value) and (include_lazy or name not in lazy):
                    source = str(value[0])
                    if not self.is_available(source):
                        stack.append(source)
                        links.append((source, value[1], current))
        for link in links:
            self.add_strong_link(*link)

    def add_strong_link(self, source: str, socket: int, consumer: str) -> None:
        """`consumer` waits for `source`, which becomes pending unless its outputs exist."""
        if self.is_available(source):
            return
        self.add_node(source)
        consumers = self.blocking[source]
        if consumer not in consumers:
            consumers[consumer] = {}
            self._block(consumer)
        consumers[consumer][socket] = True

    def make_input_strong_link(self, node_id: str, name: str) -> None:
        inputs = self.node_of(node_id)["inputs"]
        if name not in inputs:
            raise NodeInputError(f"Node {node_id} says it needs input {name}, "
                                 "but there is no input to that node at all")
        value = inputs[name]
        if not is_link(value):
            raise NodeInputError(f"Node {node_id} says it needs input {name}, but that value is a constant")
        self.add_strong_link(str(value[0]), value[1], node_id)

    def add_external_block(self, node_id: str) -> Callable[[], None]:
        """Hold `node_id` back until the returned function is called (its async calls finished)."""
        self.external_blocks += 1
        self._block(node_id)

        def unblock() -> None:
            self.external_blocks -= 1
            self._unblock(node_id)
            self.unblocked.set()

        return unblock

    # -- running ---------------------------------------------------------------------------
    def is_empty(self) -> bool:
        return not self.pending

    async def stage(self) -> str:
        """The next node to run; waits while only async work can unblock one. Raises
        DependencyCycle when nothing can ever become ready."""
        ready = self._ready()
        while not ready and self.external_blocks > 0:
            await self.unblocked.wait()
            self.unblocked.clear()
            ready = self._ready()
        if not ready:
            cycle = self._cycle()
            blamed = next((self.display_of(n) for n in cycle if self.display_of(n) != n), cycle[0])
            raise DependencyCycle(blamed, cycle)
        self.staged = self._pick(ready)
        return self.staged

    def unstage(self) -> None:
        self.staged = None

    def complete(self) -> None:
        node_id = self.staged
        del self.pending[node_id]
        self.ready.discard(node_id)
        for consumer in self.blocking.pop(node_id):
            self._unblock(consumer)
        self.staged = None

    def _block(self, node_id: str) -> None:
        self.block_count[node_id] += 1
        self.ready.discard(node_id)

    def _unblock(self, node_id: str) -> None:
        self.block_count[node_id] -= 1
        if self.block_count[node_id] == 0 and node_id in self.pending:
            self.ready.add(node_id)

    def _ready(self) -> list[str]:
        """Ready nodes in the order they became pending (ComfyUI's order, so ties break alike)."""
        if len(self.ready) < 2:
            return list(self.ready)
        return sorted(self.ready, key=self.pending.__getitem__)

    def _pick(self, ready: list[str]) -> str:
        """ComfyUI's choice: an output or async node first (previews show early, async work
        starts early), then a node an output waits for, then one two steps from an output."""
        if len(ready) == 1:
            return ready[0]
        for node_id in ready:
            if any(self.is_preferred(node_id)):
                return node_id
        is_output = lambda n: self.is_preferred(n)[0]  # noqa: E731
        for node_id in ready:
            if any(is_output(c) for c in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            if any(is_output(cc) for c in self.blocking[node_id] for cc in self.blocking.get(c, ())):
                return node_id
        return ready[0]

    def _cycle(self) -> list[str]:
        """The pending nodes that are part of (or wait on) a cycle: dissolve the rest."""
        blocked_by = {n: set() for n in self.pending}
        for source, consumers in self.blocking.items():
            for consumer, sockets in consumers.items():
                if consumer in blocked_by and any(sockets.values()):
                    blocked_by[consumer].add(source)
        free = [n for n, sources in blocked_by.items() if not sources]
        while free:
            for node_id in free:
                del blocked_by[node_id]
                for sources in blocked_by.values():
                    sources.discard(node_id)
            free = [n for n, sources in blocked_by.items() if not sources]
        return list(blocked_by) or list(self.pending)
