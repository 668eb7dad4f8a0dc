"""Execution through the engine's public API: order, list mapping, errors, interrupts, events."""
import threading
import time

import pytest

from graph.errors import PromptError
from tests.conftest import calls


def chain():
    return {
        "1": {"class_type": "TestValue", "inputs": {"value": 2}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 3}},
        "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}},
    }


def test_runs_in_dependency_order_and_reports_ui(runtime):
    events = []
    result = runtime.executor.run(chain(), prompt_id="p1", emit=lambda e, d: events.append((e, d)))
    assert result.ok and result.executed == ["1", "2", "3"]
    assert result.outputs == {"3": {"text": ["5"]}}
    names = [e for e, _ in events]
    assert names[0] == "execution_start" and names[1] == "execution_cached" and names[-1] == "execution_success"
    assert [d["node"] for e, d in events if e == "executing"] == ["1", "2", "3"]
    executed = [d for e, d in events if e == "executed"]
    assert executed == [{"node": "3", "display_node": "3", "output": {"text": ["5"]}, "prompt_id": "p1"}]


def test_only_nodes_that_outputs_need_run_and_each_once(runtime):
    prompt = chain()
    prompt["9"] = {"class_type": "TestValue", "inputs": {"value": 99}}  # feeds no output
    prompt["4"] = {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}  # second consumer of 1
    result = runtime.executor.run(prompt)
    assert sorted(result.executed) == ["1", "2", "3", "4"]
    assert calls(runtime)["TestValue"] == 1


def test_partial_execution_targets_run_only_that_output(runtime):
    prompt = chain()
    prompt["4"] = {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}
    result = runtime.executor.run(prompt, targets=["4"])
    assert sorted(result.executed) == ["1", "4"]


def test_output_is_list_fans_out_and_input_is_list_gathers(runtime):
    prompt = {
        "1": {"class_type": "TestListOut", "inputs": {"count": 3}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 10}},
        "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "TestListIn", "inputs": {"values": ["1", 0], "scale": 2}},
        "5": {"class_type": "TestOutput", "inputs": {"value": ["4", 0]}},
        "6": {"class_type": "TestOutput", "inputs": {"value": ["1", 1]}},
    }
    result = runtime.executor.run(prompt)
    assert result.outputs["3"] == {"text": ["10", "11", "12"]}  # TestAdd and TestOutput called 3 times
    assert result.outputs["5"] == {"text": ["6"]}  # (0+1+2)*2 in one call
    assert result.outputs["6"] == {"text": ["3 items"]}
    assert calls(runtime)["TestAdd"] == 3 and calls(runtime)["TestListIn"] == 1


def test_shorter_input_lists_repeat_their_last_item(runtime):
    prompt = {
        "1": {"class_type": "TestListOut", "inputs": {"count": 2}},
        "2": {"class_type": "TestListOut", "inputs": {"count": 4}},
        "3": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}},
    }
    assert runtime.executor.run(prompt).outputs["4"] == {"text": ["0", "2", "3", "4"]}


def test_hidden_inputs_receive_prompt_pnginfo_and_id(runtime):
    prompt = {"7": {"class_type": "TestHidden", "inputs": {}}}
    result = runtime.executor.run(prompt, extra_data={"extra_pnginfo": {"workflow": {"x": 1}}})
    assert result.outputs["7"]["text"] == ["7|['7']|{'workflow': {'x': 1}}"]


def test_node_exception_is_a_structured_error_and_engine_keeps_working(runtime):
    prompt = chain()
    prompt["4"] = {"class_type": "TestRaise", "inputs": {"value": ["2", 0], "message": "kaput"}}
    prompt["5"] = {"class_type": "TestOutput", "inputs": {"value": ["4", 0]}}
    events = []
    result = runtime.executor.run(prompt, prompt_id="bad", emit=lambda e, d: events.append((e, d)))
    assert result.status == "error"
    err = result.error
    assert err["node_id"] == "4" and err["node_type"] == "TestRaise"
    assert err["exception_message"] == "kaput" and err["exception_type"] == "RuntimeError"  # ComfyUI drops "builtins."
    # ComfyUI's field: the frames (format_tb) down to the node's own raise, in the test pack
    assert "lg_test_nodes.py" in err["traceback"][-1]
    assert err["prompt_id"] == "bad" and set(err["executed"]) <= {"1", "2", "3"}
    assert err["current_inputs"]["message"] == ["'kaput'"]
    assert ("execution_error", err) in events
    assert runtime.executor.run(chain()).ok


