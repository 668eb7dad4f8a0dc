"""UI ("workflow") save → API prompt conversion."""
import copy
import json
from pathlib import Path

import pytest

from graph.ui_convert import WorkflowFormatError, is_ui_workflow, ui_to_api
from tests import paths

DATA = Path(__file__).parent / "data"
SHARED = paths.SHARED_WORKFLOWS
OBJECT_INFO = json.loads((DATA / "object_info_core.json").read_text())

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared workflows not present")


# ---------------------------------------------------------------------------------------------
# Builders for hand-written UI documents.

def inp(name, type_, link=None, widget=None):
    entry = {"name": name, "type": type_, "link": link}
    if widget:
        entry["widget"] = {"name": widget}
    return entry


def out(name, type_):
    return {"name": name, "type": type_, "links": []}


def node(id_, type_, widgets=None, inputs=(), outputs=(), mode=0, title=None, order=None):
    n = {"id": id_, "type": type_, "pos": [0, 0], "size": [200, 100], "flags": {}, "mode": mode,
         "inputs": list(inputs), "outputs": list(outputs), "properties": {}}
    if order is not None:
        n["order"] = order
    if widgets is not None:
        n["widgets_values"] = widgets
    if title is not None:
        n["title"] = title
    return n


def workflow(nodes, links):
    return {"last_node_id": max((n["id"] for n in nodes), default=0), "last_link_id": len(links),
            "nodes": nodes, "links": [list(link) for link in links], "groups": [], "config": {},
            "extra": {}, "version": 0.4}


def convert(doc, object_info=OBJECT_INFO):
    return ui_to_api(doc, object_info)


def inputs_of(prompt):
    return {nid: (n["class_type"], n["inputs"]) for nid, n in prompt.items()}


def checkpoint(id_=4, widgets=("v1-5-pruned-emaonly.safetensors",)):
    return node(id_, "CheckpointLoaderSimple", list(widgets),
                outputs=[out("MODEL", "MODEL"), out("CLIP", "CLIP"), out("VAE", "VAE")])


def vae_decode(id_, samples=None, vae=None):
    return node(id_, "VAEDecode", inputs=[inp("samples", "LATENT", samples), inp("vae", "VAE", vae)],
                outputs=[out("IMAGE", "IMAGE")])


def ksampler(id_, widgets, model=None, positive=None, negative=None, latent=None, seed_link=None, mode=0):
    inputs = [inp("model", "MODEL", model), inp("positive", "CONDITIONING", positive),
              inp("negative", "CONDITIONING", negative), inp("latent_image", "LATENT", latent)]
    if seed_link is not None:
        inputs.append(inp("seed", "INT", seed_link, widget="seed"))
    return node(id_, "KSampler", widgets, inputs=inputs, outputs=[out("LATENT", "LATENT")], mode=mode)


# ---------------------------------------------------------------------------------------------
# Whole workflows.

SDXL_POSITIVE = ("a giant classical marble statue standing alone in a pure white empty void, soft diffused "
                 "lighting, subtle shadows, surreal, minimalist, fine art photography, quiet atmosphere, "
                 "sense of scale")
SDXL_NEGATIVE = ("color, colored, lowres, blurry, out of focus, deformed, bad anatomy, extra limbs, mutated, "
                 "watermark, text, logo, signature\n")
SDXL_EXPECTED = {
    "15": {"inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"},
           "class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"}},
    "10": {"inputs": {"text": SDXL_POSITIVE, "clip": ["15", 1]},
           "class_type": "CLIPTextEncode", "_meta": {"title": "Positive Prompt"}},
    "11": {"inputs": {"text": SDXL_NEGATIVE, "clip": ["15", 1]},
           "class_type": "CLIPTextEncode", "_meta": {"title": "Negative Prompt"}},
    "13": {"inputs": {"width": 1024, "height": 1024, "batch_size": 1},
           "class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent"}},
    "12": {"inputs": {"seed": 812045847300606, "steps": 25, "cfg": 7, "sampler_name": "dpmpp_2m",
                      "scheduler": "karras", "denoise": 1, "model": ["15", 0], "positive": ["10", 0],
                      "negative": ["11", 0], "latent_image": ["13", 0]},
           "class_type": "KSampler", "_meta": {"title": "KSampler"}},
    "14": {"inputs": {"samples": ["12", 0], "vae": ["15", 2]},
           "class_type": "VAEDecode", "_meta": {"title": "VAE Decode"}},
    "7": {"inputs": {"filename_prefix": "sdxl_simple", "images": ["14", 0]},
          "class_type": "SaveImage", "_meta": {"title": "Save Image"}},
}


