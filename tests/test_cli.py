"""The command line on real files: `python main.py run WORKFLOW ...` in a subprocess."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PACK

REPO = Path(__file__).resolve().parent.parent


def main(base: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    shutil.copy(PACK, base / "custom_nodes" / PACK.name)
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args, "--base-directory", str(base)],
                          capture_output=True, text=True, timeout=timeout, cwd=base)


def write(path: Path, doc) -> str:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def image_prompt(prefix="cli"):
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 2, "color": 0xFF0000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def test_runs_an_api_workflow_and_prints_outputs(tmp_path):
    wf = write(tmp_path / "wf.json", image_prompt())
    proc = main(tmp_path, "run", wf)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.splitlines()]
    assert [p.name for p in written] == ["cli_00001_.png", "cli_00002_.png"]
    assert all(p.is_file() and p.parent == tmp_path / "output" for p in written)
    assert "running 1 EmptyImage" in proc.stderr and "running 2 SaveImage" in proc.stderr


def test_several_files_share_one_cache_and_progress_is_drawn(tmp_path):
    slow = {"1": {"class_type": "TestSlow", "inputs": {"steps": 5, "delay": 0.0}},
            "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    a = write(tmp_path / "a.json", slow)
    proc = main(tmp_path, "run", a, a)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("running 1 TestSlow") == 1  # the second run was served by the cache
    assert "cached: 2 node(s)" in proc.stderr
    assert "5/5" in proc.stderr and "2 of 2 workflow(s) succeeded" in proc.stderr
    assert proc.stdout.splitlines() == ["2: 5", "2: 5"]


def test_output_directory_flag(tmp_path):
    out = tmp_path / "elsewhere"
    proc = main(tmp_path, "run", write(tmp_path / "wf.json", image_prompt()), "--output-directory", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cli_00001_.png", "cli_00002_.png"]


def test_invalid_graph_exits_nonzero_with_readable_errors(tmp_path):
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": "lots"}},
              "2": {"class_type": "TestSampler", "inputs": {"model": ["1", 0], "positive": ["1", 0],
                                                            "negative": ["1", 0], "latent": ["1", 0],
                                                            "seed": -1, "mode": "warp"}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    proc = main(tmp_path, "run", write(tmp_path / "bad.json", prompt))
    assert proc.returncode == 1
    # ComfyUI's console layout: the nodes under the output they feed, one line per error, each once
    assert "Failed to validate prompt for output 3:" in proc.stderr
    assert "* TestValue 1:" in proc.stderr and "* TestSampler 2:" in proc.stderr
    assert proc.stderr.count("Value -1 smaller than min of 0: seed") == 1
    assert proc.stderr.count("Value not in list: mode: 'warp' not in ['fast', 'slow']") == 1
    assert proc.stderr.count("Failed to convert an input value to a INT value: value, 'lots'") == 1
    assert "Traceback" not in proc.stderr


def test_missing_file_and_malformed_json(tmp_path):
    bad = write(tmp_path / "broken.json", '{"1": {"class_type": "TestValue",')
    good = write(tmp_path / "good.json", image_prompt())
    proc = main(tmp_path, "run", str(tmp_path / "nope.json"), bad, good)
    assert proc.returncode == 1
    assert "nope.json: no such file" in proc.stderr
    assert "broken.json: malformed JSON at line 1 column" in proc.stderr
    assert "1 of 3 workflow(s) succeeded" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_not_a_workflow(tmp_path):
    proc = main(tmp_path, "run", write(tmp_path / "x.json", [1, 2, 3]))
    assert proc.returncode == 1 and "not a workflow" in proc.stderr


def test_node_failure_exits_nonzero(tmp_path):
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
              "2": {"class_type": "TestRaise", "inputs": {"value": ["1", 0], "message": "no luck"}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    proc = main(tmp_path, "run", write(tmp_path / "f.json", prompt))
    assert proc.returncode == 1
    assert "error in node 2 (TestRaise): RuntimeError: no luck" in proc.stderr


def test_png_written_by_save_image_runs_directly(tmp_path):
    ui = {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
          "links": [[1, 1, 0, 2, 0, "IMAGE"]],
          "nodes": [
              {"id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [200, 100], "flags": {}, "order": 0,
               "mode": 0, "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
               "properties": {}, "widgets_values": [8, 8, 1, 255]},
              {"id": 2, "type": "SaveImage", "pos": [300, 0], "size": [200, 100], "flags": {}, "order": 1,
               "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
               "properties": {}, "widgets_values": ["fromui"]}]}
    proc = main(tmp_path, "run", write(tmp_path / "ui.json", ui))
    assert proc.returncode == 0, proc.stderr
    png = Path(proc.stdout.split()[0])
    from PIL import Image
    with Image.open(png) as im:
        assert json.loads(im.text["workflow"]) == ui
        assert json.loads(im.text["prompt"])["2"]["inputs"]["filename_prefix"] == "fromui"
    renamed = tmp_path / "image.json"  # the bytes decide the format, not the name
    shutil.copy(png, renamed)
    proc = main(tmp_path, "run", str(renamed))
    assert proc.returncode == 0, proc.stderr
    with Image.open(proc.stdout.split()[0]) as im:
        assert json.loads(im.text["workflow"]) == ui  # the workflow carries over again


def test_png_without_workflow_is_refused(tmp_path):
    from PIL import Image
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    proc = main(tmp_path, "run", str(tmp_path / "plain.png"))
    assert proc.returncode == 1 and "no 'prompt' or 'workflow' text chunk" in proc.stderr


def test_shipped_example_workflow_runs(tmp_path):
    proc = main(tmp_path, "run", str(REPO / "examples" / "hello_image.json"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and all(Path(p).is_file() for p in proc.stdout.split())


@pytest.mark.parametrize("args", [["--no-such-flag"], ["frobnicate"], ["run"]])
def test_bad_command_lines_fail_clearly(tmp_path, args):
    proc = main(tmp_path, *args)
    assert proc.returncode == 2
    assert proc.stderr.strip() and "Traceback" not in proc.stderr


def test_broken_plugin_does_not_stop_startup_and_its_nodes_fail_as_unknown(tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / "broken_pack.py").write_text("import does_not_exist_anywhere\n")
    (tmp_path / "custom_nodes" / "syntax_pack.py").write_text("def oops(:\n")
    prompt = {"1": {"class_type": "BrokenNode", "inputs": {}}}
    proc = main(tmp_path, "run", write(tmp_path / "wf.json", prompt))
    assert proc.returncode == 1
    assert "IMPORT FAILED" in proc.stderr
    assert "broken_pack" in proc.stderr and "ModuleNotFoundError" in proc.stderr
    assert "Unknown node type" in proc.stderr and "BrokenNode" in proc.stderr
    ok = main(tmp_path, "run", write(tmp_path / "ok.json", image_prompt()))
    assert ok.returncode == 0, ok.stderr
