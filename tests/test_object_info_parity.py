"""Our /object_info next to ComfyUI's complete one (../shared/spec/object_info_full.json, ComfyUI
a125cd84 on a CPU machine with no custom nodes) for every node both have.

A node that exists under ComfyUI's name but declares other widgets, defaults, ranges, option
lists or outputs breaks workflows written for ComfyUI, so every difference is a failure except:
- file-name combos (checkpoints, VAEs, ...): their lists are whatever the model folders hold;
- `description`: ours carries the node's docstring where ComfyUI's dump has none or its own text;
- `tooltip` options: help text, not behaviour (newer ComfyUI versions add them too);
- empty input sections (`"optional": {}`), which ComfyUI omits and clients treat alike.
"""
import json
from pathlib import Path

import pytest

from diffusion.samplers import SAMPLER_NAMES
from diffusion.schedules import SCHEDULER_NAMES

from tests.paths import SHARED

COMFY = json.loads((SHARED / "spec" / "object_info_full.json").read_text())
# Inputs whose option list is the content of a folder, not a fixed vocabulary.
FILE_LIST_INPUTS = {"ckpt_name", "vae_name", "lora_name", "control_net_name", "image"}
IGNORED_OPTIONS = {"tooltip"}
NODE_FIELDS = ("name", "display_name", "category", "output_node", "python_module",
               "output", "output_name", "output_is_list")


def sections(info: dict) -> dict:
    return {name: entries for name, entries in info["input"].items() if entries}


def input_mismatches(name: str, ours: object, theirs: object) -> list[str]:
    if isinstance(theirs, str) or isinstance(ours, str):  # hidden inputs: "PROMPT", ...
        return [] if ours == theirs else [f"{name}: {ours!r} != ComfyUI's {theirs!r}"]
    problems = []
    ours_kind, theirs_kind = ours[0], theirs[0]
    if isinstance(theirs_kind, list):
        if not isinstance(ours_kind, list):
            problems.append(f"{name}: type {ours_kind!r}, ComfyUI has an option list")
        elif name not in FILE_LIST_INPUTS and ours_kind != theirs_kind:
            problems.append(f"{name}: options {ours_kind} != ComfyUI's {theirs_kind}")
    elif ours_kind != theirs_kind:
        problems.append(f"{name}: type {ours_kind!r} != ComfyUI's {theirs_kind!r}")
    ours_opts = ours[1] if len(ours) > 1 else {}
    theirs_opts = theirs[1] if len(theirs) > 1 else {}
    for key in sorted((set(ours_opts) | set(theirs_opts)) - IGNORED_OPTIONS):
        missing = "<absent>"
        if ours_opts.get(key, missing) != theirs_opts.get(key, missing):
            problems.append(f"{name}.{key}: {ours_opts.get(key, missing)!r} != "
                            f"ComfyUI's {theirs_opts.get(key, missing)!r}")
    return problems


def mismatches(ours: dict, theirs: dict) -> list[str]:
    """Every difference between two /object_info entries that a workflow or client can see."""
    problems = [f"{field}: {ours.get(field)!r} != ComfyUI's {theirs.get(field)!r}"
                for field in NODE_FIELDS if ours.get(field) != theirs.get(field)]
    ours_sections, theirs_sections = sections(ours), sections(theirs)
    if set(ours_sections) != set(theirs_sections):
        problems.append(f"input sections {sorted(ours_sections)} != ComfyUI's {sorted(theirs_sections)}")
    for section, entries in theirs_sections.items():
        mine = ours_sections.get(section, {})
        if list(mine) != list(entries):
            problems.append(f"{section} inputs {list(mine)} != ComfyUI's {list(entries)}")
        order = ours.get("input_order", {}).get(section)
        if order is not None and order != theirs.get("input_order", {}).get(section, list(entries)):
            problems.append(f"{section} input_order {order} != ComfyUI's")
        for name in entries:
            if name in mine:
                problems += [f"{section} {p}" for p in input_mismatches(name, mine[name], entries[name])]
    return problems


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    from tests.conftest import make_runtime

    return make_runtime(tmp_path_factory.mktemp("object_info")).registry.describe_all()


# Nodes being brought to parity (none at present).
PENDING: set[str] = set()


def test_every_node_we_share_with_comfyui_is_described_as_comfyui_does(described):
    shared = sorted(set(described) & set(COMFY) - PENDING)
    assert len(shared) >= 77
    problems = [f"{node} {p}" for node in shared for p in mismatches(described[node], COMFY[node])]
    assert not problems, "differences from ComfyUI's /object_info:\n  " + "\n  ".join(problems)


def test_the_core_text_to_image_nodes_are_all_registered(described):
    core = {"CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "EmptyLatentImage", "KSampler",
            "KSamplerAdvanced", "VAEDecode", "VAEEncode", "VAELoader", "SaveImage", "PreviewImage", "LoadImage"}
    assert core <= set(described), sorted(core - set(described))


def test_every_sampler_and_scheduler_combo_is_comfyuis_list(described):
    samplers = COMFY["KSampler"]["input"]["required"]["sampler_name"][0]
    schedulers = COMFY["KSampler"]["input"]["required"]["scheduler"][0]
    assert list(SAMPLER_NAMES) == samplers and list(SCHEDULER_NAMES) == schedulers
    # Nodes outside the dump (KSamplerSelect, BasicScheduler, ...) must offer the same lists.
    checked = 0
    for node, info in described.items():
        for entries in info["input"].values():
            for name, entry in (entries or {}).items():
                if name in ("sampler_name", "scheduler") and isinstance(entry, (list, tuple)) \
                        and isinstance(entry[0], list):
                    assert entry[0] == (samplers if name == "sampler_name" else schedulers), (node, name)
                    checked += 1
    assert checked >= 5  # KSampler, KSamplerAdvanced (2 each), KSamplerSelect, BasicScheduler


def test_the_comparison_catches_each_kind_of_difference():
    theirs = COMFY["KSampler"]
    cases = {
        "default": lambda d: d["input"]["required"]["steps"][1].update(default=30),
        "step": lambda d: d["input"]["required"]["cfg"][1].update(step=0.5),
        "extra option": lambda d: d["input"]["required"]["denoise"][1].update(multiline=False),
        "options": lambda d: d["input"]["required"]["sampler_name"][0].pop(),
        "order": lambda d: d["input"].update(required=dict(reversed(d["input"]["required"].items()))),
        "output name": lambda d: d.update(output_name=["latent"]),
        "category": lambda d: d.update(category="sampling/other"),
        "section": lambda d: d["input"].update(optional={"extra": ["INT", {}]}),
    }
    assert mismatches(json.loads(json.dumps(theirs)), theirs) == []
    for what, change in cases.items():
        changed = json.loads(json.dumps(theirs))
        change(changed)
        changed.pop("input_order")  # derived from the inputs; checked where present
        assert mismatches(changed, theirs), what
    tooltip_only = json.loads(json.dumps(theirs))
    tooltip_only["input"]["required"]["seed"][1]["tooltip"] = "help"
    tooltip_only["input"]["optional"] = {}
    assert mismatches(tooltip_only, theirs) == []
