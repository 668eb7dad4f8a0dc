"""The model-lifetime service through a real server: a small memory budget keeps one checkpoint's
models in memory and releases the other's (rebuilt from the file when used again, with identical
results); POST /free really unloads (the server's RSS falls); a LoRA change puts the original
weights back bit for bit; and pixels do not depend on how much memory is free."""
import asyncio
import hashlib
import shutil
import time
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.server_helpers import LiveServer, post_json, queue, run, wait_history

MB = 1 << 20


def rss(server: LiveServer) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def txt2img(ckpt: str, prefix: str, seed: int = 3, lora: tuple[str, float] | None = None,
            text: str = "a red barn") -> dict:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
        "8": {"class_type": "ModelWeightsDigest", "inputs": {"model": ["1", 0], "clip": ["1", 1]}},
    }
    if lora is not None:
        prompt["9"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora[0],
                                                              "strength_model": lora[1], "strength_clip": lora[1]}}
        for n in ("2", "3"):
            prompt[n]["inputs"]["clip"] = ["9", 1]
        prompt["5"]["inputs"]["model"] = ["9", 0]
        prompt["8"]["inputs"].update(model=["9", 0], clip=["9", 1])
    return prompt


def report_prompt() -> dict:
    return {"1": {"class_type": "ModelMemoryReport", "inputs": {}}}


async def submit(session, server, prompt) -> dict:
    """Run a prompt; its history entry's outputs."""
    prompt_id = await queue(session, server, prompt)
    entry = await wait_history(session, server, prompt_id, timeout=240)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry["outputs"]


def image_bytes(server: LiveServer, outputs: dict) -> bytes:
    """The saved image's pixels (the PNG's text chunks carry the prompt, which differs)."""
    (image,) = outputs["7"]["images"]
    with Image.open(server.base / "output" / image["subfolder"] / image["filename"]) as im:
        return im.tobytes()


@pytest.fixture(scope="module")
def base(tiny_checkpoint, tmp_path_factory):
    import torch

    base = tmp_path_factory.mktemp("memory")
    ckpts = base / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    shutil.copy(tiny_checkpoint("sd15"), ckpts / "a.safetensors")
    from tests.models_tiny import write_tiny_full_checkpoint
    write_tiny_full_checkpoint(ckpts / "b.safetensors", "sd15", seed=1)
    (base / "models" / "loras").mkdir(parents=True)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    gen = torch.Generator().manual_seed(0)
    save_file({f"{name}.lora_up.weight": torch.randn(32, 4, generator=gen) * 0.2,
               f"{name}.lora_down.weight": torch.randn(4, 768, generator=gen) * 0.2,
               f"{name}.alpha": torch.tensor(4.0)}, str(base / "models" / "loras" / "barn.safetensors"))
    return base


def server_at(base: Path, name: str, *flags: str) -> LiveServer:
    """A server over a copy of `base` (its own output folder), with the probe pack installed."""
    own = base.parent / f"{base.name}_{name}"
    if not own.exists():
        own.mkdir()
        (own / "models").symlink_to(base / "models")
    return LiveServer(own, *flags, packs=("lg_test_nodes.py", "lg_model_probe.py"))


