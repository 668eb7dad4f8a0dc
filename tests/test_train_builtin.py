"""The model the project trained and ships (models_builtin/): an SD1-layout file that the loader
detects and lists, that says how it was made, and whose pictures follow their prompts, both
through the command line's example workflow and in-process through KSampler."""
import io
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from app.folders import BUILTIN_MODELS_DIR
from diffusion.checkpoint import detect, read_state_dict
from diffusion.training import shapes
from diffusion.training.evaluate import evaluate
from diffusion.training.shapes import Scene
from tests.conftest import make_runtime
from app.folders import BUILTIN_MODELS_ENV
from tests.editor_helpers import VIEWPORT, EditorPage, browser, needs_browser, start_server  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent
MODEL = BUILTIN_MODELS_DIR / "latentgraph-shapes-64.safetensors"
EXAMPLE = REPO / "examples" / "shapes_txt2img.json"
pytestmark = pytest.mark.usefixtures("builtin_models")  # listed, as on a user's machine

@pytest.fixture(scope="module")
def builtin_editor_server(tmp_path_factory):
    """A server on an empty base directory that lists the built-in model, as after install."""
    previous = os.environ.get(BUILTIN_MODELS_ENV)
    os.environ[BUILTIN_MODELS_ENV] = "1"
    try:
        server = start_server(tmp_path_factory.mktemp("builtin_editor"))
    finally:
        os.environ[BUILTIN_MODELS_ENV] = previous if previous is not None else "0"
    yield server
    server.stop()


@pytest.fixture
def editor(browser, builtin_editor_server):  # noqa: F811 - this module's editor is on its own server
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(15000)
    ed = EditorPage(page, builtin_editor_server.url + "/")
    ed.server = builtin_editor_server
    ed.open()
    yield ed
    context.close()
    assert not ed.errors, ed.errors


def test_the_shipped_file_is_a_small_sd1_checkpoint_that_says_how_it_was_made():
    assert MODEL.is_file(), "the built-in model is part of the project"
    assert MODEL.stat().st_size < 20e6
    info = detect(read_state_dict(MODEL), MODEL)
    assert (info.family, info.prediction, info.text_encoder, info.has_text) == ("sd1", "eps", "clip_l", True)
    assert info.vae_config.downscale == 8
    with safe_open(str(MODEL), "pt") as f:
        meta = f.metadata()
    recipe = json.loads(meta["latentgraph.recipe"])
    assert recipe["seed"] == 0 and "python -m diffusion.training.scratch" in meta["latentgraph.command"]
    assert json.loads(meta["latentgraph.training_seconds"])["total"] > 0


def test_a_fresh_base_directory_lists_the_builtin_model(tmp_path):
    runtime = make_runtime(tmp_path)
    choices = runtime.registry.describe_all()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert choices == [MODEL.name]


def test_the_example_workflow_draws_what_its_prompt_asks_for(tmp_path):
    """`python main.py run examples/shapes_txt2img.json` in an empty base directory."""
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "run", str(EXAMPLE), "--base-directory",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    files = [Path(p) for p in proc.stdout.split()]
    assert len(files) == 4
    prompt = json.loads(EXAMPLE.read_text())["2"]["inputs"]["text"]
    assert prompt == "a large yellow triangle at the top left on a purple background"
    scene = Scene("yellow", "triangle", "large", "top left", "purple")
    verdicts = [shapes.judge(np.asarray(Image.open(f).convert("RGB")), scene) for f in files]
    assert sum(v.colour_ok and v.background_ok for v in verdicts) >= 3, verdicts


def test_prompts_are_followed_for_colours_shapes_and_held_out_combinations():
    """A slice of the README's measurement: 6 prompts (2 held out) x 2 seeds."""
    scenes = [Scene("red", "circle", "large", "center", "blue"),
              Scene("green", "square", "large", "bottom right", "white"),
              Scene("white", "triangle", "large", "top", "black"),         # held out: white triangle
              Scene("black", "circle", "small", "left", "yellow"),         # held out: black on yellow
              Scene("orange", "triangle", "large", "bottom left", "green"),
              Scene("purple", "square", "small", "top right", "orange")]
    summary = evaluate(MODEL, seeds=2, scenes=scenes, report=lambda _: None)
    assert summary["overall"]["colour"] >= 0.75 and summary["overall"]["background"] >= 0.9, summary["overall"]
    assert summary["held_out"]["n"] == 4 and summary["held_out"]["colour"] >= 0.5, summary["held_out"]


@needs_browser
def test_the_editor_opens_on_the_builtin_model_and_its_first_queue_draws_a_picture(editor):
    """The quick start on a machine with no checkpoint: the default workflow uses the built-in
    model, and pressing Queue makes a picture."""
    summary = editor.summary()
    widgets = {n["type"]: n["widgets"] for n in summary["nodes"]}
    assert widgets["CheckpointLoaderSimple"]["ckpt_name"] == MODEL.name
    assert widgets["EmptyLatentImage"]["width"] == 64 and widgets["EmptyLatentImage"]["height"] == 64
    prompts = [n["widgets"]["text"] for n in summary["nodes"] if n["type"] == "CLIPTextEncode"]
    assert "a large red circle in the center on a blue background" in prompts
    editor.js("lgApp.graph.getNode(3).widgets.find((w) => w.name === 'seed').value = 1")
    editor.page.click("#queue-button")
    editor.page.wait_for_function("lgApp.runState.outputs.has('9')", timeout=120000)
    image = editor.js("lgApp.runState.outputs.get('9').images")[0]
    with urllib.request.urlopen(editor.server.url + "/view?" + urllib.parse.urlencode(
            {"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]})) as r:
        picture = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
    # a 64x64 picture of a shape on a background (whether it is the prompt's: the test above)
    assert picture.shape == (64, 64, 3) and picture.std() > 5  # drawn, not a flat field
