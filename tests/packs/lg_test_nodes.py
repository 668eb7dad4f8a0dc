"""Model-free test nodes in ComfyUI's classic plugin contract.

Loaded like any custom node pack (tests copy or point at this file), so every test goes through
the real plugin path. CALLS counts executions per node class, so tests can see what ran.
"""
import asyncio
import collections
import time
import weakref

import torch

from comfy.utils import ProgressBar  # ComfyUI plugins import it from here
from comfy_api.v0_0_2 import ComfyAPI, ComfyAPISync
from comfy_execution.graph import ExecutionBlocker  # ComfyUI plugins import it from here
from comfy_execution.graph_utils import GraphBuilder

CALLS = collections.Counter()


class _Counted:
    CATEGORY = "testing"
    FUNCTION = "run"
    calls = CALLS

    def count(self):
        CALLS[type(self).__name__] += 1


class TestValue(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -1000000, "max": 1000000})}}

    RETURN_TYPES = ("INT",)

    def run(self, value):
        self.count()
        return (value,)


class TestAdd(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"forceInput": True}), "b": ("INT", {"default": 1})}}

    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("sum",)

    def run(self, a, b):
        self.count()
        return (a + b,)


class TestSampler(_Counted):
    """Shaped like KSampler: a seed and linked model/conditioning/latent inputs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("INT",), "positive": ("INT",), "negative": ("INT",), "latent": ("INT",),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            "mode": (["fast", "slow"],),
        }}

    RETURN_TYPES = ("INT",)

    def run(self, model, positive, negative, latent, seed, mode):
        self.count()
        return (model + positive + negative + latent + seed,)


class TestOutput(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True

    def run(self, value):
        self.count()
        return {"ui": {"text": [str(value)]}}


class TestSlow(_Counted):
    """Reports progress every step; sleeps `delay` seconds per step."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 10, "min": 1, "max": 100000}),
                             "delay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0})}}

    RETURN_TYPES = ("INT",)

    def run(self, steps, delay):
        self.count()
        bar = ProgressBar(steps)
        for _ in range(steps):
            time.sleep(delay)
            bar.update(1)
        return (steps,)


class TestRaise(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "message": ("STRING", {"default": "boom"})}}

    RETURN_TYPES = ("INT",)

    def run(self, value, message):
        self.count()
        raise RuntimeError(message)


class TestListOut(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3, "min": 0, "max": 100})}}

    RETURN_TYPES = ("INT", "STRING")
    OUTPUT_IS_LIST = (True, False)

    def run(self, count):
        self.count()
        return (list(range(count)), f"{count} items")


class TestListIn(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT", {"forceInput": True}), "scale": ("INT", {"default": 1})}}

    RETURN_TYPES = ("INT",)
    INPUT_IS_LIST = True

    def run(self, values, scale):
        self.count()
        return (sum(values) * scale[0],)


class TestVolatile(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    RETURN_TYPES = ("INT",)

    @classmethod
    def IS_CHANGED(cls, value):
        return float("nan")

    def run(self, value):
        self.count()
        return (value,)


class TestFingerprint(_Counted):
    """IS_CHANGED returns whatever `token` says, to show a stable fingerprint keeps the cache."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"token": ("STRING", {"default": "a"})}}

    RETURN_TYPES = ("STRING",)

    @classmethod
    def IS_CHANGED(cls, token):
        return token.upper()

    def run(self, token):
        self.count()
        return (token,)


class TestHidden(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO",
                                           "unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True

    def run(self, prompt, extra_pnginfo, unique_id):
        self.count()
        return {"ui": {"text": [f"{unique_id}|{sorted(prompt)}|{extra_pnginfo}"]}}


class TestValidated(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 10})}}

    RETURN_TYPES = ("INT",)

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        return True if value != 7 else "seven is not allowed"

    def run(self, value):
        self.count()
        return (value,)


class TestAnyType(_Counted):
    """VALIDATE_INPUTS taking input_types switches off the engine's type check for links."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT",)}}

    RETURN_TYPES = ("FLOAT",)

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        return True if input_types.get("value") in (None, "INT", "FLOAT") else f"cannot take {input_types}"

    def run(self, value):
        self.count()
        return (float(value),)


class TestTensor(_Counted):
    """Returns a large tensor, to show the cache keeps references rather than copies."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 1024, "min": 1, "max": 1 << 26})}}

    RETURN_TYPES = ("TENSOR",)
    last = []

    def run(self, size):
        self.count()
        out = torch.zeros(size)
        TestTensor.last.append(out)
        return (out,)


class TestTensorSink(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"tensor": ("TENSOR",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    seen = []

    def run(self, tensor):
        self.count()
        TestTensorSink.seen.append(tensor)
        return {"ui": {"text": [str(tensor.numel())]}}


class TestLazySwitch(_Counted):
    """Evaluates only the branch it selects (lazy inputs with check_lazy_status)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"select": ("BOOLEAN", {"default": True}),
                             "on_true": ("*", {"lazy": True}), "on_false": ("*", {"lazy": True})}}

    RETURN_TYPES = ("*",)
    asked = []

    def check_lazy_status(self, select, on_true=None, on_false=None):
        TestLazySwitch.asked.append((select, on_true, on_false))
        return ["on_true"] if select else ["on_false"]

    def run(self, select, on_true=None, on_false=None):
        self.count()
        return (on_true if select else on_false,)