def test_two_checkpoints_under_a_small_budget_release_the_first_and_rebuild_it(base):
    # Each tiny checkpoint holds ~180 MB (its text encoder has the real 49408 x 768 token table,
    # stored in fp32 here: fp16, the CPU default, would halve it), so a 300 MB budget fits one;
    # --cache-lru keeps both loaders' outputs alive between prompts.
    with server_at(base, "budget", "--model-memory-budget", "300", "--cache-lru", "50", "--fp32-text-enc") as server:
        async def go():
            async with aiohttp.ClientSession() as session:
                first = await submit(session, server, txt2img("a.safetensors", "a1"))
                report = (await submit(session, server, report_prompt()))["1"]
                assert "UNet of a.safetensors" in report["resident"] and report["released"] == []
                await submit(session, server, txt2img("b.safetensors", "b1"))
                report = (await submit(session, server, report_prompt()))["1"]
                # a's text encoder (~150 MB), the one model of a that makes the room alone, made room for b
                assert "text encoder of a.safetensors" in report["released"]
                assert {"UNet of b.safetensors", "text encoder of b.safetensors"} <= set(report["resident"])
                assert report["resident_bytes"][0] <= 300 * MB
                # a.safetensors again with a new prompt: its cached text encoder is rebuilt from the
                # file (b's released for it), and holds the very same weights
                again = await submit(session, server, txt2img("a.safetensors", "a2", text="a blue barn"))
                report = (await submit(session, server, report_prompt()))["1"]
                assert "text encoder of b.safetensors" in report["released"] and report["rebuilds"][0] >= 1
                assert report["resident_bytes"][0] <= 300 * MB
                assert again["8"]["clip"] == first["8"]["clip"] and again["8"]["text"] == first["8"]["text"]
        run(go())


def test_free_unloads_and_rss_falls(base):
    with server_at(base, "free", "--fp32-text-enc") as server:  # ~180 MB of weights, as above
        async def go():
            async with aiohttp.ClientSession() as session:
                fresh = rss(server)
                first = await submit(session, server, txt2img("a.safetensors", "f1"))
                loaded = rss(server)
                assert loaded - fresh > 150 * MB  # the checkpoint's weights are in memory
                status, _ = await post_json(session, server.url + "/free", {"unload_models": True})
                assert status == 200
                deadline = time.monotonic() + 30
                while rss(server) > fresh + 100 * MB and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert rss(server) < loaded - 100 * MB, (fresh >> 20, loaded >> 20, rss(server) >> 20)
                report = (await submit(session, server, report_prompt()))["1"]
                assert "UNet of a.safetensors" in report["released"]
                # the cached outputs still work: the models come back from the file
                again = await submit(session, server, txt2img("a.safetensors", "f2"))
                assert image_bytes(server, again) == image_bytes(server, first)
        run(go())


def test_a_lora_change_restores_the_original_weights_bit_for_bit(base):
    with server_at(base, "lora") as server:
        async def go():
            async with aiohttp.ClientSession() as session:
                plain = await submit(session, server, txt2img("a.safetensors", "p1"))
                strong = await submit(session, server, txt2img("a.safetensors", "l1", lora=("barn.safetensors", 1.0)))
                weak = await submit(session, server, txt2img("a.safetensors", "l2", lora=("barn.safetensors", 0.5)))
                digests = {plain["8"]["text"][0], strong["8"]["text"][0], weak["8"]["text"][0]}
                assert len(digests) == 3
                assert image_bytes(server, strong) != image_bytes(server, plain)
                back = await submit(session, server, txt2img("a.safetensors", "p2", seed=3))
                assert back["8"]["text"] == plain["8"]["text"]
                assert image_bytes(server, back) == image_bytes(server, plain)
        run(go())


def test_identical_pixels_under_a_memory_squeeze(base):
    """The same workflow on a server that believes almost no memory is free (a 1 MB budget and
    no smart memory: every other model is released whenever one is loaded) gives the same bytes."""
    outputs = {}
    for name, flags in (("roomy", ()), ("squeezed", ("--model-memory-budget", "1", "--disable-smart-memory"))):
        with server_at(base, name, *flags) as server:
            async def go():
                async with aiohttp.ClientSession() as session:
                    out = await submit(session, server, txt2img("a.safetensors", name))
                    outputs[name] = hashlib.sha256(image_bytes(server, out)).hexdigest()
                    if name == "squeezed":
                        report = (await submit(session, server, report_prompt()))["1"]
                        assert report["drops"][0] >= 2  # it really ran squeezed
            run(go())
    assert outputs["roomy"] == outputs["squeezed"]
