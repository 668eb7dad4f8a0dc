"""Node expansion ({"expand": subgraph, "result": links}) and ExecutionBlocker, as in ComfyUI."""
from graph.blocker import ExecutionBlocker
from graph.graph_builder import GraphBuilder
from tests.conftest import calls
from tests.test_cli import main, write


def run(rt, prompt, **kw):
    events = []
    result = rt.executor.run(prompt, emit=lambda e, d: events.append((e, d)), **kw)
    return result, events


def executing(events):
    return [(d["node"], d["display_node"]) for e, d in events if e == "executing"]


def chain_prompt(value=5, length=3):
    return {"1": {"class_type": "TestValue", "inputs": {"value": value}},
            "2": {"class_type": "TestExpandChain", "inputs": {"value": ["1", 0], "length": length}},
            "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}


def test_graph_builder_prefixes_ids_and_serialises_links():
    GraphBuilder.set_default_prefix("7", 2, 0)
    graph = GraphBuilder()
    a = graph.node("TestAdd", a=1, b=2)
    b = graph.node("TestAdd", id="last", a=a.out(0), b=3)
    assert graph.lookup_node("last") is b and graph.node("TestAdd", id="last") is b
    assert graph.finalize() == {"7.2.0.1": {"class_type": "TestAdd", "inputs": {"a": 1, "b": 2}},
                                "7.2.0.last": {"class_type": "TestAdd", "inputs": {"a": ["7.2.0.1", 0], "b": 3}}}
    assert GraphBuilder().prefix == "7.2.1."  # a second builder in the same call gets its own prefix


def test_node_expands_into_a_chain(cached_runtime):
    rt = cached_runtime
    result, events = run(rt, chain_prompt())
    assert result.ok, result.error
    assert result.outputs["3"] == {"text": ["11"]}  # 5 + 1 + 2 + 3
    assert result.executed == ["1", "2.0.0.1", "2.0.0.2", "2.0.0.3", "2", "3"]
    assert executing(events) == [("1", "1"), ("2", "2"), ("2.0.0.1", "2"), ("2.0.0.2", "2"),
                                 ("2.0.0.3", "2"), ("3", "3")]
    assert calls(rt)["TestAdd"] == 3 and calls(rt)["TestExpandChain"] == 1


def test_rerun_is_served_by_the_cache(cached_runtime):
    rt = cached_runtime
    assert rt.executor.run(chain_prompt()).ok
    again = rt.executor.run(chain_prompt())
    assert again.ok and again.outputs["3"] == {"text": ["11"]}
    if rt.policy == "none":
        assert calls(rt)["TestAdd"] == 6
        return
    assert again.executed == [] and set(again.cached) == {"1", "2", "3"}
    assert calls(rt)["TestAdd"] == 3 and calls(rt)["TestExpandChain"] == 1
    changed = rt.executor.run(chain_prompt(value=6))
    assert changed.outputs["3"] == {"text": ["12"]} and calls(rt)["TestExpandChain"] == 2


def test_expansion_links_to_nodes_outside_the_subgraph(cached_runtime):
    rt = cached_runtime
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 7}},  # only the expansion uses it
              "2": {"class_type": "TestExpandLink", "inputs": {"source_id": "1", "add": 3}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    result, _ = run(rt, prompt)
    assert result.ok, result.error
    assert result.outputs["3"] == {"text": ["10"]}
    assert result.executed == ["1", "2.0.0.1", "2", "3"]
    # an outside node that the prompt also uses; the id in a STRING is not a link, so (as in ComfyUI)
    # the expanding node's cache key does not follow node 1: change its own input too
    prompt["4"] = {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}
    prompt["1"]["inputs"]["value"] = 8
    prompt["2"]["inputs"]["add"] = 4
    result, _ = run(rt, prompt)
    assert result.ok and result.outputs["3"] == {"text": ["12"]} and result.outputs["4"] == {"text": ["8"]}
    if rt.policy != "none":  # without a cache node 1 may be freed after node 4 and run again
        assert result.executed.count("1") == 1


def test_nested_expansion(cached_runtime):
    rt = cached_runtime
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
              "2": {"class_type": "TestExpandNested", "inputs": {"value": ["1", 0], "depth": 3}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    result, events = run(rt, prompt)
    assert result.ok, result.error
    assert result.outputs["3"] == {"text": ["31"]}
    assert calls(rt)["TestExpandNested"] == 4 and calls(rt)["TestAdd"] == 3
    deepest = "2.0.0.1.0.0.1.0.0.1"
    assert deepest in result.executed
    assert (deepest, "2") in executing(events)  # shown as the prompt node that started it
    again = rt.executor.run(prompt)
    if rt.policy != "none":
        assert again.executed == [] and calls(rt)["TestExpandNested"] == 4


def test_output_node_inside_an_expansion_runs_and_reports(runtime):
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 5}},
              "2": {"class_type": "TestExpandOutput", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    result, events = run(runtime, prompt)
    assert result.ok, result.error
    assert result.outputs == {"2.0.0.shown": {"text": ["500"]}, "3": {"text": ["5"]}}
    shown = [d for e, d in events if e == "executed" and d["node"] == "2.0.0.shown"]
    assert shown and shown[0]["display_node"] == "2"


def test_error_inside_an_expanded_node_is_reported_on_the_node_that_expanded(runtime):
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 5}},
              "2": {"class_type": "TestExpandRaise", "inputs": {"value": ["1", 0], "message": "inner boom"}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    result, events = run(runtime, prompt)
    assert result.status == "error"
    # as ComfyUI: the error is the expanding node's (the one the editor has), with the inner message
    assert result.error["node_id"] == "2" and result.error["node_type"] == "TestExpandRaise"
    assert result.error["exception_message"] == "inner boom"
    # ComfyUI's field: the frames (format_tb) down to the node's own raise, in the test pack
    assert "lg_test_nodes.py" in result.error["traceback"][-1]
    assert [e for e, _ in events][-1] == "execution_error"
    assert runtime.executor.run(chain_prompt()).ok  # the engine keeps working


def test_duplicate_and_broken_expansions_fail_on_the_expanding_node(runtime):
    class Fixed:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"forceInput": True}), "target": ("STRING", {"default": "x"})}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"
        def go(self, value, target):
            return {"result": (["fixed", 0],),
                    "expand": {"fixed": {"class_type": "TestAdd", "inputs": {"a": [target, 0], "b": 1}}}}
    runtime.registry.register("TestFixedExpand", Fixed)
    duplicate = {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
                 "2": {"class_type": "TestFixedExpand", "inputs": {"value": ["1", 0], "target": "1"}},
                 "3": {"class_type": "TestFixedExpand", "inputs": {"value": ["2", 0], "target": "1"}},
                 "4": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}}}
    result = runtime.executor.run(duplicate)
    assert result.status == "error" and result.error["node_id"] == "3"
    assert "duplicate node fixed" in result.error["exception_message"]
    missing = {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
               "2": {"class_type": "TestFixedExpand", "inputs": {"value": ["1", 0], "target": "nowhere"}},
               "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    result = runtime.executor.run(missing)
    assert result.status == "error" and result.error["node_id"] == "2"
    assert "unknown node 'nowhere'" in result.error["exception_message"]
    cycle = dict(missing, **{"2": {"class_type": "TestFixedExpand", "inputs": {"value": ["1", 0], "target": "2"}}})
    result = runtime.executor.run(cycle)
    assert result.status == "error" and "cycle" in result.error["exception_message"]


def block_prompt(message="", block=True):
    return {"1": {"class_type": "TestValue", "inputs": {"value": 4}},
            "2": {"class_type": "TestBlock", "inputs": {"value": ["1", 0], "block": block, "message": message}},
            "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}},
            "4": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}


def test_blocker_without_message_skips_the_output_silently(cached_runtime):
    result, events = run(cached_runtime, block_prompt())
    assert result.ok, result.error
    assert result.outputs == {"4": {"text": ["4"]}}  # the other branch still runs
    assert calls(cached_runtime)["TestOutput"] == 1
    assert "execution_error" not in [e for e, _ in events] and result.blocked == []
    passed = cached_runtime.executor.run(block_prompt(block=False))
    assert passed.outputs["3"] == {"text": ["4"]}


def test_blocker_with_message_reports_an_execution_error_and_the_prompt_goes_on(runtime):
    result, events = run(runtime, block_prompt("stop here"))
    errors = [d for e, d in events if e == "execution_error"]
    assert len(errors) == 1
    assert errors[0]["node_id"] == "3" and errors[0]["node_type"] == "TestOutput"
    assert errors[0]["exception_message"] == "Execution Blocked: stop here"
    assert errors[0]["exception_type"] == "ExecutionBlocked"
    assert result.status == "success" and result.outputs == {"4": {"text": ["4"]}}  # as ComfyUI
    assert result.blocked == [{"node_id": "3", "message": "stop here"}]
    assert [e for e, _ in events][-1] == "execution_success"


def test_blocker_passes_through_several_nodes(runtime):
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 4}},
              "2": {"class_type": "TestBlock", "inputs": {"value": ["1", 0], "block": True, "message": "no"}},
              "3": {"class_type": "TestAdd", "inputs": {"a": ["2", 0], "b": 1}},
              "4": {"class_type": "TestAdd", "inputs": {"a": ["3", 0], "b": 1}},
              "5": {"class_type": "TestExpandChain", "inputs": {"value": ["4", 0], "length": 2}},
              "6": {"class_type": "TestOutput", "inputs": {"value": ["5", 0]}},
              "7": {"class_type": "TestOutput", "inputs": {"value": ["2", 1]}}}
    result, events = run(runtime, prompt)
    assert result.ok, result.error
    assert calls(runtime)["TestAdd"] == 0 and calls(runtime)["TestExpandChain"] == 0
    assert calls(runtime)["TestOutput"] == 0 and result.outputs == {}
    # each node that receives the blocker with its message reports it once; what it passes on is silent
    errors = [d for e, d in events if e == "execution_error"]
    assert sorted(d["node_id"] for d in errors) == ["3", "7"]
    assert all(d["exception_message"] == "Execution Blocked: no" for d in errors)
    assert {"3", "4", "5", "6", "7"} <= set(result.executed)  # "ran" by passing the blocker on
    assert not any(n.startswith("5.") for n in result.executed)  # the blocked node never expanded


