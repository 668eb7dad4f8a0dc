"""ComfyUI's V3 node schema (comfy_api.latest): packs that export comfy_entrypoint load, are listed
in /object_info exactly as ComfyUI lists them, and run.

tests/packs/lg_v3_nodes is a pack of our own that also loads in ComfyUI; cg-use-everywhere
(../shared/packs) is a published V3 pack. tests/data/object_info_v3_packs.json holds ComfyUI's
/object_info entries for both (how it was made is in the file).
"""
import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

import torch

from app.args import parse_args
from app.runtime import create_runtime
from graph.errors import PromptError
from tests.conftest import PACK
from tests.node_helpers import register_constant
from tests.paths import SHARED
from tests.server_helpers import LiveServer, get_json, queue, run, wait_history

PACKS = Path(__file__).parent / "packs"
USE_EVERYWHERE = SHARED / "packs" / "cg-use-everywhere"
COMFY = json.loads((Path(__file__).parent / "data" / "object_info_v3_packs.json").read_text())["nodes"]
USE_EVERYWHERE_NODES = {"Anything Everywhere", "Anything Everywhere3", "Anything Everywhere?", "Combo Clone",
                        "Prompts Everywhere", "Seed Everywhere", "Simple String"}


def install_packs(base: Path) -> Path:
    custom = base / "custom_nodes"
    custom.mkdir(parents=True, exist_ok=True)
    shutil.copy(PACK, custom / PACK.name)
    shutil.copytree(PACKS / "lg_v3_nodes", custom / "lg_v3_nodes")
    (custom / "cg-use-everywhere").symlink_to(USE_EVERYWHERE)  # run from ../shared, never copied
    return base


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    base = install_packs(tmp_path_factory.mktemp("v3"))
    runtime = create_runtime(parse_args(["--base-directory", str(base)]), log=lambda _msg: None)
    assert all(r.ok for r in runtime.packs), [(r.name, r.error) for r in runtime.packs if not r.ok]
    return runtime


def pack_calls(rt) -> dict:
    return sys.modules[rt.registry.get("LGV3Arith").cls.__module__].CALLS


def execute(rt, prompt):
    result = rt.executor.run(copy.deepcopy(prompt))
    assert result.ok, result.error
    return result


def show(value_link, label=""):
    return {"class_type": "LGV3Show", "inputs": {"value": value_link, "label": label}}


def test_v3_packs_load_with_every_node_comfyui_lists(rt):
    assert USE_EVERYWHERE_NODES <= set(rt.registry.names())
    by_pack = {r.name: r.nodes for r in rt.packs}
    assert set(by_pack["cg-use-everywhere"]) == USE_EVERYWHERE_NODES  # ComfyUI lists 7
    assert set(by_pack["lg_v3_nodes"]) == {k for k in COMFY if k.startswith("LGV3")}


def test_object_info_of_v3_nodes_is_exactly_comfyuis(rt):
    described = rt.registry.describe_all()
    for name, theirs in COMFY.items():
        # json text, so key order and tuple/list shapes count as they do on the wire
        assert json.dumps(described[name]) == json.dumps(theirs), name


def test_widgets_list_mapping_and_hidden_unique_id(rt):
    prompt = {"1": {"class_type": "LGV3Arith", "inputs": {"a": 3, "b": 4, "scale": 0.5, "mode": "product",
                                                          "negate": True}},
              "2": show(["1", 1], "scaled="),
              "3": {"class_type": "LGV3Count", "inputs": {"count": 4}},
              "4": {"class_type": "LGV3Arith", "inputs": {"a": ["3", 0], "b": 10, "scale": 1.0, "mode": "sum"}},
              "5": {"class_type": "LGV3Sum", "inputs": {"values": ["4", 0]}},
              "6": show(["5", 0])}
    outputs = execute(rt, prompt).outputs
    assert outputs["2"] == {"text": ["2|scaled=-6.0"]}  # -(3*4) * 0.5, shown by node 2 (its hidden unique id)
    assert outputs["6"] == {"text": ["6|46"]}  # Arith mapped over 0..3 (+10 each), summed as one list


