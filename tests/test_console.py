"""What a new user reads: the start-up report, the lines per prompt, and errors that say what to
do, through the server (its console and its JSON answers) and the command line, as ComfyUI words
them where ComfyUI has the line ("got prompt", "Failed to validate prompt for output 9:",
"Prompt executed in N seconds", "Adding extra search path ...")."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PACK
from tests.paths import REPO
from tests.server_helpers import LiveServer, image_prompt, raise_prompt

CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
# ComfyUI's default text-to-image prompt, as its editor queues it
DEFAULT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 8, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def variant(**changes) -> dict:
    prompt = json.loads(json.dumps(DEFAULT))
    for node_id, node in changes.items():
        prompt[node_id.lstrip("n")].update(node)
    return prompt


# name -> (prompt, the hint it must get; {base} is the base directory)
CASES = {
    "no_checkpoint": (DEFAULT, "Value not in list: ckpt_name: 'v1-5-pruned-emaonly-fp16.safetensors' not in [] "
                               "(the list is empty: no files in the checkpoints folder {base}/models/checkpoints"),
    "unknown_type": (variant(n3={"class_type": "KSamplr"}),
                     "Unknown node type: Node type 'KSamplr' is not registered. Did you mean 'KSampler'? If it comes "
                     "from a custom-node pack, that pack is missing: install it into {base}/custom_nodes and restart."),
    "misspelt_input": (variant(n5={"inputs": {"widht": 512, "height": 512, "batch_size": 1}}),
                       "Required input is missing: width (unknown input 'widht' given instead: EmptyLatentImage has "
                       "no input of that name; did you mean 'width'?)"),
    "missing_image": ({"1": {"class_type": "LoadImage", "inputs": {"image": "example_input.png"}},
                       "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}},
                      "Custom validation failed for node: Invalid image file: example_input.png (no such file in the "
                      "input folder {base}/input: copy it there, or upload it with the node's 'choose file to upload')"),
}
EMPTY_LIST_END = "; put the model file there and try again (the editor lists new files after R))"


def cli(base: Path, *files: Path) -> subprocess.CompletedProcess:
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    shutil.copy(PACK, base / "custom_nodes" / PACK.name)
    return subprocess.run([sys.executable, str(REPO / "main.py"), "run", "--base-directory", str(base), *map(str, files)],
                          capture_output=True, text=True, timeout=300, cwd=base)


def test_the_command_line_prints_each_error_once_with_its_hint_and_the_start_up_report(tmp_path):
    base = tmp_path / "base"
    files = []
    for name, (prompt, _) in CASES.items():
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(prompt))
    files.append(tmp_path / "ok.json")
    files[-1].write_text(json.dumps(image_prompt("console")))
    proc = cli(base, *files)
    err = proc.stderr
    assert proc.returncode == 1 and "1 of 5 workflow(s) succeeded" in err, err
    sections = dict(zip(CASES, re.split("|".join(re.escape(f"{f}\n") for f in files), err)[1:]))
    for name, (_, hint) in CASES.items():
        section = sections[name]
        assert section.count(hint.format(base=base)) == 1, (name, section)
        errors = [line for line in section.splitlines() if line.startswith("    - ")]
        assert errors and len(errors) == len(set(errors)), (name, section)  # each error once
    assert err.count(EMPTY_LIST_END) == 3  # all but the LoadImage graph lack the checkpoint
    # an unknown type is the only error of the nodes linked to it: no "links to node '3'" follow-on
    assert "links to node" not in err
    assert err.count("Failed to validate prompt for output 9:") == 3 and "* KSamplr 3:" in err
    assert "Traceback" not in err
    # start-up: device and precision, folders and their contents, custom nodes
    assert re.search(r"^Device: cpu, \d+ threads", err, re.M)
    assert "Precision: UNet fp32, text encoder fp16 (computed in fp32), VAE fp32" in err
    assert f"Base directory: {base}" in err and "  checkpoints: 0 files" in err
    assert f"No checkpoints yet: put SD1.5 or SDXL .safetensors files in {base}/models/checkpoints" in err
    assert f"Input folder: {base}/input (0 images)" in err and f"Output folder: {base}/output" in err
    assert "Import times for custom nodes:" in err and "lg_test_nodes.py" in err
    # the run: the time it took, the file it saved (stdout carries the paths)
    assert err.count("Prompt executed in") == 1
    assert proc.stdout.split() == [str(base / "output" / "console_00001_.png")]


def a1111_config(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The shipped extra_model_paths.yaml.example with its A1111 base_path pointed at a folder with
    a LoRA, and its ComfyUI section switched on for another folder."""
    a1111, comfy = tmp_path / "webui", tmp_path / "ComfyUI"
    (a1111 / "models" / "Stable-diffusion").mkdir(parents=True)
    (a1111 / "models" / "Lora").mkdir(parents=True)
    (a1111 / "models" / "Lora" / "style.safetensors").write_bytes(b"0")
    (comfy / "models" / "vae").mkdir(parents=True)
    (comfy / "models" / "vae" / "vae.safetensors").write_bytes(b"0")
    text = (REPO / "extra_model_paths.yaml.example").read_text()
    text = text.replace("path/to/stable-diffusion-webui/", f"{a1111}/").replace("path/to/ComfyUI/", f"{comfy}/")
    text = re.sub(r"(?ms)^#comfyui:.*", lambda m: re.sub(r"(?m)^#", "", m.group(0)), text)
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(text)
    return config, a1111, comfy


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/prompt", data=json.dumps({"prompt": body}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(server: LiveServer, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not in the server log:\n{server.log()}"
        time.sleep(0.1)
    return server.log()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    config, a1111, comfy = a1111_config(tmp)
    srv = LiveServer(tmp / "base", "--extra-model-paths-config", str(config)).start()
    srv.extras = (a1111, comfy)
    yield srv
    srv.stop()