def test_a_node_may_return_a_blocker_for_one_output(runtime):
    class Half:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"forceInput": True})}}
        RETURN_TYPES = ("INT", "INT")
        FUNCTION = "go"
        def go(self, value):
            return (value, ExecutionBlocker(None))
    runtime.registry.register("TestHalfBlock", Half)
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 4}},
              "2": {"class_type": "TestHalfBlock", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "TestOutput", "inputs": {"value": ["2", 1]}}}
    result = runtime.executor.run(prompt)
    assert result.ok and result.outputs == {"3": {"text": ["4"]}}


def test_blocker_returned_inside_an_expansion(runtime):
    class ExpandBlock:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"forceInput": True})}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"
        def go(self, value):
            graph = GraphBuilder()
            node = graph.node("TestBlock", value=value, block=True, message="")
            return {"result": (node.out(0),), "expand": graph.finalize()}
    runtime.registry.register("TestExpandBlock", ExpandBlock)
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 4}},
              "2": {"class_type": "TestExpandBlock", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    result = runtime.executor.run(prompt)
    assert result.ok and result.outputs == {} and calls(runtime)["TestOutput"] == 0


def test_command_line_runs_expansions_and_blockers(tmp_path):
    wf = write(tmp_path / "chain.json", chain_prompt())
    blocked = write(tmp_path / "blocked.json", block_prompt("stop here"))
    proc = main(tmp_path, "run", wf, blocked)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["3: 11", "4: 4"]
    assert "running 2.0.0.1 (expanded from 2 TestExpandChain)" in proc.stderr and "running 2.0.0.3" in proc.stderr
    assert "Execution Blocked: stop here" in proc.stderr
    assert "2 of 2 workflow(s) succeeded" in proc.stderr


def test_list_mapped_expansion_gets_one_prefix_per_call(runtime):
    prompt = {"1": {"class_type": "TestListOut", "inputs": {"count": 3}},
              "2": {"class_type": "TestExpandChain", "inputs": {"value": ["1", 0], "length": 1}},
              "3": {"class_type": "TestListIn", "inputs": {"values": ["2", 0], "scale": 1}},
              "4": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}}}
    result = runtime.executor.run(prompt)
    assert result.ok, result.error
    assert result.outputs["4"] == {"text": ["6"]}  # (0+1) + (1+1) + (2+1)
    assert {"2.0.0.1", "2.1.0.1", "2.2.0.1"} <= set(result.executed)