def test_validate_inputs_rejects_before_anything_runs(rt):
    before = pack_calls(rt)["execute"]
    prompt = {"1": {"class_type": "LGV3Arith", "inputs": {"a": 7, "b": 7, "scale": 1.0, "mode": "sum"}},
              "2": show(["1", 0])}
    with pytest.raises(PromptError) as info:
        rt.executor.run(prompt)
    errors = info.value.node_errors["1"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed" and "7 and 7" in errors[0]["details"]
    assert pack_calls(rt)["execute"] == before


def test_lazy_input_async_execute_and_expansion(rt):
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 5}},
              "2": {"class_type": "LGV3Sleep", "inputs": {"value": ["1", 0], "seconds": 0.05}},
              "3": {"class_type": "TestRaise", "inputs": {"value": ["1", 0], "message": "not selected"}},
              "4": {"class_type": "LGV3Switch", "inputs": {"select": True, "on_true": ["2", 0], "on_false": ["3", 0]}},
              "5": {"class_type": "LGV3Chain", "inputs": {"value": ["4", 0], "length": 3}},
              "6": show(["5", 0])}
    result = execute(rt, prompt)
    assert result.outputs["6"] == {"text": ["6|11"]}  # 5 + 1 + 2 + 3 through the expanded chain
    assert "3" not in result.executed and {"5.0.0.1", "5.0.0.2", "5.0.0.3"} <= set(result.executed)


def test_fingerprint_inputs_decides_reuse(rt):
    calls = pack_calls(rt)
    prompt = {"1": {"class_type": "LGV3Volatile", "inputs": {"token": "Abc"}}, "2": show(["1", 0])}
    execute(rt, prompt)
    ran, asked = calls["execute"], calls["fingerprint"]
    assert execute(rt, prompt).executed == []  # a stable fingerprint keeps the cached result
    assert calls["fingerprint"] == asked + 1 and calls["execute"] == ran
    prompt["1"]["inputs"]["token"] = "always"  # NaN: never the same, so it always runs again
    execute(rt, prompt)
    assert "1" in execute(rt, prompt).executed and calls["execute"] == ran + 2


def test_ui_preview_image_and_mask_are_8_bit_as_comfyui(rt):
    image = torch.full((1, 2, 3, 3), 0.5)
    mask = torch.full((1, 2, 3), 0.25)

    register_constant(rt.registry, "LGFixedTensors", ("IMAGE", "MASK"), (image, mask))
    prompt = {"1": {"class_type": "LGFixedTensors", "inputs": {}},
              "2": {"class_type": "LGV3Picture", "inputs": {"images": ["1", 0]}},
              "3": {"class_type": "LGV3Picture", "inputs": {"images": ["1", 0], "mask": ["1", 1]}}}
    outputs = execute(rt, prompt).outputs
    for node, value in (("2", 127), ("3", 63)):  # 255 * 0.5 = 127.5 and 255 * 0.25 = 63.75, truncated
        ui = outputs[node]
        assert ui["animated"] == [False] and len(ui["images"]) == 1 and ui["images"][0]["type"] == "temp"
        with Image.open(rt.env.folders.temp_dir / ui["images"][0]["filename"]) as png:
            assert png.size == (3, 2) and png.getpixel((1, 1)) == (value, value, value)
            assert "prompt" in png.text  # V3 output nodes get the prompt as a hidden value


