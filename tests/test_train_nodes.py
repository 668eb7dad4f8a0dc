"""ComfyUI's training nodes in a real runtime: data sets from input/ folders, Train LoRA with
progress, previews and interrupt, Save LoRA Weights into the LoRA list, continuing an existing
LoRA, Load LoRA Model and Plot Loss Graph."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from graph.context import LatentPreview
from tests.conftest import make_runtime
from tests.node_helpers import call_in_context
from tests.test_train_lora import write_tiny_sd1


COLOURS = [(220, 40, 40), (40, 80, 220), (40, 170, 60)]


def picture(colour, size=(64, 64)):
    pixels = np.full((size[1], size[0], 3), 235, np.uint8)
    pixels[8:40, 16:48] = colour
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    base = tmp_path_factory.mktemp("train_nodes")
    (base / "models" / "checkpoints").mkdir(parents=True)
    write_tiny_sd1(base / "models" / "checkpoints" / "tiny_sd1.safetensors")
    data = base / "input" / "squares"
    (data / "2_extra").mkdir(parents=True)
    for i, colour in enumerate(COLOURS[:2]):
        picture(colour).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a square number {i}")
    picture(COLOURS[2]).save(data / "2_extra" / "green.png")   # no caption, repeated twice
    (data / "notes.md").write_text("not an image")
    mixed = base / "input" / "mixed"
    mixed.mkdir()
    picture(COLOURS[0]).save(mixed / "a.png")
    picture(COLOURS[1], (80, 48)).save(mixed / "b.jpg")
    return make_runtime(base)


def test_the_folder_list_and_image_sets(rt):
    registry = rt.registry
    info = registry.describe_all()
    assert info["LoadImageSetFromFolderNode"]["input"]["required"]["folder"][0] == ["mixed", "squares", "squares/2_extra"]
    (images,) = call_in_context(registry, "LoadImageSetFromFolderNode", folder="squares")
    assert images.shape == (2, 64, 64, 3)   # subfolders are not read by the plain image loader
    assert torch.allclose(images[0, 20, 30], torch.tensor(COLOURS[0]) / 255.0)
    with pytest.raises(ValueError, match="80x48 but the data set's images are 64x64"):
        call_in_context(registry, "LoadImageSetFromFolderNode", folder="mixed", resize_method="None")
    for method in ("Stretch", "Crop", "Pad"):
        (images,) = call_in_context(registry, "LoadImageSetFromFolderNode", folder="mixed", resize_method=method)
        assert images.shape == (2, 64, 64, 3), method
    (cropped,) = call_in_context(registry, "LoadImageSetFromFolderNode", folder="mixed", resize_method="Crop")
    assert cropped[1, 60, 10].sum() == 0   # below the 48 rows of the smaller image: black
    with pytest.raises(ValueError, match="outside|parent"):
        call_in_context(registry, "LoadImageSetFromFolderNode", folder="../models")


def test_captioned_sets_repeat_kohya_folders_and_encode_every_caption(rt):
    _, clip, _ = call_in_context(rt.registry, "CheckpointLoaderSimple", ckpt_name="tiny_sd1.safetensors")
    images, conditioning = call_in_context(rt.registry, "LoadImageTextSetFromFolderNode", folder="squares", clip=clip,
                                           width=32, height=32, resize_method="Stretch")
    assert images.shape == (4, 32, 32, 3) and len(conditioning) == 4
    with torch.inference_mode():
        expected = [clip.encode_from_tokens_scheduled(clip.tokenize(t))[0][0]
                    for t in ("a square number 0", "a square number 1", "", "")]
    order = [0, 1, 2, 3]   # "0.png", "1.png", then the repeated folder "2_extra"
    for got, want in zip((conditioning[i][0] for i in order), expected):
        assert torch.equal(got, want)


def training_prompt(steps=3, existing="[None]", algorithm="LoRA"):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
        "2": {"class_type": "LoadImageTextSetFromFolderNode", "inputs": {"folder": "squares", "clip": ["1", 1]}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "TrainLoraNode", "inputs": {
            "model": ["1", 0], "latents": ["3", 0], "positive": ["2", 1], "batch_size": 2,
            "grad_accumulation_steps": 1, "steps": steps, "learning_rate": 0.001, "rank": 4, "optimizer": "AdamW",
            "loss_function": "MSE", "seed": 0, "training_dtype": "bf16", "lora_dtype": "bf16", "algorithm": algorithm,
            "gradient_checkpointing": True, "existing_lora": existing}},
        "5": {"class_type": "SaveLoRANode", "inputs": {"lora": ["4", 1], "prefix": "loras/ComfyUI_trained_lora",
                                                        "steps": ["4", 3]}},
        "6": {"class_type": "LossGraphNode", "inputs": {"loss": ["4", 2], "filename_prefix": "loss_graph"}},
    }


def test_train_save_plot_and_continue_through_the_executor(rt):
    events, previews = [], []
    rt.executor.on_preview = lambda preview, ctx: previews.append(preview)
    try:
        result = rt.executor.run(training_prompt(), emit=lambda e, d: events.append((e, d)))
    finally:
        rt.executor.on_preview = None
    assert result.ok, result.error
    progress = [d for e, d in events if e == "progress" and d["node"] == "4"]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert previews and all(isinstance(p, LatentPreview) and p.samples.shape == (1, 4, 8, 8) for p in previews)

    saved = rt.env.folders.output_dir / "loras" / "ComfyUI_trained_lora_3_steps_00001_.safetensors"
    assert saved.is_file()
    assert "ComfyUI_trained_lora_3_steps_00001_.safetensors" in rt.env.folders.filenames("loras")
    lora = load_file(str(saved))
    assert all(k.startswith("lora_unet_") for k in lora) and lora["lora_unet_out_2.alpha"].item() == 1.0
    plot = result.outputs["6"]["images"][0]
    assert plot["type"] == "temp" and plot["filename"].startswith("loss_graph_")
    image = Image.open(rt.env.folders.temp_dir / plot["filename"])
    assert image.size == (840, 520) and "prompt" in image.text

    # Load LoRA (the file) works with no unused keys; training on from it counts its steps.
    model, clip, _ = call_in_context(rt.registry, "CheckpointLoaderSimple", ckpt_name="tiny_sd1.safetensors")
    loaded = call_in_context(rt.registry, "LoraLoader", model=model, clip=clip, lora_name=saved.name,
                             strength_model=1.0, strength_clip=1.0)
    assert isinstance(loaded, tuple), loaded   # a {"ui": ...} result would report unused keys
    again = rt.executor.run(training_prompt(steps=2, existing=saved.name))
    assert again.ok, again.error
    # 3 + 2 steps; the counter after "_3_steps_00001_" is 4, as ComfyUI's counter reads the first number
    assert (rt.env.folders.output_dir / "loras" / "ComfyUI_trained_lora_5_steps_00004_.safetensors").is_file()


def test_the_trained_model_output_and_load_lora_model_agree(rt):
    registry = rt.registry
    model, clip, _ = call_in_context(registry, "CheckpointLoaderSimple", ckpt_name="tiny_sd1.safetensors")
    latents = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3}
    with torch.inference_mode():
        positive = clip.encode_from_tokens_scheduled(clip.tokenize("a square"))
    trained, lora, loss, steps = call_in_context(
        registry, "TrainLoraNode", model=model, latents=latents, positive=positive, batch_size=2,
        grad_accumulation_steps=2, steps=2, learning_rate=0.01, rank=2, optimizer="SGD", loss_function="Huber",
        seed=3, training_dtype="fp32", lora_dtype="fp32", algorithm="LoRA", gradient_checkpointing=False,
        existing_lora="[None]")
    assert steps == 2 and len(loss["loss"]) == 4   # batches: steps x accumulation
    (reloaded,) = call_in_context(registry, "LoraModelLoader", model=model, lora=lora, strength_model=1.0)
    (unchanged,) = call_in_context(registry, "LoraModelLoader", model=model, lora=lora, strength_model=0.0)
    assert unchanged is model
    from tests.test_train_lora import denoised
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([2.0])
    outs = [denoised(m, x, sigma, positive[0][0]) for m in (trained, reloaded, model)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_an_interrupt_stops_training_between_steps(rt):
    seen = []

    def emit(event, data):
        seen.append(event)
        if event == "progress" and data["node"] == "4" and data["value"] == 1:
            rt.executor.interrupt()

    result = rt.executor.run(training_prompt(steps=50), emit=emit)
    assert result.status == "interrupted"
    assert seen.count("progress") < 10 and "execution_interrupted" in seen


@pytest.mark.parametrize("algorithm, suffixes", [
    ("LoHa", {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}),
    ("LoKr", {"lokr_w1", "lokr_w2"}),
    ("OFT", {"oft_blocks"})])
def test_each_algorithm_trains_saves_and_loads_through_the_workflow(rt, algorithm, suffixes):
    prompt = training_prompt(steps=2, algorithm=algorithm)
    prompt["5"]["inputs"]["prefix"] = f"loras/{algorithm}_trained"
    result = rt.executor.run(prompt)
    assert result.ok, result.error
    saved = rt.env.folders.output_dir / "loras" / f"{algorithm}_trained_2_steps_00001_.safetensors"
    lora = load_file(str(saved))
    found = {k.split(".", 1)[1] for k in lora}
    assert suffixes <= found and not {"lora_up.weight", "lora_down.weight"} & found, found
    assert lora["lora_unet_out_2.alpha"].item() == 1.0
    model, clip, _ = call_in_context(rt.registry, "CheckpointLoaderSimple", ckpt_name="tiny_sd1.safetensors")
    loaded = call_in_context(rt.registry, "LoraLoader", model=model, clip=clip, lora_name=saved.name,
                             strength_model=1.0, strength_clip=1.0)
    assert isinstance(loaded, tuple), loaded   # a {"ui": ...} result would report unused keys
