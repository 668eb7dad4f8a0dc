"""The routes ComfyUI's official frontend reads besides the API proper, against a real server:
templates and node docs from their pip packages, node packs' example workflows and
translations, the model library, the console log, file lists, and the web-root flags.

The frontend's pip packages are stood in for by small packages of the same layout on the
server's PYTHONPATH, so the discovery of installed packages is what is tested."""
from __future__ import annotations

import base64
import io
import json
import os
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from app.args import parse_args
from server import frontend
from tests.server_helpers import LiveServer, call, error_message, next_json, run

PACK_INIT = textwrap.dedent('''\
    class RoutePrint:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"default": "hi"})}}
        RETURN_TYPES = ()
        FUNCTION = "go"
        OUTPUT_NODE = True
        CATEGORY = "test"

        def go(self, text):
            print(f"route pack says {text}")
            return {"ui": {"text": [text]}}

    NODE_CLASS_MAPPINGS = {"RoutePrint": RoutePrint}
''')


def png_bytes(color=(255, 0, 0)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, format="PNG")
    return out.getvalue()


def make_packages(site: Path) -> None:
    """Stand-ins for comfyui-workflow-templates (one-package and split layouts) and
    comfyui-embedded-docs, with dist-info so their versions are found."""
    templates = site / "comfyui_workflow_templates" / "templates"
    templates.mkdir(parents=True)
    (site / "comfyui_workflow_templates" / "__init__.py").write_text("")
    (templates / "index.json").write_text(json.dumps([{"moduleName": "default", "templates": [{"name": "basic"}]}]))
    (templates / "basic.json").write_text('{"nodes": []}')
    (templates / "basic-1.webp").write_bytes(b"RIFF0000WEBP")
    media = site / "comfyui_workflow_templates_media_image" / "templates"  # a namespace package
    media.mkdir(parents=True)
    (media / "split-1.webp").write_bytes(b"RIFF1111WEBP")
    dist = site / "comfyui_workflow_templates-0.1.95.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: comfyui-workflow-templates\nVersion: 0.1.95\n")
    docs = site / "comfyui_embedded_docs" / "docs" / "KSampler"
    docs.mkdir(parents=True)
    (site / "comfyui_embedded_docs" / "__init__.py").write_text("")
    (docs / "en.md").write_text("# KSampler\n")


