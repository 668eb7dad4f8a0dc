"""/view and uploads: folders are never escaped, clashes are numbered, masks land in alpha."""
import io
import json
import os
from urllib.parse import quote

import aiohttp
import pytest
import yarl
from PIL import Image, PngImagePlugin

from tests.server_helpers import LiveServer, run

SECRET = "TOP-SECRET-CONTENT"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    base = root / "base"
    base.mkdir()
    (root / "secret.txt").write_text(SECRET)
    (root / "secret.png").write_bytes(png((255, 0, 0)))
    with LiveServer(base) as srv:
        inp = base / "input"
        os.symlink(root / "secret.txt", inp / "leak.png")
        os.symlink(root / "secret.png", inp / "leak2.png")
        os.symlink(root, inp / "outdir")
        yield srv, root, base


def png(color, size=(8, 8), mode="RGB", text=None) -> bytes:
    buf = io.BytesIO()
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for k, v in text.items():
            info.add_text(k, v)
    Image.new(mode, size, color).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def outside_snapshot(root, base) -> dict:
    """Every file outside the base directory, with its content."""
    out = {}
    for dirpath, _, files in os.walk(root):
        if dirpath.startswith(str(base)):
            continue
        for f in files:
            p = os.path.join(dirpath, f)
            out[p] = open(p, "rb").read()
    return out


def multipart(data: bytes, filename: str, fields: dict) -> tuple[bytes, str]:
    """A multipart body built by hand: clients differ in how they escape odd file names, and
    RFC 5987's filename* delivers any name to the server exactly."""
    boundary = "lg-test-boundary-7d1f"
    body = b""
    for key, value in fields.items():
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n').encode()
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
             f"filename*=UTF-8''{quote(filename, safe='')}\r\nContent-Type: image/png\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def upload(s, srv, data: bytes, filename: str, route="/upload/image", **fields) -> tuple[int, dict]:
    body, ctype = multipart(data, filename, fields)
    async with s.post(srv.url + route, data=body, headers={"Content-Type": ctype}) as resp:
        return resp.status, await resp.json(content_type=None)


async def raw_get(s, srv, query: str) -> tuple[int, bytes]:
    async with s.get(yarl.URL(f"{srv.url}/view?{query}", encoded=True)) as resp:
        return resp.status, await resp.read()


VIEW_ATTACKS = [
    "filename=../secret.txt&type=input",
    "filename=..%2Fsecret.txt&type=input",
    "filename=%2e%2e%2f%2e%2e%2fsecret.txt&type=input",
    "filename=%2e%2e/%2e%2e/secret.txt",
    "filename=secret.txt&subfolder=..&type=input",
    "filename=secret.txt&subfolder=%2e%2e&type=output",
    "filename=secret.txt&subfolder=../..&type=temp",
    "filename=..%5Csecret.txt&type=input",
    "filename=secret.txt&subfolder=..%5C&type=input",
    "filename=%2Fetc%2Fpasswd",
    "filename=leak.png&type=input",
    "filename=leak.png%20%5Binput%5D",
    "filename=secret.txt&subfolder=outdir&type=input",
    "filename=secret.txt%00.png&type=input",
    "filename=x.png&subfolder=a%00b&type=input",
    "filename=secret.txt&type=..%2F..",
    "filename=C:secret.txt&type=input",
]


def test_view_refuses_every_way_out_of_its_folder(env):
    srv, root, base = env

    async def go():
        async with aiohttp.ClientSession() as s:
            for attack in VIEW_ATTACKS + [f"filename={root / 'secret.txt'}&type=input"]:
                status, body = await raw_get(s, srv, attack)
                assert status in (400, 403), (attack, status, body)
                assert SECRET.encode() not in body
                assert json.loads(body)["error"]["type"] in ("invalid_path", "forbidden_path", "invalid_request")
            status, _ = await raw_get(s, srv, "filename=nothing.png")
            assert status == 404  # and the server still answers
    run(go())


def test_uploads_refuse_escapes_and_write_nothing_outside(env):
    srv, root, base = env
    before = outside_snapshot(root, base)
    image = png((1, 2, 3))

    async def go():
        async with aiohttp.ClientSession() as s:
            attempts = [
                dict(filename="../evil.png"),
                dict(filename="..\\evil.png"),
                dict(filename="sub/../../evil.png"),
                dict(filename=str(root / "evil.png")),
                dict(filename="evil.png", subfolder="../.."),
                dict(filename="evil.png", subfolder=".."),
                dict(filename="evil.png", subfolder="a\\..\\.."),
                dict(filename="evil.png", subfolder="outdir"),
                dict(filename="evil.png", subfolder="outdir/deeper"),
                dict(filename="leak.png"),
                dict(filename="leak.png", overwrite="true"),
                dict(filename="leak2.png"),
                dict(filename="evil.png", type="../../"),
                dict(filename="ev\x00il.png"),
            ]
            for attempt in attempts:
                name = attempt.pop("filename")
                status, doc = await upload(s, srv, image, name, **attempt)
                assert status in (400, 403), (name, attempt, status, doc)
            ref = json.dumps({"filename": "../secret.png", "type": "input"})
            status, _ = await upload(s, srv, image, "m.png", route="/upload/mask", original_ref=ref)
            assert status == 400
            ref = json.dumps({"filename": "leak2.png", "type": "input"})
            status, _ = await upload(s, srv, image, "m.png", route="/upload/mask", original_ref=ref)
            assert status == 403
    run(go())
    assert outside_snapshot(root, base) == before
    assert os.path.islink(base / "input" / "leak.png")  # not replaced either
    assert not list((base / "input").glob("evil*")) and not list((base / "input").glob("m*.png"))


