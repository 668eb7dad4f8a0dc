"""Engine details that ComfyUI's workflows and plugins rely on, each as ComfyUI behaves:
progress reporting (comfy.utils.ProgressBar, comfy_api's set_progress, progress_state), the type
names of comfy.comfy_types, GraphBuilder's live node dicts, literals for plugin types, rawLink
inputs, dependency cycles made by expansion, IS_CHANGED failures, and node instances."""
import logging

import pytest

from comfy.comfy_types import IO, ComfyNodeABC, InputTypeDict
from comfy_execution.graph import DynamicPrompt
from comfy_execution.graph_utils import GraphBuilder
from graph.errors import PromptError
from tests.conftest import calls


def output(node_id: str, source: str, slot: int = 0) -> dict:
    return {node_id: {"class_type": "TestOutput", "inputs": {"value": [source, slot]}}}


def run_with_events(rt, prompt, **kw):
    events = []
    result = rt.executor.run(prompt, emit=lambda e, d: events.append((e, d)), **kw)
    return result, events


# -- progress ---------------------------------------------------------------------------------

def test_progress_bar_reports_steps_and_the_nodes_progress_state(runtime):
    prompt = {"1": {"class_type": "TestSlow", "inputs": {"steps": 3, "delay": 0.0}}, **output("2", "1")}
    result, events = run_with_events(runtime, prompt, prompt_id="p")
    assert result.ok
    progress = [(d["node"], d["value"], d["max"], d["prompt_id"]) for e, d in events if e == "progress"]
    assert progress == [("1", 1, 3, "p"), ("1", 2, 3, "p"), ("1", 3, 3, "p")]
    states = [d for e, d in events if e == "progress_state"]
    assert all(d["prompt_id"] == "p" for d in states)
    node1 = [d["nodes"]["1"] for d in states if "1" in d["nodes"]]
    assert [(n["state"], n["value"], n["max"]) for n in node1] == [
        ("running", 0.0, 1.0), ("running", 1, 3), ("running", 2, 3), ("running", 3, 3), ("finished", 3, 3),
        ("finished", 3, 3), ("finished", 3, 3)]  # and as node 2 starts and finishes: every started node is listed
    assert node1[0] == {"value": 0.0, "max": 1.0, "state": "running", "node_id": "1", "prompt_id": "p",
                        "display_node_id": "1", "parent_node_id": None, "real_node_id": "1"}
    assert states[-1]["nodes"]["2"]["state"] == "finished"


def test_progress_state_names_the_node_an_expanded_node_is_shown_as(runtime):
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
              "2": {"class_type": "TestExpandChain", "inputs": {"value": ["1", 0], "length": 1}},
              **output("3", "2")}
    _, events = run_with_events(runtime, prompt)
    inner = [d["nodes"]["2.0.0.1"] for e, d in events if e == "progress_state" and "2.0.0.1" in d["nodes"]]
    assert inner and all(n["display_node_id"] == "2" and n["parent_node_id"] == "2" and n["real_node_id"] == "2"
                         for n in inner)


def test_a_replaced_progress_bar_hook_sees_every_update(runtime):
    import comfy.utils

    seen = []
    original = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, prompt_id=None, node_id=None):
        seen.append((value, total, node_id))
        original(value, total, preview, prompt_id=prompt_id, node_id=node_id)

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        prompt = {"1": {"class_type": "TestSlow", "inputs": {"steps": 2, "delay": 0.0}}, **output("2", "1")}
        result, events = run_with_events(runtime, prompt)
    finally:
        comfy.utils.set_progress_bar_global_hook(original)
    assert result.ok and seen == [(1, 2, None), (2, 2, None)]
    assert [d["value"] for e, d in events if e == "progress"] == [1, 2]  # and the engine still got them


def test_progress_bar_with_an_explicit_node_and_clamping(runtime):
    from comfy.utils import ProgressBar

    class Reporter:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}, "hidden": {"unique_id": "UNIQUE_ID"}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"

        def go(self, unique_id):
            bar = ProgressBar(4, node_id="elsewhere")
            bar.update(3)
            bar.update(3)  # clamped to the total, as ComfyUI does
            ProgressBar(2, node_id=unique_id).update_absolute(1)
            return (bar.current,)

    runtime.registry.register("LGReporter", Reporter)
    result, events = run_with_events(runtime, {"1": {"class_type": "LGReporter", "inputs": {}}, **output("2", "1")})
    assert result.outputs["2"] == {"text": ["4"]}
    assert [(d["node"], d["value"], d["max"]) for e, d in events if e == "progress"] == [
        ("elsewhere", 3, 4), ("elsewhere", 4, 4), ("1", 1, 2)]