class TestExpandChain(_Counted):
    """Expands into `length` TestAdd nodes in a chain (b = 1, 2, ...): value + length*(length+1)/2."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}),
                             "length": ("INT", {"default": 3, "min": 1, "max": 100})}}

    RETURN_TYPES = ("INT",)

    def run(self, value, length):
        self.count()
        graph = GraphBuilder()
        out = value
        for i in range(length):
            out = graph.node("TestAdd", a=out, b=i + 1).out(0)
        return {"result": (out,), "expand": graph.finalize()}


class TestExpandLink(_Counted):
    """Expands into TestAdd(a=<output 0 of prompt node `source_id`>, b=add): links out of the subgraph."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source_id": ("STRING", {"default": "1"}), "add": ("INT", {"default": 1})}}

    RETURN_TYPES = ("INT",)

    def run(self, source_id, add):
        self.count()
        graph = GraphBuilder()
        node = graph.node("TestAdd", a=[source_id, 0], b=add)
        return {"result": (node.out(0),), "expand": graph.finalize()}


class TestExpandNested(_Counted):
    """depth 0 returns value; otherwise expands into TestExpandNested(depth-1) + TestAdd(b=10)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}),
                             "depth": ("INT", {"default": 2, "min": 0, "max": 20})}}

    RETURN_TYPES = ("INT",)

    def run(self, value, depth):
        self.count()
        if depth == 0:
            return (value,)
        graph = GraphBuilder()
        inner = graph.node("TestExpandNested", value=value, depth=depth - 1)
        add = graph.node("TestAdd", a=inner.out(0), b=10)
        return {"result": (add.out(0),), "expand": graph.finalize()}


class TestExpandOutput(_Counted):
    """Expands into a TestOutput (an output node inside the subgraph) and passes value through."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}

    RETURN_TYPES = ("INT",)

    def run(self, value):
        self.count()
        graph = GraphBuilder()
        graph.node("TestOutput", id="shown", value=value * 100)
        return {"result": (value,), "expand": graph.finalize()}


class TestExpandRaise(_Counted):
    """Expands into a TestRaise: the error comes from the expanded node."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}),
                             "message": ("STRING", {"default": "inner boom"})}}

    RETURN_TYPES = ("INT",)

    def run(self, value, message):
        self.count()
        graph = GraphBuilder()
        node = graph.node("TestRaise", id="raiser", value=value, message=message)
        return {"result": (node.out(0),), "expand": graph.finalize()}


class TestBlock(_Counted):
    """Passes value on, or returns an ExecutionBlocker (message "" means a silent one)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "block": ("BOOLEAN", {"default": True}),
                             "message": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("INT", "INT")

    def run(self, value, block, message):
        self.count()
        if block:
            return ExecutionBlocker(message or None)
        return (value, value)


# -- async nodes, as ComfyUI runs them -------------------------------------------------------

_EVENTS: dict = {}


def _event(name: str) -> asyncio.Event:
    """One event per name per running loop (each prompt runs on its own loop)."""
    return _EVENTS.setdefault((id(asyncio.get_running_loop()), name), asyncio.Event())


class TestAsyncRendezvous(_Counted):
    """Announces `name`, then waits up to `timeout` s for `partner` to announce itself: two of
    these finish only if they run at the same time."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "a"}), "partner": ("STRING", {"default": "b"}),
                             "timeout": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 60.0})}}

    RETURN_TYPES = ("STRING",)

    async def run(self, name, partner, timeout):
        self.count()
        _event(name).set()
        await asyncio.wait_for(_event(partner).wait(), timeout)
        return (f"{name} met {partner}",)


class TestAsyncRaise(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"message": ("STRING", {"default": "async boom"}),
                             "delay": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 10.0})}}

    RETURN_TYPES = ("INT",)

    async def run(self, message, delay):
        self.count()
        await asyncio.sleep(delay)
        raise RuntimeError(message)


class TestAsyncHang(_Counted):
    """Sleeps `seconds`; records in `cancelled` when the engine cancels it."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("FLOAT", {"default": 30.0, "min": 0.0, "max": 600.0})}}

    RETURN_TYPES = ("INT",)
    cancelled = []

    async def run(self, seconds):
        self.count()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            TestAsyncHang.cancelled.append(seconds)
            raise
        return (1,)


