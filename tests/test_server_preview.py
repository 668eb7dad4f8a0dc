"""Live previews: latent-to-RGB and TAESD decoding, rate limiting, and binary websocket frames."""
import asyncio
import io
import json
import struct

import aiohttp
import pytest
import torch
from PIL import Image

from graph.context import LatentPreview
from server.preview import Previewer, RateLimiter, latent_to_rgb
from server.taesd import TAESDDecoder, load_decoder
from safetensors.torch import load_file as load_safetensors, save_file as save_safetensors
from server.ws import FORMAT_JPEG, PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, PreviewFrame
from tests.server_helpers import LiveServer, next_json, queue, run, until_done


def random_decoder_file(path, seed=0, prefix="") -> TAESDDecoder:
    torch.manual_seed(seed)
    decoder = TAESDDecoder()
    save_safetensors({prefix + k: v.contiguous() for k, v in decoder.state_dict().items()}, str(path))
    return decoder.eval()


def test_latent_to_rgb_uses_each_familys_factors():
    zeros = torch.zeros(4, 2, 3)
    assert torch.allclose(latent_to_rgb(zeros, "sd1"), torch.full((2, 3, 3), 0.5))
    sdxl = latent_to_rgb(zeros, "sdxl")[0, 0]
    assert torch.allclose(sdxl, (torch.tensor([0.1084, -0.0175, -0.0011]) + 1) / 2)
    one = torch.zeros(4, 1, 1)
    one[3] = 1.0  # the fourth SD1 channel pulls strongly away from blue
    assert torch.allclose(latent_to_rgb(one, "sd2")[0, 0], (torch.tensor([-0.2120, -0.2616, -0.7177]) + 1) / 2)
    assert latent_to_rgb(zeros, "flux") is None
    assert latent_to_rgb(torch.zeros(16, 2, 2), "sd1") is None


def test_taesd_decoder_loads_the_published_key_layout(tmp_path):
    original = random_decoder_file(tmp_path / "taesd_decoder.safetensors")
    keys = set(load_safetensors(tmp_path / "taesd_decoder.safetensors"))
    assert {"1.weight", "1.bias", "3.conv.0.weight", "3.conv.4.bias", "7.weight", "18.conv.2.weight",
            "19.weight", "19.bias"} <= keys
    assert "7.bias" not in keys and "0.weight" not in keys and not any(".skip." in k for k in keys)
    loaded = load_decoder(tmp_path / "taesd_decoder.safetensors")
    latent = torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        out = loaded(latent)
        assert out.shape == (1, 3, 40, 48)
        assert torch.allclose(out, original(latent), atol=1e-6)
    random_decoder_file(tmp_path / "nested.safetensors", prefix="decoder.")
    assert load_decoder(tmp_path / "nested.safetensors")(latent).shape == (1, 3, 40, 48)
    torch.save(original.state_dict(), tmp_path / "taesdxl_decoder.pth")
    assert load_decoder(tmp_path / "taesdxl_decoder.pth")(latent).shape == (1, 3, 40, 48)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError):
        load_decoder(tmp_path / "junk.safetensors")


