"""Renders each example's result on the built-in model into examples/results/ (run from the
repository root):

    python examples/render_results.py               # every example that can run on it
    python examples/render_results.py img2img ...   # only these

The SD1.5 examples are meant for a real SD1.5 checkpoint, which cannot ship with the project. This
takes each shipped workflow and changes only what the built-in 64-pixel shapes model
(models_builtin/) needs, printing every change: the checkpoint name; pixel sizes divided by one
factor (examples/scaling.py, as the tests do) so the picture is at the model's 64-pixel scale;
prompts in the model's vocabulary (a negative prompt becomes "", the model's unconditional
caption); input pictures drawn with diffusion/training/shapes.py, with a transparent region where
Load Image's MASK must be. Each runs through `main.py run`'s code (app/cli.py) in a temporary base
directory; the saved pictures (and the drawn inputs) are copied to examples/results/, and the
Results table in examples/README.md is rewritten. Examples that need a model the built-in one has
no counterpart for get no picture, and the table says why.
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's modules, also when run as a script

from PIL import Image, ImageDraw

from app.folders import BUILTIN_MODELS_ENV
from diffusion.training.shapes import Scene, draw
from examples.scaling import SCALE, scale_pixels

BUILTIN = "latentgraph-shapes-64.safetensors"
RESULTS = HERE / "results"
README = HERE / "README.md"
TABLE_START = "<!-- results table: written by render_results.py -->"
TABLE_END = "<!-- end of results table -->"
MASK_MARGIN = 2  # pixels the transparent region reaches beyond the shape's box


@dataclass(frozen=True)
class Plan:
    """How one example runs on the built-in model."""
    factor: int = 1                      # pixel sizes divided by this (1: as shipped)
    texts: dict[str, str] = field(default_factory=dict)  # CLIPTextEncode node id -> its text
    input: Scene | None = None           # drawn as the picture of the example's Load Image
    mask: bool = False                   # the shape's box transparent: Load Image's MASK
    no_picture: str = ""                 # why there is none (the example is not run)
    note: str = ""                       # for the README: what the picture shows


PLANS: dict[str, Plan] = {
    "hello_image": Plan(note="a 512x512 picture of one colour (EmptyImage) saved under a name built from strings; no model"),
    "img2img": Plan(
        SCALE, {"4": Scene("green", "circle", "large", "center", "blue").caption(), "5": ""},
        input=Scene("red", "circle", "large", "center", "blue"),
        note="the drawn red circle encoded and resampled at denoise 0.6, the prompt asking for a green one"),
    "inpaint": Plan(
        SCALE, {"3": Scene("red", "circle", "large", "center", "green").caption(), "4": ""},
        input=Scene("white", "square", "large", "center", "green"), mask=True,
        note="the transparent square (Load Image's MASK) repainted from noise, the prompt asking for a red circle; the rest kept"),
    "outpaint": Plan(
        SCALE, {"4": Scene("orange", "circle", "large", "left", "purple").caption(), "5": ""},
        input=Scene("orange", "circle", "large", "left", "purple"),
        note="32 pixels added on the right (feathered over 5) and painted from noise, the prompt describing the input"),
    "controlnet": Plan(no_picture="a ControlNet for the built-in model's UNet does not exist"),
    "hires_fix_upscale_model": Plan(no_picture="it needs an upscale model file (RealESRGAN_x4plus.pth), which "
                                               "cannot ship with the project"),
    "tiled_vae": Plan(
        SCALE, {"5": Scene("yellow", "triangle", "large", "center", "black").caption(), "6": ""},
        input=Scene("yellow", "triangle", "large", "center", "black"),
        note="the picture scaled to 128x128 (twice the model's size), VAE-encoded and decoded in 64-pixel tiles, resampled at denoise 0.6"),
    "custom_sampling": Plan(
        4, {"2": Scene("purple", "square", "large", "top right", "white").caption(), "3": ""},
        note="text to image through RandomNoise, CFGGuider, SamplerEulerAncestral and BasicScheduler (karras, 6 "
             "steps) into SamplerCustomAdvanced"),
    "freeu_pag": Plan(
        4, {"4": Scene("black", "triangle", "large", "bottom", "orange").caption(), "5": ""},
        note="text to image on the model patched by FreeU_V2 and Perturbed-Attention Guidance (dpmpp_2m, 6 steps)"),
    "model_merging": Plan(no_picture="it needs a second SD1.x checkpoint; merging the built-in model with "
                                     "itself gives the same model back, so a picture would show nothing"),
    "shapes_txt2img": Plan(note="a batch of 4 from the example's own prompt, side by side"),
}


def shipped(name: str) -> dict:
    return json.loads((HERE / f"{name}.json").read_text())


def input_name(name: str) -> str:
    return f"{name}_input.png"


def adapt(name: str, prompt: dict, plan: Plan) -> dict:
    """The shipped prompt as the built-in model runs it (see the module docstring)."""
    doc = scale_pixels(prompt, plan.factor) if plan.factor != 1 else json.loads(json.dumps(prompt))
    for node_id, node in doc.items():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = BUILTIN
        elif node["class_type"] == "LoadImage" and plan.input is not None:
            inputs["image"] = input_name(name)
        if node_id in plan.texts:
            inputs["text"] = plan.texts[node_id]
    return doc


def changes(before: dict, after: dict) -> list[tuple[str, str, str, object, object]]:
    """(node id, class type, input, shipped value, new value) of every literal that differs."""
    found = []
    for node_id, node in before.items():
        for key, old in node["inputs"].items():
            new = after[node_id]["inputs"][key]
            if new != old:
                found.append((node_id, node["class_type"], key, old, new))
    return found


def summary(name: str, plan: Plan) -> str:
    """The changes as the README's table says them."""
    parts, sizes = [], []
    for node_id, class_type, key, old, new in changes(shipped(name), adapt(name, shipped(name), plan)):
        if key == "ckpt_name":
            parts.append("checkpoint: the built-in model")
        elif key == "image":
            parts.append(f"input: `{old}` replaced by the drawn picture" + (" (transparent: the MASK)" if plan.mask else ""))
        elif key == "text":
            parts.append(f'prompt "{new}"' if new else f'negative prompt "{old}" emptied')
        else:
            if f"{key} {old}→{new}" not in sizes:  # the tiled encode and decode share theirs
                sizes.append(f"{key} {old}→{new}")
    if sizes:
        parts.insert(1, f"pixel sizes ÷{plan.factor} ({', '.join(sizes)})")
    return "; ".join(parts) if parts else "nothing: runs as shipped"


