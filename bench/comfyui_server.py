"""ComfyUI itself as a server, started from a checkout beside the project, for the benchmarks and
checks that compare with it (bench/frontend_check.py, bench/comfyui_parity.py). Nothing of its
code is imported: it runs in its own process, with its own Python."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


class ComfyUIServer:
    """`python main.py --cpu` of the checkout at `comfyui` over the base directory `base` (its
    models, input and output folders), on a free loopback port; `flags` are added."""

    def __init__(self, base: Path, comfyui: Path, python: str, *flags: str):
        self.base, self.comfyui, self.python, self.flags = Path(base), Path(comfyui), python, list(flags)
        self.proc = None
        self.url = ""

    @property
    def log_path(self) -> Path:
        return self.base / "comfyui.log"

    def start(self, timeout: float = 180) -> ComfyUIServer:
        (self.base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:  # ComfyUI cannot report a port it picked itself
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([self.python, str(self.comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1",
                                      "--port", str(port), "--base-directory", str(self.base), *self.flags],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=str(self.comfyui))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(rb"To see the GUI go to", self.log_path.read_bytes()):
                self.url = f"http://127.0.0.1:{port}"
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("ComfyUI did not start")

    def run(self, prompt: dict, timeout: float = 3600) -> dict:
        """POST /prompt, then the prompt's /history entry once it has one."""
        request = urllib.request.Request(self.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:
            prompt_id = json.loads(response.read())["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{self.url}/history/{prompt_id}") as response:
                history = json.loads(response.read())
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not finish prompt {prompt_id} in {timeout} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> ComfyUIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