def jpeg_size(data: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG"
    return img.size


def test_previewer_picks_taesd_when_present_and_falls_back_to_latent2rgb(tmp_path):
    random_decoder_file(tmp_path / "taesd_decoder.safetensors")
    latent = LatentPreview(torch.randn(2, 4, 6, 4), "sd1")
    auto = Previewer("auto", [tmp_path])
    fmt, data = auto.encode(latent)
    assert fmt == FORMAT_JPEG and jpeg_size(data) == (32, 48)  # TAESD: 8x the latent
    assert jpeg_size(auto.encode(LatentPreview(torch.randn(1, 4, 6, 4), "sdxl"))[1]) == (4, 6)  # no taesdxl file
    assert jpeg_size(Previewer("latent2rgb", [tmp_path]).encode(latent)[1]) == (4, 6)
    assert jpeg_size(Previewer("taesd", [tmp_path / "none"]).encode(latent)[1]) == (4, 6)
    assert jpeg_size(Previewer("auto", [tmp_path], max_size=16).encode(latent)[1]) == (11, 16)
    assert Previewer("none", [tmp_path]).encode(latent) is None
    plugin = ("JPEG", Image.new("RGB", (100, 50)), 20)
    assert jpeg_size(auto.encode(plugin)[1]) == (20, 10)
    assert auto.encode("not a preview") is None
    assert auto.encode(LatentPreview(torch.randn(4, 4), "sd1")) is None
    with pytest.raises(ValueError):
        Previewer("fancy", [])


def test_rate_limiter_spaces_frames_per_prompt():
    now = [0.0]
    limiter = RateLimiter(0.1, clock=lambda: now[0])
    assert limiter.allow("a") and not limiter.allow("a") and limiter.allow("b")
    now[0] = 0.05
    assert not limiter.allow("a")
    now[0] = 0.11
    assert limiter.allow("a")
    limiter.forget("a")
    assert limiter.allow("a")


def test_binary_frame_layout():
    frame = PreviewFrame(b"JPEGDATA", FORMAT_JPEG, "p1", "7")
    assert frame.frame(False) == struct.pack(">II", 1, 1) + b"JPEGDATA"
    with_meta = frame.frame(True)
    kind, size = struct.unpack(">II", with_meta[:8])
    meta = json.loads(with_meta[8:8 + size])
    assert kind == 4 and meta["prompt_id"] == "p1" and meta["node_id"] == "7" and meta["image_type"] == "image/jpeg"
    assert with_meta[8 + size:] == b"JPEGDATA"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("preview")
    (base / "models" / "vae_approx").mkdir(parents=True)
    random_decoder_file(base / "models" / "vae_approx" / "taesd_decoder.safetensors")
    with LiveServer(base, packs=("lg_test_nodes.py", "lg_preview_nodes.py")) as srv:
        yield srv
    assert "Traceback" not in srv.log()


def sampler_prompt(family: str, steps: int = 10, delay: float = 0.05, seed: int = 0) -> dict:
    return {"1": {"class_type": "TestPreviewSampler",
                  "inputs": {"steps": steps, "delay": delay, "family": family, "size": 8, "seed": seed}},
            "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}


def test_preview_frames_arrive_as_binary_while_sampling(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=pv") as ws, \
                s.ws_connect(server.url + "/ws?clientId=bystander") as other:
            await next_json(ws)
            frames: list[bytes] = []
            pid = await queue(s, server, sampler_prompt("sdxl", steps=12), "pv")
            messages = await until_done(ws, pid, binary=frames)
            assert sum(m["type"] == "progress" for m in messages) == 12
            assert 2 <= len(frames) <= 9, len(frames)  # ~0.6 s of sampling at <= 10 frames/s
            for frame in frames:
                assert struct.unpack(">II", frame[:8]) == (PREVIEW_IMAGE, FORMAT_JPEG)
                assert jpeg_size(frame[8:]) == (8, 8)  # latent2rgb: no taesdxl decoder installed
            frames.clear()
            pid = await queue(s, server, sampler_prompt("sd1", steps=4), "pv")
            await until_done(ws, pid, binary=frames)
            assert frames and all(jpeg_size(f[8:]) == (64, 64) for f in frames)  # TAESD decodes 8x
            frames.clear()
            pid = await queue(s, server, {"1": {"class_type": "TestImagePreview", "inputs": {"width": 64,
                                                                                            "max_size": 32}},
                                          "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}, "pv")
            await until_done(ws, pid, binary=frames)
            assert [jpeg_size(f[8:]) for f in frames] == [(32, 32)]
            # the bystander got status updates only: previews go to the prompt's own client
            while True:
                try:
                    msg = await other.receive(timeout=0.3)
                except asyncio.TimeoutError:
                    break
                assert msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "status"
    run(go())


def test_clients_that_ask_for_metadata_get_type_4_frames(server):
    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=meta") as ws:
            await next_json(ws)
            await ws.send_str(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
            assert (await next_json(ws))["type"] == "feature_flags"
            frames: list[bytes] = []
            pid = await queue(s, server, sampler_prompt("sd2", steps=3, seed=5), "meta")
            await until_done(ws, pid, binary=frames)
            assert frames
            kind, size = struct.unpack(">II", frames[0][:8])
            meta = json.loads(frames[0][8:8 + size])
            assert kind == PREVIEW_IMAGE_WITH_METADATA and meta["prompt_id"] == pid and meta["node_id"] == "1"
            assert jpeg_size(frames[0][8 + size:]) == (64, 64)
    run(go())