def test_wrong_number_of_returned_values_is_an_error_naming_the_node(runtime):
    class Bad:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}
        RETURN_TYPES = ("INT", "INT")
        FUNCTION = "go"
        def go(self):
            return (1,)
    runtime.registry.register("BadReturn", Bad)
    prompt = {"1": {"class_type": "BadReturn", "inputs": {}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 1]}}}
    result = runtime.executor.run(prompt)
    assert result.status == "error" and "declares 2 output(s)" in result.error["exception_message"]


def test_interrupt_inside_a_node_stops_within_a_step(runtime):
    prompt = {"1": {"class_type": "TestSlow", "inputs": {"steps": 1000, "delay": 0.01}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    events = []
    timer = threading.Timer(0.2, runtime.executor.interrupt)
    timer.start()
    started = time.perf_counter()
    result = runtime.executor.run(prompt, emit=lambda e, d: events.append((e, d)))
    assert time.perf_counter() - started < 1.0
    assert result.status == "interrupted"
    progress = [d for e, d in events if e == "progress"]
    assert progress and progress[0]["max"] == 1000 and progress[-1]["value"] < 1000
    interrupted = [d for e, d in events if e == "execution_interrupted"]
    assert interrupted[0]["node_id"] == "1" and interrupted[0]["node_type"] == "TestSlow"
    assert runtime.executor.run(chain()).ok  # the flag is cleared for the next prompt


def test_interrupt_is_checked_between_nodes(runtime):
    class Sleep:  # reports no progress, so only the check between nodes can stop the prompt
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}
        RETURN_TYPES = ("INT",)
        FUNCTION = "go"
        def go(self):
            time.sleep(0.3)
            return (1,)
    runtime.registry.register("Sleep", Sleep)
    prompt = {"1": {"class_type": "Sleep", "inputs": {}},
              "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    threading.Timer(0.1, runtime.executor.interrupt).start()
    result = runtime.executor.run(prompt)
    assert result.status == "interrupted" and result.executed == ["1"]
    assert calls(runtime)["TestAdd"] == 0


def test_invalid_prompt_raises_prompt_error_and_runs_nothing(runtime):
    prompt = chain()
    prompt["1"]["inputs"]["value"] = "many"
    with pytest.raises(PromptError) as info:
        runtime.executor.run(prompt)
    assert info.value.error["type"] == "prompt_outputs_failed_validation"
    assert calls(runtime)["TestValue"] == 0


def test_long_chain_runs_without_recursion_limits(runtime):
    prompt = {"0": {"class_type": "TestValue", "inputs": {"value": 0}}}
    for i in range(1, 3000):
        prompt[str(i)] = {"class_type": "TestAdd", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "TestOutput", "inputs": {"value": ["2999", 0]}}
    assert runtime.executor.run(prompt).outputs["out"] == {"text": ["2999"]}


def lazy_prompt(select: bool) -> dict:
    return {
        "1": {"class_type": "TestValue", "inputs": {"value": 5}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 100}},
        "3": {"class_type": "TestRaise", "inputs": {"value": ["1", 0], "message": "the unselected branch ran"}},
        "4": {"class_type": "TestLazySwitch", "inputs": {"select": select, "on_true": ["2", 0], "on_false": ["3", 0]}},
        "5": {"class_type": "TestOutput", "inputs": {"value": ["4", 0]}},
    }


def test_lazy_inputs_evaluate_only_what_the_node_asks_for(cached_runtime):
    rt = cached_runtime
    switch = rt.registry.get("TestLazySwitch").cls
    switch.asked.clear()
    result = rt.executor.run(lazy_prompt(True))
    assert result.ok, result.error
    assert result.outputs["5"] == {"text": ["105"]}
    assert calls(rt)["TestRaise"] == 0  # the other branch never ran
    assert switch.asked[0] == (True, None, None) and switch.asked[-1] == (True, 105, None)
    assert result.executed == ["1", "2", "4", "5"]
    flipped = rt.executor.run(lazy_prompt(False))
    assert flipped.status == "error" and flipped.error["node_id"] == "3"  # now the raising branch is asked for
