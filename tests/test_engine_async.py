"""Async nodes, as ComfyUI runs them: an `async def` FUNCTION, VALIDATE_INPUTS, IS_CHANGED or
check_lazy_status is awaited; independent async nodes run at the same time; their errors and
timeouts are node errors; async work still running when the prompt fails is cancelled."""
import threading
import time

import pytest

from graph.errors import PromptError
from tests.conftest import calls


def output(node_id: str, source: str) -> dict:
    return {node_id: {"class_type": "TestOutput", "inputs": {"value": [source, 0]}}}


def rendezvous(name: str, partner: str, timeout: float = 10.0) -> dict:
    return {"class_type": "TestAsyncRendezvous", "inputs": {"name": name, "partner": partner, "timeout": timeout}}


def test_independent_async_nodes_run_at_the_same_time(cached_runtime):
    # each waits for the other to have started: run one after the other, the first would time out
    prompt = {"1": rendezvous("a", "b"), "2": rendezvous("b", "a"), **output("3", "1"), **output("4", "2")}
    started = time.perf_counter()
    result = cached_runtime.executor.run(prompt)
    assert result.ok, result.error
    assert result.outputs == {"3": {"text": ["a met b"]}, "4": {"text": ["b met a"]}}
    assert time.perf_counter() - started < 10  # no rendezvous timed out


def test_async_nodes_that_never_meet_time_out_as_a_node_error(runtime):
    prompt = {"1": rendezvous("lonely", "nobody", timeout=0.2), **output("2", "1")}
    result = runtime.executor.run(prompt)
    assert result.status == "error" and result.error["node_id"] == "1"
    assert result.error["exception_type"] == "TimeoutError"
    assert result.error["node_type"] == "TestAsyncRendezvous"


def test_async_exception_is_reported_on_its_node(runtime):
    prompt = {"1": {"class_type": "TestAsyncRaise", "inputs": {"message": "async kaput", "delay": 0.05}},
              **output("2", "1")}
    events = []
    result = runtime.executor.run(prompt, emit=lambda e, d: events.append((e, d)))
    assert result.status == "error"
    assert result.error["node_id"] == "1" and result.error["exception_message"] == "async kaput"
    # ComfyUI's traceback field: the frames (format_tb), down to the node's own raise
    assert "lg_test_nodes.py" in result.error["traceback"][-1] and "raise" in result.error["traceback"][-1]
    assert ("execution_error", result.error) in events
    assert runtime.executor.run({"1": {"class_type": "TestValue", "inputs": {"value": 1}}, **output("2", "1")}).ok


def test_a_failure_cancels_async_work_still_running(runtime):
    hang = runtime.registry.get("TestAsyncHang").cls
    hang.cancelled.clear()
    prompt = {"1": {"class_type": "TestAsyncHang", "inputs": {"seconds": 30.0}}, **output("2", "1"),
              "3": {"class_type": "TestValue", "inputs": {"value": 1}},
              "4": {"class_type": "TestRaise", "inputs": {"value": ["3", 0], "message": "sync kaput"}},
              **output("5", "4")}
    started = time.perf_counter()
    result = runtime.executor.run(prompt)
    assert result.status == "error" and result.error["node_id"] == "4"
    assert time.perf_counter() - started < 20  # did not wait for the 30 s sleep
    assert hang.cancelled == [30.0]


def test_async_validate_inputs_is_awaited(runtime):
    def prompt(value):
        return {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
                "2": {"class_type": "TestAsyncChecks", "inputs": {"value": value, "token": "t", "select": True,
                                                                  "on_true": ["1", 0], "on_false": ["1", 0]}},
                **output("3", "2")}
    with pytest.raises(PromptError) as info:
        runtime.executor.run(prompt(7))
    assert "seven, checked asynchronously" in info.value.node_errors["2"]["errors"][0]["details"]
    assert runtime.executor.run(prompt(3)).outputs["3"] == {"text": ["4"]}


def test_async_check_lazy_status_and_is_changed_are_awaited(cached_runtime):
    rt = cached_runtime
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 10}},
              "2": {"class_type": "TestRaise", "inputs": {"value": ["1", 0], "message": "asked for the wrong branch"}},
              "3": {"class_type": "TestAsyncChecks", "inputs": {"value": 5, "token": "t", "select": True,
                                                                "on_true": ["1", 0], "on_false": ["2", 0]}},
              **output("4", "3")}
    first = rt.executor.run(prompt)
    assert first.ok, first.error
    assert first.outputs["4"] == {"text": ["15"]} and calls(rt)["TestRaise"] == 0
    again = rt.executor.run(prompt)  # IS_CHANGED returned the same token: nothing runs again
    assert again.executed == ([] if rt.policy != "none" else ["1", "3", "4"])
    prompt["3"]["inputs"]["token"] = "always"  # NaN from the awaited IS_CHANGED: it always runs
    rt.executor.run(prompt)
    assert "3" in rt.executor.run(prompt).executed


def test_interrupt_while_async_work_runs_cancels_it(runtime):
    hang = runtime.registry.get("TestAsyncHang").cls
    hang.cancelled.clear()
    prompt = {"1": {"class_type": "TestSlow", "inputs": {"steps": 1000, "delay": 0.01}},
              "2": {"class_type": "TestAsyncHang", "inputs": {"seconds": 30.0}},
              **output("3", "1"), **output("4", "2")}
    threading.Timer(0.3, runtime.executor.interrupt).start()
    started = time.perf_counter()
    result = runtime.executor.run(prompt)
    assert result.status == "interrupted" and time.perf_counter() - started < 10
    assert hang.cancelled == [30.0]
