"""ComfyUI's own execution test suite, unchanged, against LatentGraph.

../shared/comfy-tests holds ComfyUI's tests/execution (with its testing node pack), conftest.py
and pytest.ini as ComfyUI runs them on every change. They start the server under test with
`python main.py --output-directory ... --listen ... --port ... --extra-model-paths-config
tests/execution/extra_model_paths.yaml --cpu [--cache-lru 0|100]` from their own folder, talk
to it over HTTP and the websocket, and stop it with SIGKILL. The run folder made here holds
only links to their files and a main.py that starts LatentGraph with those flags, so nothing of
theirs is copied or written to: the server's files go to a temporary base directory, the
outputs to --output_dir, and bytecode and pytest's cache are switched off.

The suite runs its classes under the three cache modes (classic, `--cache-lru 0`, which is
classic too, and an LRU of 100 node results) and must pass in full: 185 tests. A few of them
time concurrent async sleeps (e.g. three sleeps of 0.3-0.5 s in under 0.8 s, a lazily skipped
0.3 s sleep in under 0.5 s). The server here runs torch with one intra-op thread: on this shared
2-core machine torch's default two-thread pool makes each of the test nodes' tiny tensor ops
wait for a free core (measured under load: 40-90 ms per op, against under 1 ms with one
thread), which the suite would time instead of the engine. See docs/plugins-engine.md.
"""
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.paths import SHARED

SUITE = SHARED / "comfy-tests"
REPO = Path(__file__).resolve().parent.parent
EXPECTED_TESTS = 185
TIME_LIMIT_S = 600  # the suite's own budget

HARNESS = '''"""Starts LatentGraph the way ComfyUI's test suite starts ComfyUI: `python main.py <flags>`."""
import os
import sys
import tempfile

REPO = {repo!r}
sys.path.insert(0, REPO)
# A fresh base directory (models, user data, queue) for every server the suite starts.
base = tempfile.mkdtemp(prefix="server-", dir=os.environ["LG_SUITE_BASES"])

import torch  # noqa: E402

torch.set_num_threads(1)  # see tests/test_comfy_suite.py: the suite times the engine, not torch's pool

from main import main  # noqa: E402

sys.exit(main(["--base-directory", base, *sys.argv[1:]]))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_comfyui_execution_suite_passes_in_full(tmp_path):
    assert (SUITE / "tests" / "execution" / "test_execution.py").is_file(), f"ComfyUI's suite is missing: {SUITE}"
    run_dir = tmp_path / "run"
    (run_dir / "bin").mkdir(parents=True)
    # Their tests import each other as `tests.execution...`; a regular `tests` package here (their
    # files linked into it) keeps this project's own tests package, on PYTHONPATH, out of the way.
    (run_dir / "tests").mkdir()
    (run_dir / "tests" / "__init__.py").write_text("")
    for entry in (SUITE / "tests").iterdir():
        (run_dir / "tests" / entry.name).symlink_to(entry)
    (run_dir / "pytest.ini").symlink_to(SUITE / "pytest.ini")
    (run_dir / "main.py").write_text(HARNESS.format(repo=str(REPO)))
    (run_dir / "bin" / "python").symlink_to(sys.executable)  # the suite runs `python main.py`
    (tmp_path / "bases").mkdir()
    env = dict(os.environ,
               PATH=f"{run_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               # their tests import comfy_execution.graph_utils: ours (and the engine it uses)
               PYTHONPATH=os.pathsep.join([str(REPO / "compat"), str(REPO)]),
               PYTHONDONTWRITEBYTECODE="1", LG_SUITE_BASES=str(tmp_path / "bases"))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--port", str(free_port()),
         "--output_dir", str(tmp_path / "output"), "tests/execution"],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=TIME_LIMIT_S)
    took = time.monotonic() - started
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    print(f"ComfyUI's execution suite: {summary} ({took:.0f} s)")
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    assert counts == {"passed": EXPECTED_TESTS} and proc.returncode == 0, \
        f"{summary}\n" + "\n".join(failures) + "\n" + proc.stdout[-6000:] + proc.stderr[-3000:]