def test_lazy_inputs_inside_an_expansion(runtime):
    class ExpandSwitch:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"forceInput": True})}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"
        def go(self, value):
            graph = GraphBuilder()
            good = graph.node("TestAdd", a=value, b=100)
            bad = graph.node("TestRaise", value=value, message="not asked for")
            switch = graph.node("TestLazySwitch", select=True, on_true=good.out(0), on_false=bad.out(0))
            return {"result": (switch.out(0),), "expand": graph.finalize()}
    runtime.registry.register("TestExpandSwitch", ExpandSwitch)
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 5}},
              "2": {"class_type": "TestExpandSwitch", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    result = runtime.executor.run(prompt)
    assert result.ok, result.error
    assert result.outputs["3"] == {"text": ["105"]} and calls(runtime)["TestRaise"] == 0


def test_malformed_expansions_are_errors_of_the_expanding_node(runtime):
    subgraphs = {
        "bad_class": {"n": {"class_type": ["not", "a", "name"], "inputs": {}}},
        "bad_slot": {"n": {"class_type": "TestAdd", "inputs": {"a": ["1", 5], "b": 1}}},
        "not_a_dict": ["n"],
    }

    class Malformed:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"forceInput": True}), "kind": ("STRING", {"default": ""})}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"
        def go(self, value, kind):
            if kind == "bad_result_slot":
                return {"result": (["1", 3],), "expand": {}}
            return {"result": (["n", 0],), "expand": subgraphs[kind]}
    runtime.registry.register("TestMalformedExpand", Malformed)
    for kind in [*subgraphs, "bad_result_slot"]:
        prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
                  "2": {"class_type": "TestMalformedExpand", "inputs": {"value": ["1", 0], "kind": kind}},
                  "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
        result = runtime.executor.run(prompt)
        assert result.status == "error" and result.error["node_id"] == "2", (kind, result.error)