def test_upload_clashes_are_numbered_identical_content_reused_and_overwrite_replaces(env):
    srv, root, base = env
    red, green, blue = png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255))

    async def go():
        async with aiohttp.ClientSession() as s:
            assert await upload(s, srv, red, "photo.png") == (200, {"name": "photo.png", "subfolder": "",
                                                                    "type": "input"})
            assert (await upload(s, srv, red, "photo.png"))[1]["name"] == "photo.png"
            assert (await upload(s, srv, green, "photo.png"))[1]["name"] == "photo (1).png"
            assert (await upload(s, srv, blue, "photo.png"))[1]["name"] == "photo (2).png"
            assert (await upload(s, srv, green, "photo.png"))[1]["name"] == "photo (1).png"
            assert (await upload(s, srv, blue, "photo.png", overwrite="true"))[1]["name"] == "photo.png"
            status, doc = await upload(s, srv, red, "nested.png", subfolder="a/b", type="temp")
            assert (status, doc) == (200, {"name": "nested.png", "subfolder": "a/b", "type": "temp"})
            async with s.get(srv.url + "/view", params={"filename": "nested.png", "subfolder": "a/b",
                                                        "type": "temp"}) as resp:
                assert resp.status == 200 and await resp.read() == red
    run(go())
    inp = base / "input"
    assert (inp / "photo.png").read_bytes() == blue
    assert (inp / "photo (1).png").read_bytes() == green
    assert (inp / "photo (2).png").read_bytes() == blue
    assert not list(inp.glob(".upload-*"))


def test_only_real_images_are_accepted(env):
    srv, root, base = env

    async def go():
        async with aiohttp.ClientSession() as s:
            status, doc = await upload(s, srv, b"<html><script>alert(1)</script></html>", "page.png")
            assert status == 400 and doc["error"]["type"] == "invalid_image"
            status, doc = await upload(s, srv, png((0, 0, 0)), "page.html")
            assert status == 400 and doc["error"]["type"] == "invalid_image"
            status, doc = await upload(s, srv, png((0, 0, 0))[:40], "cut.png")
            assert status == 400
            async with s.post(srv.url + "/upload/image", json={"image": "x"}) as resp:
                assert resp.status == 415
            form = aiohttp.FormData(default_to_multipart=True)
            form.add_field("other", "x")
            async with s.post(srv.url + "/upload/image", data=form) as resp:
                assert resp.status == 400
    run(go())
    assert not (base / "input" / "page.png").exists() and not (base / "input" / "page.html").exists()


def test_mask_upload_writes_the_mask_into_the_originals_alpha(env):
    srv, root, base = env
    (base / "output" / "orig.png").write_bytes(png((10, 20, 30), (6, 4), text={"workflow": '{"nodes": []}'}))
    mask = Image.new("RGBA", (6, 4), (0, 0, 0, 255))
    for x in range(3):
        for y in range(4):
            mask.putpixel((x, y), (0, 0, 0, 0))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")

    async def go():
        async with aiohttp.ClientSession() as s:
            ref = json.dumps({"filename": "orig.png", "subfolder": "", "type": "output"})
            status, doc = await upload(s, srv, buf.getvalue(), "clipspace-mask.png", route="/upload/mask",
                                       original_ref=ref, subfolder="clipspace")
            assert (status, doc) == (200, {"name": "clipspace-mask.png", "subfolder": "clipspace", "type": "input"})
    run(go())
    with Image.open(base / "input" / "clipspace" / "clipspace-mask.png") as merged:
        assert merged.mode == "RGBA" and merged.size == (6, 4)
        assert merged.getpixel((0, 0)) == (10, 20, 30, 0) and merged.getpixel((5, 3)) == (10, 20, 30, 255)
        assert merged.info.get("workflow") == '{"nodes": []}'


def test_browser_executable_files_are_served_as_attachments(env):
    srv, root, base = env
    (base / "output" / "page.html").write_text("<script>alert(1)</script>")
    (base / "output" / "pic.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>")
    (base / "output" / "code.js").write_text("alert(1)")

    async def go():
        async with aiohttp.ClientSession() as s:
            for name in ("page.html", "pic.svg", "code.js"):
                async with s.get(srv.url + "/view", params={"filename": name}) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"] == "application/octet-stream"
                    assert resp.headers["Content-Disposition"].startswith("attachment")
                    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    run(go())
