"""A real LatentGraph server in a subprocess, and small async client helpers for the tests.

Servers start with --port 0 and report the port they got in their first line, so parallel or
repeated starts never race for a port.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
PACKS = Path(__file__).resolve().parent / "packs"
_URL = re.compile(r"To see the GUI go to: (http://[^\s]+)")


@contextlib.contextmanager
def cache_lock(folder: Path):
    """Holds `folder`/.lock exclusively: the suite runs in parallel workers (pytest-xdist), and two
    of them filling one shared cache folder at once would race."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LiveServer:
    def __init__(self, base: Path, *flags: str, packs: tuple[str, ...] = ("lg_test_nodes.py",),
                 launcher: list[str] | None = None, env: dict[str, str] | None = None):
        """`launcher`: a command main.py runs under (default: this Python); `env`: extra variables."""
        self.base = Path(base)
        self.flags = list(flags)
        self.packs = packs
        self.launcher = launcher or [sys.executable]
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log_path = self.base / "server.log"
        self._log = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self, timeout: float = 60) -> "LiveServer":
        (self.base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        for pack in self.packs:
            if (PACKS / pack).is_dir():
                shutil.copytree(PACKS / pack, self.base / "custom_nodes" / pack, dirs_exist_ok=True)
            else:
                shutil.copy(PACKS / pack, self.base / "custom_nodes" / pack)
        self._log = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            [*self.launcher, str(REPO / "main.py"), "--base-directory", str(self.base), "--port", "0", *self.flags],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                match = _URL.search(f.read().decode(errors="replace"))
            if match:
                self.url = match.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def stop(self, timeout: float = 15) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_log()
        return self.proc.returncode if self.proc else None

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- prompts --------------------------------------------------------------------------------

def value_prompt(value: int) -> dict:
    return {"1": {"class_type": "TestValue", "inputs": {"value": value}},
            "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}


def slow_prompt(steps: int, delay: float) -> dict:
    return {"1": {"class_type": "TestSlow", "inputs": {"steps": steps, "delay": delay}},
            "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}


def raise_prompt(message: str = "boom") -> dict:
    return {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
            "2": {"class_type": "TestRaise", "inputs": {"value": ["1", 0], "message": message}},
            "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}


def image_prompt(prefix: str, width: int = 16, height: int = 8, color: int = 0x00FF00) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1,
                                                         "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def gzip_bomb(compressed_size: int = 2 * 1024 * 1024, block: int = 1 << 20) -> bytes:
    """A gzip stream of about `compressed_size` bytes that inflates ~1000-fold to zeros.

    After a full flush the compressor starts afresh, so every further block of zeros
    compresses to the same bytes: one block is compressed and repeated, which builds a
    2 GiB bomb in milliseconds. The trailer is left off; a server never gets that far.
    """
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = comp.compress(b"\0" * block) + comp.flush(zlib.Z_FULL_FLUSH)
    unit = comp.compress(b"\0" * block) + comp.flush(zlib.Z_FULL_FLUSH)
    return head + unit * max(1, (compressed_size - len(head)) // len(unit))


# -- client helpers -------------------------------------------------------------------------

def run(coro):
    return asyncio.run(coro)


async def post_json(session: aiohttp.ClientSession, url: str, body: Any, **kw) -> tuple[int, Any]:
    async with session.post(url, json=body, **kw) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


async def get_json(session: aiohttp.ClientSession, url: str, **kw) -> tuple[int, Any]:
    async with session.get(url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def queue(session: aiohttp.ClientSession, server: LiveServer, prompt: dict, client_id: str | None = None,
                **extra) -> str:
    body = {"prompt": prompt, **extra}
    if client_id:
        body["client_id"] = client_id
    status, doc = await post_json(session, server.url + "/prompt", body)
    assert status == 200, doc
    return doc["prompt_id"]


async def next_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30) -> dict:
    """The next text message, skipping binary frames."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"websocket closed: {msg}")


async def until_done(ws: aiohttp.ClientWebSocketResponse, prompt_id: str, timeout: float = 30,
                     binary: list | None = None) -> list[dict]:
    """Messages up to and including `executing {node: null}` for prompt_id; binary frames are
    appended to `binary` when given."""
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"prompt {prompt_id} did not finish; got {[m.get('type') for m in messages]}")
        msg = await asyncio.wait_for(ws.receive(), left)
        if msg.type == aiohttp.WSMsgType.BINARY:
            if binary is not None:
                binary.append(msg.data)
            continue
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"websocket closed: {msg}")
        doc = json.loads(msg.data)
        messages.append(doc)
        data = doc.get("data") or {}
        if doc["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return messages


async def wait_history(session: aiohttp.ClientSession, server: LiveServer, prompt_id: str,
                       timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, doc = await get_json(session, f"{server.url}/history/{prompt_id}")
        if status == 200 and prompt_id in doc:
            return doc[prompt_id]
        await asyncio.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} never reached the history")


def types(messages: list[dict], prompt_id: str | None = None) -> list[str]:
    return [m["type"] for m in messages
            if prompt_id is None or (m.get("data") or {}).get("prompt_id") in (prompt_id, None)]


# -- plain synchronous HTTP, for routes whose answers are small ------------------------------

def call(url: str, method: str = "GET", body: bytes | dict | list | None = None,
         headers: dict | None = None) -> tuple[int, object]:
    """(status, JSON body or raw bytes or None when empty)."""
    headers = dict(headers or {})
    data = body
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, ctype = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    if not raw:
        return status, None
    return status, json.loads(raw) if "json" in ctype else raw


def error_message(doc) -> str:
    assert isinstance(doc, dict) and isinstance(doc["error"]["message"], str) and doc["error"]["message"], doc
    return doc["error"]["message"]
