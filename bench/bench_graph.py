"""Graph-overhead benchmark: validate and execute N trivial nodes, cold and fully cached.

    python bench/bench_graph.py            # 500, 1000, 2000, 4000 nodes
    python bench/bench_graph.py 2000       # one size

Prints seconds per phase, so overhead per node can be compared across sizes (it should be flat).
"""
from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph.cache import make_cache  # noqa: E402
from graph.contract import Int, Node, Output, Socket  # noqa: E402
from graph.executor import Executor  # noqa: E402
from graph.registry import NodeRegistry  # noqa: E402


class Const(Node):
    inputs = [Int("value")]
    outputs = [Output("INT")]

    def run(self, ctx, value):
        return (value,)


class Add(Node):
    inputs = [Socket("a", "INT"), Socket("b", "INT"), Int("offset", min=-100, max=100)]
    outputs = [Output("INT")]

    def run(self, ctx, a, b, offset):
        return (a + b + offset,)


class Sink(Node):
    inputs = [Socket("value", "INT")]
    output_node = True

    def run(self, ctx, value):
        return {"ui": {"value": [value]}}


def make_prompt(n: int, seed: int = 0) -> dict:
    """n nodes: two constants, then adders linking the previous node and a random recent one; 1% are outputs."""
    rng = random.Random(seed)
    prompt = {str(i): {"class_type": "Const", "inputs": {"value": i}} for i in range(2)}
    numeric = list(prompt)
    sinks = max(1, n // 100)
    for i in range(2, n - sinks):
        a, b = numeric[-1], rng.choice(numeric[-50:-1])  # a chain, so every node is needed
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": [a, 0], "b": [b, 0], "offset": rng.randint(-5, 5)}}
        numeric.append(str(i))
    for k, i in enumerate(range(n - sinks, n)):
        prompt[str(i)] = {"class_type": "Sink", "inputs": {"value": [numeric[-1 - k], 0]}}
    return prompt


def measure(n: int, repeats: int = 5) -> dict[str, float]:
    registry = NodeRegistry()
    registry.register_nodes([Const, Add, Sink], "bench")
    cold, cached, validate = [], [], []
    for r in range(repeats):
        executor = Executor(registry, make_cache("classic"))
        prompt = make_prompt(n, seed=r)
        t0 = time.perf_counter()
        checked = executor.validate(prompt)
        t1 = time.perf_counter()
        result = executor.execute(checked)
        t2 = time.perf_counter()
        assert result.ok and len(result.executed) == n, (result.status, len(result.executed))
        again = executor.run(prompt)
        t3 = time.perf_counter()
        assert again.ok and again.executed == []
        validate.append(t1 - t0)
        cold.append(t2 - t0)
        cached.append(t3 - t2)
    return {"validate": statistics.median(validate), "cold": statistics.median(cold),
            "cached": statistics.median(cached)}


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [500, 1000, 2000, 4000]
    print(f"{'nodes':>6} {'validate s':>11} {'cold s':>8} {'cached s':>9} {'cold us/node':>13} {'cached us/node':>15}")
    for n in sizes:
        m = measure(n)
        print(f"{n:>6} {m['validate']:>11.4f} {m['cold']:>8.4f} {m['cached']:>9.4f} "
              f"{1e6 * m['cold'] / n:>13.1f} {1e6 * m['cached'] / n:>15.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
