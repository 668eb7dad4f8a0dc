"""Start-up imports only what serving needs: heavy libraries wait for the node or model that uses them.

Each start (server, `main.py run`, every test that spawns one) would otherwise pay seconds and
~100 MB importing transformers, scipy, kornia, ... Checked in a fresh interpreter, since this
test process has imported them already.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# libraries some node's execution or some model kind needs, none of them needed to start
HEAVY = ["transformers", "tokenizers", "huggingface_hub", "scipy", "kornia", "sympy", "networkx", "spandrel",
         "diffusers", "matplotlib", "torchvision", "torchsde"]

CREATE_RUNTIME = """
import json, sys, tempfile
from app.args import parse_args
from app.runtime import create_runtime
runtime = create_runtime(parse_args(["--base-directory", tempfile.mkdtemp(), *sys.argv[1:]]), log=lambda m: None)
assert all(n in runtime.registry for n in ("CLIPTextEncode", "Canny", "Morphology", "GrowMask", "UpscaleModelLoader"))
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


@pytest.mark.parametrize("args", [["--disable-all-custom-nodes"], []])
def test_create_runtime_imports_no_heavy_library(args):
    proc = subprocess.run([sys.executable, "-c", CREATE_RUNTIME, *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert "torch" in loaded and "aiohttp" in loaded  # what start-up does need
    assert sorted(loaded & set(HEAVY)) == []


def test_cli_run_of_an_image_workflow_imports_no_heavy_library(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "main.py"), "run",
                           str(REPO / "examples" / "hello_image.json"), "--base-directory", str(tmp_path),
                           "--disable-all-custom-nodes"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.split()[0]).is_file()
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" in imported
    assert sorted(imported & set(HEAVY)) == []