def make_packs(base: Path) -> None:
    pack = base / "custom_nodes" / "lg_route_pack"
    (pack / "example_workflows").mkdir(parents=True)
    (pack / "__init__.py").write_text(PACK_INIT)
    (pack / "example_workflows" / "demo.json").write_text('{"demo": true}')
    (pack / "examples").mkdir()
    (pack / "examples" / "other.json").write_text('{"other": true}')
    (pack / "locales" / "en").mkdir(parents=True)
    (pack / "locales" / "en" / "main.json").write_text(json.dumps({"greeting": "hello", "list": [1]}))
    (pack / "locales" / "en" / "nodeDefs.json").write_text(json.dumps({"RoutePrint": {"display_name": "Print"}}))
    (pack / "locales" / "fr" / "main.json").parent.mkdir(parents=True)
    (pack / "locales" / "fr" / "main.json").write_text(json.dumps({"greeting": "bonjour"}))
    second = base / "custom_nodes" / "lg_route_pack2"
    (second / "locales" / "en").mkdir(parents=True)
    (second / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\nWEB_DIRECTORY = './web'\n")
    (second / "web").mkdir()
    (second / "locales" / "en" / "main.json").write_text(json.dumps({"list": [2], "other": {"x": 1}}))


def make_models(base: Path) -> None:
    import torch
    from safetensors.torch import save_file

    checkpoints = base / "models" / "checkpoints"
    (checkpoints / "sub").mkdir(parents=True)
    cover = base64.b64encode(png_bytes((0, 0, 255))).decode()
    save_file({"w": torch.zeros(2)}, str(checkpoints / "a.safetensors"),
              metadata={"ssmd_cover_images": json.dumps([cover])})
    (checkpoints / "sub" / "b.ckpt").write_bytes(b"x" * 10)
    (checkpoints / "sub" / "b.preview.png").write_bytes(png_bytes((0, 255, 0)))
    (checkpoints / ".hidden.safetensors").write_bytes(b"x")
    (checkpoints / "notes.txt").write_text("not a model")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("frontend_routes")
    site = base / "site"
    make_packages(site)
    make_packs(base)
    make_models(base)
    web_root = base / "webroot"
    (web_root / "assets").mkdir(parents=True)
    (web_root / "index.html").write_text("<!doctype html><title>another frontend</title>")
    (web_root / "assets" / "app.js").write_text("export const ok = 1;\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    with LiveServer(base, "--front-end-root", str(web_root), packs=(), env=env) as srv:
        yield srv
    assert "Traceback" not in srv.log(), srv.log()


# -- templates, docs, packs' workflows and translations -----------------------------------------

def test_templates_are_served_from_the_installed_packages(server):
    status, index = call(server.url + "/templates/index.json")
    assert status == 200 and index[0]["templates"] == [{"name": "basic"}]
    assert call(server.url + "/templates/basic.json") == (200, {"nodes": []})
    assert call(server.url + "/templates/basic-1.webp") == (200, b"RIFF0000WEBP")
    assert call(server.url + "/templates/split-1.webp") == (200, b"RIFF1111WEBP")  # split layout's bundle
    status, doc = call(server.url + "/templates/missing.json")
    assert status == 404 and "missing.json" in error_message(doc)
    for bad in ("..%2F..%2Fcomfyui_embedded_docs%2F__init__.py", "%2Fetc%2Fpasswd"):
        assert call(server.url + "/templates/" + bad)[0] in (400, 403, 404)


def test_node_docs_come_from_the_embedded_docs_package(server):
    assert call(server.url + "/docs/KSampler/en.md") == (200, b"# KSampler\n")
    assert call(server.url + "/docs/KSampler/xx.md")[0] == 404
    assert call(server.url + "/docs/..%2F__init__.py")[0] in (400, 403)


def test_pack_example_workflows_are_listed_and_served(server):
    assert call(server.url + "/api/workflow_templates") == (200, {"lg_route_pack": ["demo", "other"]})
    assert call(server.url + "/workflow_templates")[0] == 200
    assert call(server.url + "/api/workflow_templates/lg_route_pack/demo.json") == (200, {"demo": True})
    assert call(server.url + "/api/workflow_templates/lg_route_pack/other.json") == (200, {"other": True})
    assert call(server.url + "/api/workflow_templates/no_pack/demo.json")[0] == 404
    assert call(server.url + "/api/workflow_templates/lg_route_pack/..%2F__init__.py")[0] in (400, 403)


def test_i18n_merges_the_packs_locales(server):
    status, doc = call(server.url + "/api/i18n")
    assert status == 200
    assert doc == {"en": {"greeting": "hello", "list": [1, 2], "nodeDefs": {"RoutePrint": {"display_name": "Print"}},
                          "other": {"x": 1}},
                   "fr": {"greeting": "bonjour"}}


# -- model library ------------------------------------------------------------------------------

def test_experiment_models_lists_folders_and_files(server):
    status, folders = call(server.url + "/api/experiment/models")
    assert status == 200
    names = [f["name"] for f in folders]
    assert "checkpoints" in names and "loras" in names and "configs" not in names and "custom_nodes" not in names
    checkpoints = next(f for f in folders if f["name"] == "checkpoints")
    assert checkpoints["folders"][0] == str(server.base / "models" / "checkpoints")
    status, files = call(server.url + "/api/experiment/models/checkpoints")
    assert status == 200
    assert [(f["name"], f["pathIndex"]) for f in files] == [("a.safetensors", 0), ("sub/b.ckpt", 0)]
    assert set(files[1]) == {"name", "pathIndex", "modified", "created", "size"} and files[1]["size"] == 10
    status, doc = call(server.url + "/api/experiment/models/no_such_folder")
    assert status == 404 and "no_such_folder" in error_message(doc)
    assert call(server.url + "/api/experiment/models/configs")[0] == 404


def test_model_previews_are_webp(server):
    def preview(path):
        status, body = call(server.url + "/api/experiment/models/preview/checkpoints/" + path)
        assert status == 200, body
        img = Image.open(io.BytesIO(body))
        assert img.format == "WEBP"
        return img.convert("RGB").getpixel((1, 1))

    def near(a, b):  # WebP is lossy
        return all(abs(x - y) <= 8 for x, y in zip(a, b))

    assert near(preview("0/sub/b.ckpt"), (0, 255, 0))  # b.preview.png beside it
    assert near(preview("0/a.safetensors"), (0, 0, 255))  # the cover image in its metadata
    assert call(server.url + "/api/experiment/models/preview/checkpoints/0/notes.txt")[0] == 404
    status, doc = call(server.url + "/api/experiment/models/preview/checkpoints/5/a.safetensors")
    assert status == 400 and "path index" in error_message(doc)
    assert call(server.url + "/api/experiment/models/preview/checkpoints/0/..%2F..%2Fx.png")[0] == 400


# -- internal routes ------------------------------------------------------------------------------

def test_internal_logs_hold_the_console_and_stream_to_subscribers(server):
    status, text = call(server.url + "/internal/logs")
    assert status == 200 and "To see the GUI go to" in text
    status, raw = call(server.url + "/internal/logs/raw")
    assert set(raw) == {"entries", "size"} and set(raw["size"]) == {"cols", "rows"}
    assert all(set(e) == {"t", "m"} for e in raw["entries"])
    assert call(server.url + "/api/internal/logs")[0] == 404  # no /api twin, as in ComfyUI

    async def go():
        async with aiohttp.ClientSession() as s, s.ws_connect(server.url + "/ws?clientId=logger") as ws:
            await next_json(ws)
            async with s.patch(server.url + "/internal/logs/subscribe",
                               json={"clientId": "logger", "enabled": True}) as resp:
                assert resp.status == 200 and await resp.read() == b""
            prompt = {"1": {"class_type": "RoutePrint", "inputs": {"text": "to the terminal"}}}
            async with s.post(server.url + "/prompt", json={"prompt": prompt}) as resp:
                assert resp.status == 200
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = await next_json(ws)
                if msg["type"] == "logs":
                    assert set(msg["data"]) == {"entries", "size"}
                    if any("route pack says to the terminal" in e["m"] for e in msg["data"]["entries"]):
                        return
            raise AssertionError("no logs message with the node's print")
    run(go())
    status, text = call(server.url + "/internal/logs")
    assert "route pack says to the terminal" in text


@pytest.mark.parametrize("body, fragment", [
    ({"clientId": "x"}, "'enabled'"), ({"enabled": True}, "'clientId'"), ([1], "JSON object")])
def test_bad_log_subscriptions_are_400(server, body, fragment):
    status, doc = call(server.url + "/internal/logs/subscribe", "PATCH", body)
    assert status == 400 and fragment in error_message(doc)


def test_internal_folder_paths_and_files(server):
    status, paths = call(server.url + "/internal/folder_paths")
    assert status == 200 and paths["checkpoints"][0] == str(server.base / "models" / "checkpoints")
    assert "custom_nodes" in paths and all(isinstance(v, list) for v in paths.values())
    output = server.base / "output"
    for i, name in enumerate(["old.png", "new.png"]):
        (output / name).write_bytes(b"x")
        os.utime(output / name, (1_000_000 + i, 1_000_000 + i))
    (output / "folder").mkdir(exist_ok=True)
    assert call(server.url + "/internal/files/output") == (200, ["new.png", "old.png"])
    status, doc = call(server.url + "/internal/files/models")
    assert status == 400 and "models" in error_message(doc)


# -- system_stats and the web root --------------------------------------------------------------

def test_system_stats_name_the_frontend_and_template_versions(server):
    system = call(server.url + "/api/system_stats")[1]["system"]
    assert system["required_frontend_version"] == frontend.REQUIRED_FRONTEND_VERSION == "1.27.10"
    assert system["installed_templates_version"] == "0.1.95"
    assert system["required_templates_version"] == frontend.REQUIRED_TEMPLATES_VERSION == "0.1.95"


def test_front_end_root_serves_another_web_root(server):
    assert b"another frontend" in call(server.url + "/")[1]
    assert call(server.url + "/assets/app.js")[1] == b"export const ok = 1;\n"
    assert call(server.url + "/assets/..%2F..%2Fsite%2Fcomfyui_embedded_docs%2F__init__.py")[0] in (400, 403)


def test_front_end_version_serves_the_installed_package(tmp_path, capsys):
    version, static = frontend.official_frontend()  # the test extra installs the pinned one
    assert parse_args(["--front-end-version", "Comfy-Org/ComfyUI_frontend@latest"]).web_root == static
    assert parse_args(["--front-end-version", f"Comfy-Org/ComfyUI_frontend@v{version}"]).web_root == static
    assert parse_args([]).web_root is None  # our editor by default
    for flags, fragment in [
        (["--front-end-version", "Comfy-Org/ComfyUI_frontend@0.0.1"], "pip install comfyui-frontend-package==0.0.1"),
        (["--front-end-version", "nonsense"], "owner/repo@version"),
        (["--front-end-version", "someone/other_frontend@latest"], "--front-end-root"),
        (["--front-end-root", str(tmp_path)], "has no index.html"),
    ]:
        with pytest.raises(SystemExit) as exc:
            parse_args(flags)
        assert exc.value.code == 2 and fragment in capsys.readouterr().err, flags