def test_server_start_up_names_device_folders_and_the_extra_paths_it_added(server):
    log = server.log()
    a1111, comfy = server.extras
    for key, path in [("checkpoints", a1111 / "models/Stable-diffusion"), ("loras", a1111 / "models/Lora"),
                      ("loras", a1111 / "models/LyCORIS"), ("upscale_models", a1111 / "models/RealESRGAN"),
                      ("controlnet", a1111 / "models/ControlNet"), ("vae", comfy / "models/vae"),
                      ("diffusion_models", comfy / "models/unet")]:
        assert f"Adding extra search path {key} {path}\n" in log, (key, log)
    assert f"  loras: 1 file (also from {a1111}/models/Lora" in log
    assert f"  vae: 1 file (also from {a1111}/models/VAE, {comfy}/models/vae)" in log
    assert "  checkpoints: 0 files (also from" in log
    assert re.search(r"^Device: cpu", log, re.M) and "Precision: UNet fp32" in log
    assert log.index("Precision:") < log.index("Import times for custom nodes:") < log.index("Model folders")
    assert log.index("Model folders") < log.index("To see the GUI go to")


def test_server_answers_and_logs_each_error_with_its_hint(server):
    base = server.base
    a1111, _ = server.extras
    for name, (prompt, hint) in CASES.items():
        before = server.log().count("got prompt")
        status, doc = post(server.url, prompt)
        assert status == 400, (name, doc)
        details = [f"{e['message']}: {e['details']}" for entry in doc["node_errors"].values() for e in entry["errors"]]
        assert any(d.startswith(hint.format(base=base)) for d in details), (name, details)
        assert not any("links to node" in d for d in details), details
        log = wait_for(server, hint.format(base=base).split(" (")[0])
        assert log.count("got prompt") == before + 1
    # the other folders the checkpoint list reads (here the A1111 one) are named too
    assert f"{base}/models/checkpoints nor in {a1111}/models/Stable-diffusion{EMPTY_LIST_END}" in server.log()
    log = server.log()
    assert "invalid prompt: Prompt outputs failed validation\nFailed to validate prompt for output 9:\n" \
           "* CheckpointLoaderSimple 4:\n  - Value not in list: ckpt_name: " in log
    assert "invalid prompt: Invalid prompt\nFailed to validate prompt for output 9:\n* KSamplr 3:\n" in log
    assert "Output will be ignored" in log and "Traceback" not in log


def test_server_logs_the_run_its_time_and_saved_files_and_a_node_failure(server):
    status, doc = post(server.url, image_prompt("console"))
    assert status == 200, doc
    log = wait_for(server, f"Saved {server.base / 'output' / 'console_00001_.png'}\n")
    assert re.search(r"got prompt\nPrompt executed in \d+\.\d\d seconds\nSaved ", log)
    status, _ = post(server.url, raise_prompt("no luck"))
    assert status == 200
    log = wait_for(server, "!!! Exception during processing !!! RuntimeError: no luck (node 2, TestRaise)")
    assert 'raise RuntimeError(message)' in log.split("!!! Exception during processing !!!")[-1]
