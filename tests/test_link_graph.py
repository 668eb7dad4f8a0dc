"""The prompt link graph's own algorithms (cycle groups, sources-first order) against networkx.

networkx (installed with torch) is the independent reference; the engine no longer imports it.
"""
import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from graph.executor import _sources_first
from graph.validation import LinkGraph, cycles

NODES = [str(i) for i in range(12)]
edges_strategy = st.lists(st.tuples(st.sampled_from(NODES), st.sampled_from(NODES)), max_size=30)


def both(edges):
    graph = LinkGraph({n: set() for n in NODES}, {n: set() for n in NODES})
    for source, consumer in edges:
        graph.pred[consumer].add(source)
        graph.succ[source].add(consumer)
    reference = nx.DiGraph(edges)
    reference.add_nodes_from(NODES)
    return graph, reference


@settings(max_examples=300, deadline=None)
@given(edges_strategy)
def test_cycle_groups_are_networkx_cyclic_components(edges):
    graph, reference = both(edges)
    expected = [c for c in nx.strongly_connected_components(reference)
                if len(c) > 1 or any(reference.has_edge(n, n) for n in c)]
    assert sorted(map(sorted, cycles(graph))) == sorted(map(sorted, expected))


@settings(max_examples=300, deadline=None)
@given(edges_strategy)
def test_sources_first_orders_all_but_cycles_and_what_they_feed(edges):
    graph, reference = both(edges)
    order = _sources_first(graph.pred)
    cyclic = set().union(*cycles(graph))
    blocked = cyclic.union(*(nx.descendants(reference, n) for n in cyclic))
    assert set(order) == set(NODES) - blocked and len(order) == len(set(order))
    position = {n: i for i, n in enumerate(order)}
    assert all(position[s] < position[c] for s, c in edges if c in position)


def test_a_long_chain_needs_no_recursion():
    chain = [str(i) for i in range(20000)]
    graph = LinkGraph({n: set() for n in chain}, {n: set() for n in chain})
    for source, consumer in zip(chain, chain[1:] + chain[:1]):  # one cycle through all of them
        graph.pred[consumer].add(source)
        graph.succ[source].add(consumer)
    assert cycles(graph) == [set(chain)]