@needs_shared
def test_shared_sdxl_workflow_converts_exactly():
    doc = json.loads((SHARED / "image_sdxl_simple.json").read_text())
    assert convert(doc) == SDXL_EXPECTED
    assert "16" not in convert(doc)  # the MarkdownNote


@needs_shared
def test_workflow_file_reader_converts_the_shared_ui_file():
    from graph.workflow_file import read_workflow_file

    document = read_workflow_file(SHARED / "image_sdxl_simple.json")
    assert document.to_api(OBJECT_INFO) == SDXL_EXPECTED


def default_graph_ui():
    """The frontend's default text-to-image graph (spec §8), with the §8 API example's values."""
    links = [(1, 4, 0, 3, 0, "MODEL"), (2, 5, 0, 3, 3, "LATENT"), (3, 4, 1, 6, 0, "CLIP"),
             (4, 6, 0, 3, 1, "CONDITIONING"), (5, 4, 1, 7, 0, "CLIP"), (6, 7, 0, 3, 2, "CONDITIONING"),
             (7, 3, 0, 8, 0, "LATENT"), (8, 4, 2, 8, 1, "VAE"), (9, 8, 0, 9, 0, "IMAGE")]
    nodes = [
        ksampler(3, [8566257, "randomize", 20, 8, "euler", "normal", 1], model=1, positive=4, negative=6, latent=2),
        checkpoint(4),
        node(5, "EmptyLatentImage", [512, 512, 1], outputs=[out("LATENT", "LATENT")]),
        node(6, "CLIPTextEncode", ["masterpiece best quality girl"], inputs=[inp("clip", "CLIP", 3)],
             outputs=[out("CONDITIONING", "CONDITIONING")]),
        node(7, "CLIPTextEncode", ["bad hands"], inputs=[inp("clip", "CLIP", 5)],
             outputs=[out("CONDITIONING", "CONDITIONING")]),
        vae_decode(8, samples=7, vae=8),
        node(9, "SaveImage", ["ComfyUI"], inputs=[inp("images", "IMAGE", 9)]),
    ]
    return workflow(nodes, links)