def draw_input(plan: Plan) -> Image.Image:
    """The example's input picture at the model's scale; with `mask`, transparent over the shape."""
    picture = Image.fromarray(draw(plan.input))
    if not plan.mask:
        return picture
    cx, cy, side = plan.input.box()
    half = side / 2 + MASK_MARGIN
    alpha = Image.new("L", picture.size, 255)
    ImageDraw.Draw(alpha).rectangle((cx - half, cy - half, cx + half - 1, cy + half - 1), fill=0)
    picture.putalpha(alpha)
    return picture


def side_by_side(paths: list[Path]) -> Image.Image:
    """The saved pictures of one run in a row (a batch makes several)."""
    pictures = [Image.open(p).convert("RGB") for p in paths]
    row = Image.new("RGB", (sum(p.width for p in pictures), max(p.height for p in pictures)))
    x = 0
    for picture in pictures:
        row.paste(picture, (x, 0))
        x += picture.width
    return row


def render(names: list[str], out_dir: Path = RESULTS, err=None) -> dict[str, Path]:
    """Run the named examples on the built-in model; their results (and drawn inputs) go to
    out_dir as <name>.png (and <name>_input.png). The built-in model must be listed
    (LATENTGRAPH_BUILTIN_MODELS not "0")."""
    from app.args import parse_args
    from app.cli import run_workflows
    from app.runtime import create_runtime

    err = err or sys.stderr
    for name in names:
        if PLANS[name].no_picture:
            raise ValueError(f"{name}: no picture on the built-in model: {PLANS[name].no_picture}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    with tempfile.TemporaryDirectory(prefix="latentgraph-examples-") as tmp:
        base = Path(tmp)
        args = parse_args(["--base-directory", str(base), "--cpu", "--disable-all-custom-nodes"])
        # a fresh base directory of our own: nothing to lock or empty
        runtime = create_runtime(args, log=lambda _msg: None, claim=False)
        work = base / "workflows"
        work.mkdir()
        for name in names:
            plan = PLANS[name]
            doc = adapt(name, shipped(name), plan)
            changed = changes(shipped(name), doc)
            err.write(f"{name}: " + ("changed for the built-in model" if changed else "runs as shipped") + "\n")
            for node_id, class_type, key, old, new in changed:
                err.write(f"  node {node_id} {class_type}.{key}: {old!r} -> {new!r}\n")
            drawn = draw_input(plan) if plan.input is not None else None
            if drawn is not None:
                drawn.save(work / input_name(name))
            (work / f"{name}.json").write_text(json.dumps(doc, indent=1))
            out = io.StringIO()
            if run_workflows(runtime, [str(work / f"{name}.json")], out=out, err=err) != 0:
                raise RuntimeError(f"{name}.json failed on the built-in model (see above)")
            picture = side_by_side([Path(line) for line in out.getvalue().splitlines()])
            picture.save(out_dir / f"{name}.png", optimize=True)
            written[name] = out_dir / f"{name}.png"
            if drawn is not None:
                drawn.save(out_dir / input_name(name), optimize=True)
    return written


def results_table() -> str:
    """The README's Results table (what render() makes and what has no picture)."""
    rows = ["| example | input | result | what it shows | changed to run it on the built-in model |",
            "|---|---|---|---|---|"]
    for name, plan in PLANS.items():
        link = f"[{name}.json]({name}.json)"
        if plan.no_picture:
            rows.append(f"| {link} | | no picture | {plan.no_picture} | |")
            continue
        given = f"![{name} input](results/{input_name(name)})" if plan.input is not None else ""
        rows.append(f"| {link} | {given} | ![{name} result](results/{name}.png) | {plan.note} | {summary(name, plan)} |")
    return "\n".join([TABLE_START, *rows, TABLE_END])


def write_readme_table(readme: Path = README) -> None:
    text = readme.read_text()
    start, end = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END)
    readme.write_text(text[:start] + results_table() + text[end:])


def main(argv: list[str]) -> int:
    unknown = [n for n in argv if n not in PLANS]
    if unknown:
        print(f"unknown example(s) {', '.join(unknown)}; the examples are {', '.join(PLANS)}", file=sys.stderr)
        return 2
    names = [n for n in (argv or PLANS) if not PLANS[n].no_picture]
    for name in (argv or PLANS):
        if PLANS[name].no_picture:
            print(f"{name}: no picture: {PLANS[name].no_picture}", file=sys.stderr)
    os.environ[BUILTIN_MODELS_ENV] = "1"  # list the built-in model, whatever the shell says
    import torch

    torch.set_num_threads(1)  # a 64-pixel model: one thread is as fast, and the results repeat
    for name, path in render(names).items():
        print(path)
    write_readme_table()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