def test_combo_multitype_and_combo_output(rt):
    prompt = {"1": {"class_type": "LGV3Pick", "inputs": {"choice": "z", "number": 5}},
              "2": show(["1", 0]), "3": show(["1", 1])}
    outputs = execute(rt, prompt).outputs
    assert outputs["2"] == {"text": ["2|z5"]} and outputs["3"] == {"text": ["3|z"]}
    # a node that validates its inputs itself (validate_inputs(**kwargs)) waives the list check, as
    # in ComfyUI; one that does not gets it
    assert execute(rt, {"1": {"class_type": "LGV3Pick", "inputs": {"choice": "w"}}, "2": show(["1", 0])}).ok
    with pytest.raises(PromptError) as info:
        rt.executor.run({"1": {"class_type": "LGV3Arith", "inputs": {"a": 1, "b": 1, "scale": 1.0, "mode": "w"}},
                         "2": show(["1", 0])})
    assert info.value.node_errors["1"]["errors"][0]["type"] == "value_not_in_list"


def test_a_call_never_changes_the_node_class(rt):
    show_cls = rt.registry.get("LGV3Show").cls
    execute(rt, {"1": {"class_type": "TestValue", "inputs": {"value": 1}}, "2": show(["1", 0])})
    assert show_cls.hidden is None  # the hidden values lived on a per-call clone
    clone = show_cls.PREPARE_CLASS_CLONE({"UNIQUE_ID": "9"})
    assert clone.hidden.unique_id == "9" and issubclass(clone, show_cls)
    with pytest.raises(AttributeError):
        clone.anything = 1


def test_use_everywhere_nodes_run_through_the_server(tmp_path):
    """cg-use-everywhere's value nodes feed core nodes; its broadcast nodes (no outputs) are
    wired by its editor extension, served from the pack's web folder."""
    install_packs(tmp_path)
    prompt = {"1": {"class_type": "Simple String", "inputs": {"string": "hello"}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
              "3": {"class_type": "Seed Everywhere", "inputs": {"seed": 0xFFFFFFFFFFFFFFFF}},
              "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
              "5": {"class_type": "Combo Clone", "inputs": {"combo": "euler"}},
              "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
              "7": {"class_type": "Anything Everywhere", "inputs": {"anything": ["1", 0]}}}

    async def go():
        import aiohttp
        async with aiohttp.ClientSession() as s:
            pid = await queue(s, server, prompt)
            entry = await wait_history(s, server, pid)
            _, extensions = await get_json(s, server.url + "/extensions")
            _, info = await get_json(s, server.url + "/object_info/Seed%20Everywhere")
            return entry, extensions, info

    with LiveServer(tmp_path, packs=()) as server:
        entry, extensions, info = run(go())
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["outputs"]["2"] == {"text": ["hello"]}
    assert entry["outputs"]["4"] == {"text": [str(0xFFFFFFFFFFFFFFFF)]}
    assert entry["outputs"]["6"] == {"text": ["euler"]}
    assert any(url.startswith("/extensions/cg-use-everywhere/") for url in extensions)
    assert info == {"Seed Everywhere": COMFY["Seed Everywhere"]}


def test_broken_v3_packs_are_reported_and_skipped(tmp_path):
    from app.plugins import load_custom_nodes
    from graph.registry import NodeRegistry

    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    (custom / "not_an_extension.py").write_text("async def comfy_entrypoint():\n    return 42\n")
    (custom / "no_execute.py").write_text(
        "from comfy_api.latest import ComfyExtension, io\n"
        "class Half(io.ComfyNode):\n"
        "    @classmethod\n"
        "    def define_schema(cls):\n"
        "        return io.Schema(node_id='LGHalf')\n"
        "class Ext(ComfyExtension):\n"
        "    async def get_node_list(self):\n"
        "        return [Half]\n"
        "def comfy_entrypoint():\n"
        "    return Ext()\n")
    registry = NodeRegistry()
    results = {r.name: r for r in load_custom_nodes(registry, [custom], log=lambda _msg: None)}
    assert "not a ComfyExtension" in results["not_an_extension"].error
    assert "No execute function" in results["no_execute"].error
    assert "LGHalf" not in registry