@pytest.mark.parametrize("sync", [False, True])
def test_comfy_api_set_progress_updates_the_progress_state_only(runtime, sync):
    prompt = {"1": {"class_type": "TestApiProgress", "inputs": {"steps": 2, "sync": sync}}, **output("2", "1")}
    result, events = run_with_events(runtime, prompt)
    assert result.ok
    assert [e for e, _ in events if e == "progress"] == []  # as ComfyUI: no legacy progress event
    values = [(d["nodes"]["1"]["value"], d["nodes"]["1"]["max"]) for e, d in events
              if e == "progress_state" and d["nodes"].get("1", {}).get("state") == "running"]
    assert values == [(0.0, 1.0), (1, 2), (2, 2)]


def test_set_progress_outside_a_node_needs_a_node_id():
    from comfy_api.latest import ComfyAPISync

    with pytest.raises(ValueError, match="node_id must be provided"):
        ComfyAPISync().execution.set_progress(value=1, max_value=2)


# -- types --------------------------------------------------------------------------------------

def test_io_types_link_as_in_comfyui(runtime):
    class Sink:
        @classmethod
        def INPUT_TYPES(cls) -> InputTypeDict:
            return {"required": {"any": (IO.ANY, {}), "number": (IO.NUMBER, {"forceInput": True})}}
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "go"

        def go(self, any, number):
            return {"ui": {"text": [f"{any}/{number}"]}}

    runtime.registry.register("LGIOSink", Sink)
    tensor = {"1": {"class_type": "TestTensor", "inputs": {"size": 2}}}
    ok = {**tensor, "2": {"class_type": "TestValue", "inputs": {"value": 4}},
          "3": {"class_type": "LGIOSink", "inputs": {"any": ["1", 0], "number": ["2", 0]}}}
    assert runtime.executor.run(ok).ok  # a TENSOR into IO.ANY, an INT into IO.NUMBER ("FLOAT,INT")
    bad = {**tensor, "3": {"class_type": "LGIOSink", "inputs": {"any": ["1", 0], "number": ["1", 0]}}}
    with pytest.raises(PromptError) as info:
        runtime.executor.run(bad)
    assert info.value.node_errors["3"]["errors"][0]["type"] == "return_type_mismatch"
    assert (IO.ANY != "MODEL") is False and (IO.NUMBER != "INT") is False and (IO.NUMBER != "STRING") is True


def test_comfy_node_abc_needs_input_types():
    class Incomplete(ComfyNodeABC):
        RETURN_TYPES = ()

    with pytest.raises(TypeError):
        Incomplete()


# -- GraphBuilder and the dynamic prompt --------------------------------------------------------

def test_finalized_nodes_are_the_live_input_dicts():
    graph = GraphBuilder(prefix="g.")
    save = graph.node("SaveImage", images=["x", 0])
    prompt = graph.finalize()
    save.inputs["filename_prefix"] = "edited after finalize"  # as ComfyUI's own test client does
    assert prompt["g.1"]["inputs"] == {"images": ["x", 0], "filename_prefix": "edited after finalize"}


def test_dynamic_prompt_answers_for_expanded_nodes():
    dyn = DynamicPrompt({"1": {"class_type": "A", "inputs": {}}})
    dyn.add_ephemeral_node("1.0.0.1", {"class_type": "B", "inputs": {}}, "1", "1")
    dyn.add_ephemeral_node("1.0.0.1.0.0.1", {"class_type": "C", "inputs": {}}, "1.0.0.1", "shown")
    assert dyn.get_node("1.0.0.1.0.0.1")["class_type"] == "C" and dyn.has_node("1.0.0.1")
    assert dyn.get_real_node_id("1.0.0.1.0.0.1") == "1" and dyn.get_parent_node_id("1.0.0.1.0.0.1") == "1.0.0.1"
    assert dyn.get_display_node_id("1.0.0.1.0.0.1") == "shown" and dyn.get_display_node_id("1.0.0.1") == "1"
    assert dyn.all_node_ids() == {"1", "1.0.0.1", "1.0.0.1.0.0.1"}


# -- inputs ---------------------------------------------------------------------------------------