DEFAULT_GRAPH_API = {
    "4": ("CheckpointLoaderSimple", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}),
    "5": ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}),
    "6": ("CLIPTextEncode", {"text": "masterpiece best quality girl", "clip": ["4", 1]}),
    "7": ("CLIPTextEncode", {"text": "bad hands", "clip": ["4", 1]}),
    "3": ("KSampler", {"seed": 8566257, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
                       "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                       "latent_image": ["5", 0]}),
    "8": ("VAEDecode", {"samples": ["3", 0], "vae": ["4", 2]}),
    "9": ("SaveImage", {"filename_prefix": "ComfyUI", "images": ["8", 0]}),
}


def test_default_graph_converts_to_the_spec_api_table():
    prompt = convert(default_graph_ui())
    assert inputs_of(prompt) == DEFAULT_GRAPH_API
    assert prompt["6"]["_meta"] == {"title": "CLIP Text Encode (Prompt)"}
    assert prompt["3"]["_meta"] == {"title": "KSampler"}


@needs_shared
def test_default_graph_has_the_same_links_as_the_shared_api_file():
    api = json.loads((SHARED / "sd15_txt2img_api.json").read_text())
    prompt = convert(default_graph_ui())

    def shape(p):
        return {nid: (n["class_type"], sorted(k for k, v in n["inputs"].items() if isinstance(v, list)),
                      sorted(k for k, v in n["inputs"].items() if not isinstance(v, list)),
                      [v for v in n["inputs"].values() if isinstance(v, list)]) for nid, n in p.items()}
    assert shape(prompt) == shape(api)


def test_output_follows_the_saved_execution_order():
    doc = default_graph_ui()
    for order, node_id in enumerate([4, 5, 6, 7, 3, 8, 9]):
        next(n for n in doc["nodes"] if n["id"] == node_id)["order"] = order
    assert list(convert(doc)) == ["4", "5", "6", "7", "3", "8", "9"]


def test_version_1_document_with_state_and_object_links():
    doc = default_graph_ui()
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    doc["links"] = [dict(zip(keys, link)) for link in doc["links"]]
    doc["version"] = 1
    doc["state"] = {"lastNodeId": 9, "lastLinkId": 9, "lastGroupId": 0, "lastRerouteId": 0}
    for key in ("last_node_id", "last_link_id"):
        del doc[key]
    assert is_ui_workflow(doc)
    assert inputs_of(convert(doc)) == DEFAULT_GRAPH_API


def test_input_order_comes_from_input_order_not_dict_order():
    info = copy.deepcopy(OBJECT_INFO)
    required = info["EmptyLatentImage"]["input"]["required"]
    info["EmptyLatentImage"]["input"]["required"] = dict(reversed(list(required.items())))
    doc = workflow([node(1, "EmptyLatentImage", [640, 480, 2])], [])
    assert convert(doc, info)["1"]["inputs"] == {"width": 640, "height": 480, "batch_size": 2}


# ---------------------------------------------------------------------------------------------
# Virtual nodes.

def test_reroute_chain_is_followed_to_the_real_source():
    nodes = [checkpoint(4),
             node(20, "Reroute", inputs=[inp("", "*", 1)], outputs=[out("", "VAE")]),
             node(21, "Reroute", inputs=[inp("", "*", 2)], outputs=[out("", "VAE")]),
             node(22, "Reroute", inputs=[inp("", "*", 3)], outputs=[out("", "VAE")]),
             vae_decode(8, vae=4)]
    links = [(1, 4, 2, 20, 0, "VAE"), (2, 20, 0, 21, 0, "VAE"), (3, 21, 0, 22, 0, "VAE"), (4, 22, 0, 8, 1, "VAE")]
    prompt = convert(workflow(nodes, links))
    assert set(prompt) == {"4", "8"}
    assert prompt["8"]["inputs"] == {"vae": ["4", 2]}


def test_reroute_with_nothing_behind_it_drops_the_input():
    nodes = [node(20, "Reroute", inputs=[inp("", "*", None)], outputs=[out("", "*")]), vae_decode(8, vae=4)]
    assert convert(workflow(nodes, [(4, 20, 0, 8, 1, "VAE")]))["8"]["inputs"] == {}


def test_reroute_loop_is_reported():
    nodes = [node(20, "Reroute", inputs=[inp("", "*", 2)], outputs=[out("", "*")]),
             node(21, "Reroute", inputs=[inp("", "*", 1)], outputs=[out("", "*")]),
             vae_decode(8, vae=3)]
    links = [(1, 20, 0, 21, 0, "*"), (2, 21, 0, 20, 0, "*"), (3, 21, 0, 8, 1, "VAE")]
    with pytest.raises(WorkflowFormatError, match="loop"):
        convert(workflow(nodes, links))


def test_primitive_node_value_feeds_every_target():
    adv_widgets = ["enable", 5, "fixed", 30, 6.5, "euler", "karras", 0, 10000, "disable"]
    nodes = [
        node(30, "PrimitiveNode", [424242, "increment"], outputs=[out("INT", "INT")], title="seed"),
        ksampler(3, [1, "fixed", 20, 8, "euler", "normal", 1], seed_link=1),
        node(4, "KSamplerAdvanced", adv_widgets, inputs=[inp("noise_seed", "INT", 2, widget="noise_seed")],
             outputs=[out("LATENT", "LATENT")]),
    ]
    prompt = convert(workflow(nodes, [(1, 30, 0, 3, 4, "INT"), (2, 30, 0, 4, 0, "INT")]))
    assert "30" not in prompt
    assert prompt["3"]["inputs"]["seed"] == 424242
    assert prompt["3"]["inputs"]["steps"] == 20
    assert prompt["4"]["inputs"]["noise_seed"] == 424242
    assert prompt["4"]["inputs"]["steps"] == 30


def test_primitive_through_a_reroute_and_list_literals_are_wrapped():
    info = {"ListTaker": {"input": {"required": {"values": ["STRING", {"forceInput": True}]}}, "output": []}}
    nodes = [node(30, "PrimitiveNode", [["a", "b"]], outputs=[out("STRING", "STRING")]),
             node(31, "Reroute", inputs=[inp("", "*", 1)], outputs=[out("", "STRING")]),
             node(32, "ListTaker", inputs=[inp("values", "STRING", 2)])]
    prompt = convert(workflow(nodes, [(1, 30, 0, 31, 0, "STRING"), (2, 31, 0, 32, 0, "STRING")]), info)
    assert prompt == {"32": {"inputs": {"values": {"__value__": ["a", "b"]}}, "class_type": "ListTaker",
                             "_meta": {"title": "ListTaker"}}}


def test_list_widget_values_are_wrapped():
    info = {"Multi": {"input": {"required": {"choice": ["COMBO", {"options": ["a", "b"], "multi_select": True}]}}}}
    prompt = convert(workflow([node(1, "Multi", [["a", "b"]])], []), info)
    assert prompt["1"]["inputs"] == {"choice": {"__value__": ["a", "b"]}}


def test_notes_and_groups_are_not_emitted():
    doc = workflow([node(1, "Note", ["remember"]), node(2, "MarkdownNote", ["# hi"]), checkpoint(4)], [])
    doc["groups"] = [{"id": 1, "title": "Models", "bounding": [0, 0, 10, 10]}]
    assert list(convert(doc)) == ["4"]


# ---------------------------------------------------------------------------------------------
# Widgets.

def test_widget_converted_to_input_takes_the_linked_value():
    nodes = [node(20, "StringSource", ["ignored"], outputs=[out("STRING", "STRING")]),
             node(6, "CLIPTextEncode", ["widget text that must not win"],
                  inputs=[inp("clip", "CLIP", None), inp("text", "STRING", 1, widget="text")],
                  outputs=[out("CONDITIONING", "CONDITIONING")])]
    prompt = convert(workflow(nodes, [(1, 20, 0, 6, 1, "STRING")]))
    assert prompt["6"]["inputs"] == {"text": ["20", 0]}


def test_unlinked_widget_input_entries_keep_the_widget_value():
    nodes = [node(6, "CLIPTextEncode", ["hello"], inputs=[inp("text", "STRING", None, widget="text"),
                                                          inp("clip", "CLIP", None)])]
    assert convert(workflow(nodes, []))["6"]["inputs"] == {"text": "hello"}


def test_control_after_generate_value_is_not_serialized():
    nodes = [ksampler(3, [77, "increment", 12, 5.5, "heun", "karras", 0.6])]
    assert convert(workflow(nodes, []))["3"]["inputs"] == {
        "seed": 77, "steps": 12, "cfg": 5.5, "sampler_name": "heun", "scheduler": "karras", "denoise": 0.6}


def test_save_without_the_control_value_still_lines_up():
    nodes = [ksampler(3, [77, 12, 5.5, "heun", "karras", 0.6])]
    inputs = convert(workflow(nodes, []))["3"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["denoise"]) == (77, 12, 0.6)


def test_legacy_seed_name_gets_a_control_value():
    # noise_seed carries no control_after_generate option in our object_info; the name alone counts
    widgets = ["disable", 99, "randomize", 30, 6.5, "dpmpp_2m", "karras", 10, 30, "enable"]
    inputs = convert(workflow([node(4, "KSamplerAdvanced", widgets)], []))["4"]["inputs"]
    assert inputs == {"add_noise": "disable", "noise_seed": 99, "steps": 30, "cfg": 6.5,
                      "sampler_name": "dpmpp_2m", "scheduler": "karras", "start_at_step": 10,
                      "end_at_step": 30, "return_with_leftover_noise": "enable"}


def test_control_option_on_any_input_name():
    info = {"Counter": {"input": {"required": {
        "value": ["INT", {"default": 0, "control_after_generate": True}],
        "label": ["STRING", {"default": ""}]}}}}
    prompt = convert(workflow([node(1, "Counter", [5, "decrement", "x"])], []), info)
    assert prompt["1"]["inputs"] == {"value": 5, "label": "x"}


def test_combo_with_control_skips_the_control_and_filter_values():
    info = {"Pick": {"input": {"required": {
        "item": [["a", "b", "c"], {"control_after_generate": True}],
        "count": ["INT", {"default": 1}]}}}}
    prompt = convert(workflow([node(1, "Pick", ["b", "increment-wrap", "", 4])], []), info)
    assert prompt["1"]["inputs"] == {"item": "b", "count": 4}


def test_image_upload_entry_is_not_serialized():
    nodes = [node(10, "LoadImage", ["example.png", "image"], outputs=[out("IMAGE", "IMAGE"), out("MASK", "MASK")]),
             node(11, "LoadImageMask", ["example.png", "red", "image"], outputs=[out("MASK", "MASK")])]
    prompt = convert(workflow(nodes, []))
    assert prompt["10"]["inputs"] == {"image": "example.png"}
    assert prompt["11"]["inputs"] == {"image": "example.png", "channel": "red"}


def test_upload_entry_sits_between_required_and_optional_widgets():
    info = {"LoadThing": {"input": {"required": {"file": [["a.png", "b.png"], {"image_upload": True}]},
                                    "optional": {"frame": ["INT", {"default": 0}]}}}}
    prompt = convert(workflow([node(1, "LoadThing", ["b.png", "image", 7])], []), info)
    assert prompt["1"]["inputs"] == {"file": "b.png", "frame": 7}


def test_dict_widgets_values_are_read_by_name():
    widgets = {"seed": 5, "control_after_generate": "fixed", "steps": 9, "cfg": 2.5,
               "sampler_name": "ddim", "scheduler": "simple"}
    inputs = convert(workflow([ksampler(3, widgets)], []))["3"]["inputs"]
    assert inputs == {"seed": 5, "steps": 9, "cfg": 2.5, "sampler_name": "ddim", "scheduler": "simple",
                      "denoise": 1.0}  # denoise missing from the save: its default


def test_short_widgets_values_use_defaults_and_long_ones_are_tolerated():
    short = convert(workflow([node(5, "EmptyLatentImage", [768])], []))["5"]["inputs"]
    assert short == {"width": 768, "height": 512, "batch_size": 1}
    combo_default = convert(workflow([checkpoint(4, widgets=())], []))["4"]["inputs"]
    assert combo_default == {"ckpt_name": "sd_xl_base_1.0.safetensors"}  # first choice, like the editor
    long = convert(workflow([node(5, "EmptyLatentImage", [64, 128, 2, "extra", 5])], []))["5"]["inputs"]
    assert long == {"width": 64, "height": 128, "batch_size": 2}


def test_force_input_and_socket_types_get_no_widget_slot():
    info = {"Mix": {"input": {"required": {"a": ["FLOAT", {"forceInput": True}], "image": ["IMAGE"],
                                           "b": ["FLOAT", {"default": 0.5}]}}}}
    prompt = convert(workflow([node(1, "Mix", [0.25])], []), info)
    assert prompt["1"]["inputs"] == {"b": 0.25}


def test_title_falls_back_to_display_name_then_type():
    nodes = [node(5, "EmptyLatentImage", [512, 512, 1], title="Size"), node(9, "SaveImage", ["x"]),
             node(12, "SomethingCustom")]
    prompt = convert(workflow(nodes, []))
    assert [prompt[i]["_meta"]["title"] for i in ("5", "9", "12")] == ["Size", "Save Image", "SomethingCustom"]


# ---------------------------------------------------------------------------------------------
# Modes.

def test_muted_node_is_skipped_and_links_from_it_dropped():
    lora = node(10, "LoraLoader", ["detail.safetensors", 1, 1], mode=2,
                inputs=[inp("model", "MODEL", 1), inp("clip", "CLIP", 2)],
                outputs=[out("MODEL", "MODEL"), out("CLIP", "CLIP")])
    seed_source = node(11, "SeedGenerator", [5], mode=2, outputs=[out("INT", "INT")])
    nodes = [checkpoint(4), lora, seed_source,
             ksampler(3, [1, "fixed", 20, 8, "euler", "normal", 1], model=3, seed_link=4),
             node(9, "SaveImage", ["muted"], inputs=[inp("images", "IMAGE", None)], mode=2)]
    links = [(1, 4, 0, 10, 0, "MODEL"), (2, 4, 1, 10, 1, "CLIP"), (3, 10, 0, 3, 0, "MODEL"),
             (4, 11, 0, 3, 4, "INT")]
    prompt = convert(workflow(nodes, links))
    assert set(prompt) == {"4", "3"}
    assert "model" not in prompt["3"]["inputs"]
    # a widget fed from a muted node loses its value too, as in the editor's own export
    assert "seed" not in prompt["3"]["inputs"] and prompt["3"]["inputs"]["steps"] == 20


def test_bypassed_node_passes_through_by_slot():
    lora = node(10, "LoraLoader", ["detail.safetensors", 1, 1], mode=4,
                inputs=[inp("model", "MODEL", 1), inp("clip", "CLIP", 2)],
                outputs=[out("MODEL", "MODEL"), out("CLIP", "CLIP")])
    nodes = [checkpoint(4), lora, ksampler(3, [1, "fixed", 20, 8, "euler", "normal", 1], model=3),
             node(6, "CLIPTextEncode", ["x"], inputs=[inp("clip", "CLIP", 4)])]
    links = [(1, 4, 0, 10, 0, "MODEL"), (2, 4, 1, 10, 1, "CLIP"), (3, 10, 0, 3, 0, "MODEL"),
             (4, 10, 1, 6, 0, "CLIP")]
    prompt = convert(workflow(nodes, links))
    assert "10" not in prompt
    assert prompt["3"]["inputs"]["model"] == ["4", 0]
    assert prompt["6"]["inputs"]["clip"] == ["4", 1]


def test_bypassed_node_passes_through_by_type_and_through_chains():
    # slot 0 of the bypassed node is a MASK, so its LATENT output forwards the first LATENT input
    masked = node(11, "MaskedLatentOp", [], mode=4, inputs=[inp("mask", "MASK", None), inp("samples", "LATENT", 1)],
                  outputs=[out("LATENT", "LATENT")])
    upscale = node(12, "LatentUpscale", ["bislerp", 1024, 1024, "disabled"], mode=4,
                   inputs=[inp("samples", "LATENT", 2)], outputs=[out("LATENT", "LATENT")])
    nodes = [node(5, "EmptyLatentImage", [512, 512, 1], outputs=[out("LATENT", "LATENT")]), masked, upscale,
             vae_decode(8, samples=3)]
    links = [(1, 5, 0, 11, 1, "LATENT"), (2, 11, 0, 12, 0, "LATENT"), (3, 12, 0, 8, 0, "LATENT")]
    prompt = convert(workflow(nodes, links))
    assert set(prompt) == {"5", "8"}
    assert prompt["8"]["inputs"] == {"samples": ["5", 0]}


def test_bypassed_node_without_a_matching_input_drops_the_input():
    encode = node(13, "VAEEncode", mode=4, inputs=[inp("pixels", "IMAGE", 1), inp("vae", "VAE", None)],
                  outputs=[out("LATENT", "LATENT")])
    nodes = [node(10, "LoadImage", ["example.png", "image"], outputs=[out("IMAGE", "IMAGE"), out("MASK", "MASK")]),
             encode, vae_decode(8, samples=2)]
    prompt = convert(workflow(nodes, [(1, 10, 0, 13, 0, "IMAGE"), (2, 13, 0, 8, 0, "LATENT")]))
    assert prompt["8"]["inputs"] == {}


def test_unknown_node_type_is_kept_with_its_links():
    nodes = [vae_decode(8), node(40, "MyCustomUpscaler", [2.0], inputs=[inp("image", "IMAGE", 1)],
                                 outputs=[out("IMAGE", "IMAGE")]),
             node(9, "SaveImage", ["up"], inputs=[inp("images", "IMAGE", 2)])]
    prompt = convert(workflow(nodes, [(1, 8, 0, 40, 0, "IMAGE"), (2, 40, 0, 9, 0, "IMAGE")]))
    assert prompt["40"] == {"inputs": {"image": ["8", 0]}, "class_type": "MyCustomUpscaler",
                            "_meta": {"title": "MyCustomUpscaler"}}
    assert prompt["9"]["inputs"]["images"] == ["40", 0]


# ---------------------------------------------------------------------------------------------
# Subgraphs.

SUBGRAPH_ID = "6a1f5c1e-0000-4000-8000-00000000c11e"


def encode_subgraph():
    """A subgraph wrapping one CLIPTextEncode: inputs clip, text; output CONDITIONING."""
    inner = node(1, "CLIPTextEncode", ["inner text"],
                 inputs=[inp("clip", "CLIP", 101), inp("text", "STRING", 102, widget="text")],
                 outputs=[out("CONDITIONING", "CONDITIONING")])
    return {
        "id": SUBGRAPH_ID, "version": 1, "name": "Encode",
        "state": {"lastNodeId": 1, "lastLinkId": 103, "lastGroupId": 0, "lastRerouteId": 0},
        "inputNode": {"id": -10, "bounding": [0, 0, 10, 10]}, "outputNode": {"id": -20, "bounding": [0, 0, 10, 10]},
        "inputs": [{"id": "in-clip", "name": "clip", "type": "CLIP", "linkIds": [101]},
                   {"id": "in-text", "name": "text", "type": "STRING", "linkIds": [102]}],
        "outputs": [{"id": "out-cond", "name": "CONDITIONING", "type": "CONDITIONING", "linkIds": [103]}],
        "widgets": [], "nodes": [inner], "groups": [],
        "links": [
            {"id": 101, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "CLIP"},
            {"id": 102, "origin_id": -10, "origin_slot": 1, "target_id": 1, "target_slot": 1, "type": "STRING"},
            {"id": 103, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "CONDITIONING"},
        ],
    }


def subgraph_workflow(host_widgets, text_link=None, extra_nodes=(), extra_links=()):
    instance = node(20, SUBGRAPH_ID, host_widgets,
                    inputs=[inp("clip", "CLIP", 1), inp("text", "STRING", text_link, widget="text")],
                    outputs=[out("CONDITIONING", "CONDITIONING")])
    nodes = [checkpoint(4), instance, ksampler(3, [1, "fixed", 20, 8, "euler", "normal", 1], positive=2),
             *extra_nodes]
    doc = workflow(nodes, [(1, 4, 1, 20, 0, "CLIP"), (2, 20, 0, 3, 1, "CONDITIONING"), *extra_links])
    doc["definitions"] = {"subgraphs": [encode_subgraph()]}
    return doc


def test_subgraph_nodes_are_flattened_with_outer_inner_ids():
    prompt = convert(subgraph_workflow(["host text"]))
    assert set(prompt) == {"4", "20:1", "3"}
    assert prompt["20:1"]["class_type"] == "CLIPTextEncode"
    assert prompt["20:1"]["inputs"] == {"text": "host text", "clip": ["4", 1]}
    assert prompt["3"]["inputs"]["positive"] == ["20:1", 0]


def test_subgraph_input_without_a_host_value_keeps_the_inner_widget():
    prompt = convert(subgraph_workflow([]))
    assert prompt["20:1"]["inputs"] == {"text": "inner text", "clip": ["4", 1]}


def test_subgraph_input_fed_by_a_primitive_outside():
    primitive = node(30, "PrimitiveNode", ["from outside"], outputs=[out("STRING", "STRING")])
    prompt = convert(subgraph_workflow(["host text"], text_link=5, extra_nodes=[primitive],
                                       extra_links=[(5, 30, 0, 20, 1, "STRING")]))
    assert prompt["20:1"]["inputs"]["text"] == "from outside"


def test_nested_subgraphs_chain_their_ids():
    outer_id = "7b2e0000-0000-4000-8000-0000000000aa"
    inner_instance = node(20, SUBGRAPH_ID, [], inputs=[inp("clip", "CLIP", 201), inp("text", "STRING", None, "text")],
                          outputs=[out("CONDITIONING", "CONDITIONING")])
    outer_def = {
        "id": outer_id, "name": "Wrapper", "nodes": [inner_instance],
        "inputs": [{"name": "clip", "type": "CLIP", "linkIds": [201]}],
        "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "linkIds": [202]}],
        "links": [{"id": 201, "origin_id": -10, "origin_slot": 0, "target_id": 20, "target_slot": 0, "type": "CLIP"},
                  {"id": 202, "origin_id": 20, "origin_slot": 0, "target_id": -20, "target_slot": 0,
                   "type": "CONDITIONING"}],
    }
    wrapper = node(30, outer_id, [], inputs=[inp("clip", "CLIP", 1)], outputs=[out("CONDITIONING", "CONDITIONING")])
    doc = workflow([checkpoint(4), wrapper, ksampler(3, [1, "fixed", 20, 8, "euler", "normal", 1], positive=2)],
                   [(1, 4, 1, 30, 0, "CLIP"), (2, 30, 0, 3, 1, "CONDITIONING")])
    doc["definitions"] = {"subgraphs": [encode_subgraph(), outer_def]}
    prompt = convert(doc)
    assert set(prompt) == {"4", "30:20:1", "3"}
    assert prompt["30:20:1"]["inputs"] == {"text": "inner text", "clip": ["4", 1]}
    assert prompt["3"]["inputs"]["positive"] == ["30:20:1", 0]


def test_muted_subgraph_node_emits_nothing_inside():
    doc = subgraph_workflow(["host text"])
    doc["nodes"][1]["mode"] = 2
    prompt = convert(doc)
    assert set(prompt) == {"4", "3"}
    assert "positive" not in prompt["3"]["inputs"]


def test_subgraph_that_contains_itself_is_rejected():
    doc = subgraph_workflow([])
    definition = doc["definitions"]["subgraphs"][0]
    definition["nodes"].append(node(2, SUBGRAPH_ID, []))
    with pytest.raises(WorkflowFormatError, match="contains itself"):
        convert(doc)


# ---------------------------------------------------------------------------------------------
# Detection and malformed documents.

@needs_shared
def test_is_ui_workflow_tells_the_formats_apart():
    assert is_ui_workflow(json.loads((SHARED / "image_sdxl_simple.json").read_text()))
    assert not is_ui_workflow(json.loads((SHARED / "sd15_txt2img_api.json").read_text()))


@pytest.mark.parametrize("doc, expected", [
    ({"nodes": [], "links": []}, True),
    ({"nodes": [], "state": {"lastNodeId": 0}}, True),
    ({"nodes": {}, "links": []}, False),
    ({"nodes": []}, False),
    ([], False),
    ("nodes", False),
])
def test_is_ui_workflow_shapes(doc, expected):
    assert is_ui_workflow(doc) is expected


def test_nodes_not_a_list_is_rejected():
    with pytest.raises(WorkflowFormatError, match="'nodes' must be a list"):
        convert({"nodes": {"1": {}}, "links": []})


def test_workflow_not_an_object_is_rejected():
    with pytest.raises(WorkflowFormatError, match="JSON object"):
        convert(["nodes"])


def test_link_from_a_missing_node_names_link_and_node():
    doc = workflow([vae_decode(8, vae=5)], [(5, 99, 2, 8, 1, "VAE")])
    with pytest.raises(WorkflowFormatError, match=r"link 5 comes from node 99"):
        convert(doc)


def test_input_using_an_unknown_link_names_node_and_link():
    doc = workflow([checkpoint(4), vae_decode(8, vae=42)], [])
    with pytest.raises(WorkflowFormatError) as info:
        convert(doc)
    assert "node 8 input 'vae'" in str(info.value) and "link 42" in str(info.value)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["nodes"].append("not a node"), r"nodes\[1\] is not an object"),
    (lambda d: d["nodes"].append({"type": "VAEDecode"}), r"nodes\[1\] has no valid 'id'"),
    (lambda d: d["nodes"].append({"id": 4, "type": "VAEDecode"}), "node id 4 is used by more than one node"),
    (lambda d: d["nodes"][0].pop("type"), "node 4 has no 'type'"),
    (lambda d: d["nodes"][0].update(inputs={"model": 1}), "node 4: 'inputs' must be a list"),
    (lambda d: d["nodes"][0].update(widgets_values="x"), "node 4: 'widgets_values'"),
    (lambda d: d.update(links={"1": [1, 4, 0, 8, 0]}), "'links' must be a list"),
    (lambda d: d["links"].append([7, 4, "zero", 8, 0, "VAE"]), r"links\[0\] \(link 7\) has an invalid origin slot"),
    (lambda d: d["links"].append("7"), r"links\[0\] is neither"),
    (lambda d: d.update(definitions={"subgraphs": [{"name": "no id"}]}), r"subgraphs\[0\] has no string 'id'"),
])
def test_malformed_documents_name_the_culprit(mutate, message):
    doc = workflow([checkpoint(4)], [])
    mutate(doc)
    with pytest.raises(WorkflowFormatError, match=message):
        convert(doc)


def test_workflow_format_error_is_a_value_error():
    assert issubclass(WorkflowFormatError, ValueError)


def test_conversion_does_not_modify_its_arguments():
    doc = subgraph_workflow(["host text"])
    info = copy.deepcopy(OBJECT_INFO)
    before = copy.deepcopy(doc)
    convert(doc, info)
    assert doc == before and info == OBJECT_INFO