class TestAsyncChecks(_Counted):
    """Async VALIDATE_INPUTS (refuses 7), IS_CHANGED (the token) and check_lazy_status."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -100, "max": 100}),
                             "token": ("STRING", {"default": "t"}), "select": ("BOOLEAN", {"default": True}),
                             "on_true": ("*", {"lazy": True}), "on_false": ("*", {"lazy": True})}}

    RETURN_TYPES = ("*",)

    @classmethod
    async def VALIDATE_INPUTS(cls, value):
        await asyncio.sleep(0)
        return True if value != 7 else "seven, checked asynchronously"

    @classmethod
    async def IS_CHANGED(cls, token):
        await asyncio.sleep(0)
        return float("nan") if token == "always" else token

    async def check_lazy_status(self, select, on_true=None, on_false=None, **_):
        await asyncio.sleep(0)
        return ["on_true"] if select else ["on_false"]

    def run(self, value, token, select, on_true=None, on_false=None):
        self.count()
        return ((on_true if select else on_false) + value,)


class TestApiProgress(_Counted):
    """Reports progress with ComfyAPI.execution.set_progress (async) or ComfyAPISync (sync)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 2, "min": 1, "max": 100}),
                             "sync": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("INT",)

    async def run(self, steps, sync):
        self.count()
        for step in range(1, steps + 1):
            if sync:
                ComfyAPISync().execution.set_progress(value=step, max_value=steps)
            else:
                await ComfyAPI().execution.set_progress(value=step, max_value=steps)
        return (steps,)


# -- engine contract details -----------------------------------------------------------------

class TestThing(_Counted):
    """Takes a plugin type ("THING") and reports what it received."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"thing": ("THING",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True

    def run(self, thing):
        self.count()
        return {"ui": {"text": [f"{type(thing).__name__}:{thing!r}"]}}


class TestRawLink(_Counted):
    """A rawLink input receives the link itself; the node still runs after its source."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("INT", {"rawLink": True})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True

    def run(self, source):
        self.count()
        return {"ui": {"text": [repr(source), str(sorted(CALLS.items()))]}}


class TestBadIsChanged(_Counted):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    RETURN_TYPES = ("INT",)

    @classmethod
    def IS_CHANGED(cls, value):
        raise ValueError(f"cannot fingerprint {value}")

    def run(self, value):
        self.count()
        return (value,)


class TestInstances(_Counted):
    """Counts how many instances of it are alive (the engine keeps one per node id)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    RETURN_TYPES = ("INT",)
    alive = weakref.WeakSet()

    def __init__(self):
        TestInstances.alive.add(self)
        self.runs = 0

    def run(self, value):
        self.count()
        self.runs += 1
        return (self.runs,)


class TestExpandCycle(_Counted):
    """Expands into two TestAdd nodes linked to each other; `display` overrides the display id."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "display": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("INT",)

    def run(self, value, display):
        self.count()
        graph = GraphBuilder()
        first = graph.node("TestAdd", b=1)
        second = graph.node("TestAdd", a=first.out(0), b=value)
        first.set_input("a", second.out(0))
        if display:
            first.set_override_display_id(display)
            second.set_override_display_id(display)
        return {"result": (second.out(0),), "expand": graph.finalize()}


NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in [
    TestLazySwitch, TestExpandChain, TestExpandLink, TestExpandNested, TestExpandOutput, TestExpandRaise,
    TestBlock,
    TestValue, TestAdd, TestSampler, TestOutput, TestSlow, TestRaise, TestListOut, TestListIn,
    TestVolatile, TestFingerprint, TestHidden, TestValidated, TestAnyType, TestTensor, TestTensorSink,
    TestAsyncRendezvous, TestAsyncRaise, TestAsyncHang, TestAsyncChecks, TestApiProgress,
    TestThing, TestRawLink, TestBadIsChanged, TestInstances, TestExpandCycle,
]}
NODE_DISPLAY_NAME_MAPPINGS = {"TestValue": "Test Value", "TestOutput": "Test Output"}