def test_a_literal_for_a_plugin_type_reaches_the_node_unchanged(runtime):
    for literal, shown in ((3, "int:3"), ("text", "str:'text'"), (True, "bool:True"),
                           ({"__value__": [1, 2]}, "list:[1, 2]")):
        result = runtime.executor.run({"1": {"class_type": "TestThing", "inputs": {"thing": literal}}})
        assert result.outputs["1"] == {"text": [shown]}, literal


def test_a_raw_link_input_receives_the_link_after_its_source_ran(runtime):
    prompt = {"7": {"class_type": "TestValue", "inputs": {"value": 3}},
              "8": {"class_type": "TestRawLink", "inputs": {"source": ["7", 0]}}}
    result = runtime.executor.run(prompt)
    assert result.executed == ["7", "8"]
    link, counted = result.outputs["8"]["text"]
    assert link == "['7', 0]" and "('TestValue', 1)" in counted  # the source ran first


def test_hidden_inputs_with_other_kinds_keep_their_given_value(runtime):
    class Hidden:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}, "hidden": {"extra": ("*",), "unique_id": "UNIQUE_ID"}}
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "go"

        def go(self, unique_id, extra=None):
            return {"ui": {"text": [f"{unique_id}:{extra}"]}}

    runtime.registry.register("LGHiddenGiven", Hidden)
    given = runtime.executor.run({"5": {"class_type": "LGHiddenGiven", "inputs": {"extra": 42}}})
    assert given.outputs["5"] == {"text": ["5:42"]}  # as ComfyUI's for-loop nodes pass values


# -- cycles, IS_CHANGED, instances ----------------------------------------------------------------

@pytest.mark.parametrize("display, blamed", [("", "2"), ("1", "1")])
def test_a_cycle_made_by_expansion_is_blamed_on_the_displayed_node(runtime, display, blamed):
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
              "2": {"class_type": "TestExpandCycle", "inputs": {"value": ["1", 0], "display": display}},
              **output("3", "2")}
    result = runtime.executor.run(prompt)
    assert result.status == "error"
    assert result.error["node_id"] == blamed and result.error["exception_type"] == "graph.DependencyCycleError"
    assert result.error["exception_message"] == "Dependency cycle detected"
    assert calls(runtime)["TestAdd"] == 0


def test_an_is_changed_exception_is_logged_with_the_node_and_the_node_runs(runtime, caplog):
    prompt = {"4": {"class_type": "TestBadIsChanged", "inputs": {"value": 9}}, **output("5", "4")}
    with caplog.at_level(logging.WARNING, logger="graph.executor"):
        assert runtime.executor.run(prompt).ok
        assert "4" in runtime.executor.run(prompt).executed  # a failing IS_CHANGED means "always run"
    logged = [r.getMessage() for r in caplog.records if "IS_CHANGED" in r.getMessage()]
    assert len(logged) == 2 and "node 4 (TestBadIsChanged)" in logged[0] and "cannot fingerprint 9" in logged[0]


def test_node_instances_live_while_their_node_is_in_the_prompt(runtime):
    import gc

    alive = runtime.registry.get("TestInstances").cls.alive

    def prompt(ids, value=0):
        nodes = {i: {"class_type": "TestInstances", "inputs": {"value": value + int(i)}} for i in ids}
        return {**nodes, **{f"out{i}": output(f"out{i}", i)[f"out{i}"] for i in ids}}

    runtime.executor.run(prompt(["1", "2", "3"]))
    again = runtime.executor.run(prompt(["1", "2", "3"], value=10))  # new inputs, the same node ids
    assert again.outputs["out1"] == {"text": ["2"]}  # the same instance ran twice, as in ComfyUI
    runtime.executor.run(prompt(["7"]))
    gc.collect()
    assert len(alive) == 1  # instances of nodes gone from the prompt were dropped


def test_the_executing_context_names_the_running_node(runtime):
    from comfy_execution.utils import get_executing_context

    class Where:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "go"

        def go(self):
            ctx = get_executing_context()
            return {"ui": {"text": [f"{ctx.prompt_id}/{ctx.node_id}"]}}

    runtime.registry.register("LGWhere", Where)
    result = runtime.executor.run({"12": {"class_type": "LGWhere", "inputs": {}}}, prompt_id="p9")
    assert result.outputs["12"] == {"text": ["p9/12"]}
    assert get_executing_context() is None  # outside any node
