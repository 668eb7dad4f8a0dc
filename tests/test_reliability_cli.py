"""The command line against hostile files: every file gets one clear error line naming it, the
batch goes on, and nothing prints a traceback (issue 17)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from graph.strict_json import MAX_DEPTH
from graph.workflow_file import MAX_TEXT_CHUNK
from tests.server_helpers import PACKS, REPO, value_prompt

DEEP = "[" * 10_000 + "]" * 10_000


def png_with(path: Path, **chunks) -> str:
    """A 2x2 PNG carrying text chunks; a value given as (text, True) is stored compressed."""
    info = PngInfo()
    for key, value in chunks.items():
        text, compressed = value if isinstance(value, tuple) else (value, False)
        info.add_itxt(key, text, zip=True) if compressed == "itxt" else info.add_text(key, text, zip=compressed)
    Image.new("RGB", (2, 2)).save(path, pnginfo=info)
    return str(path)


def float_prompt(raw_value: str) -> str:
    return '{"1": {"class_type": "HostileFloat", "inputs": {"value": ' + raw_value + "}}}"


def test_a_batch_of_hostile_files_gets_one_clear_error_each_and_goes_on(tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    for pack in ("lg_test_nodes.py", "lg_hostile_nodes.py"):
        shutil.copy(PACKS / pack, tmp_path / "custom_nodes" / pack)
    cut = Path(png_with(tmp_path / "whole.png", prompt=json.dumps(value_prompt(1)))).read_bytes()
    (tmp_path / "cut.png").write_bytes(cut[:len(cut) - 30])  # ends inside a chunk
    files = {
        "deep.json": (float_prompt(DEEP), f"nested deeper than {MAX_DEPTH} levels"),
        "digits.json": (float_prompt("9" * 5000),
                        'integer of 5000 digits is too large (at most 2**64) at $["1"].inputs.value'),
        "overflow.json": (float_prompt("1e999"), 'would be infinite) at $["1"].inputs.value'),
        "nan.json": (float_prompt("NaN"), 'NaN is not a JSON number at $["1"].inputs.value'),
        "surrogate.json": ('{"1": {"class_type": "PrimitiveString", "inputs": {"value": "\\ud800"}}}',
                           'lone surrogate (not valid Unicode text) at $["1"].inputs.value'),
        "inf_string.json": (float_prompt('"inf"'), "inf is not a finite number"),
        "deep_chunk.png": (dict(prompt=float_prompt(DEEP)), "the PNG's 'prompt' chunk is not acceptable JSON: "
                                                           f"nested deeper than {MAX_DEPTH} levels"),
        "digits_chunk.png": (dict(prompt=(float_prompt("7" * 5000), "itxt")), "integer of 5000 digits"),
        "zip_bomb_chunk.png": (dict(workflow=(" " * (MAX_TEXT_CHUNK + 1024), True)),
                               f"inflates to more than {MAX_TEXT_CHUNK >> 20} MB"),
        "cut.png": (None, "damaged PNG"),
        "valid.json": (json.dumps(value_prompt(42)), None),
    }
    names = []
    for name, (content, _) in files.items():
        if isinstance(content, dict):
            png_with(tmp_path / name, **content)
        elif content is not None:
            (tmp_path / name).write_text(content)
        names.append(str(tmp_path / name))
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "run", *names, "--base-directory", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    blocks: dict[str, list[str]] = {}  # each file's name on a line, then what happened to it
    for line in proc.stderr.splitlines():
        if line in names:
            blocks[Path(line).name] = []
        elif blocks and not line.startswith("ERROR graph.registry"):  # the broken node, logged per file
            blocks[list(blocks)[-1]].append(line)
    assert list(blocks) == list(files)
    for name, (_, expected) in files.items():
        if expected:
            assert expected in "\n".join(blocks[name]), (name, blocks[name])
            # one clear error, not a dump: at most ComfyUI's validation report (headline, output,
            # node, reason, 'Output will be ignored')
            assert len(blocks[name]) <= 5, (name, blocks[name])
    assert "1 of 11 workflow(s) succeeded" in proc.stderr
    assert proc.stdout.strip() == "2: 42"
