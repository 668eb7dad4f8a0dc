"""/users, /settings, /userdata and /v2/userdata against a real server: ComfyUI's shapes, errors
with messages, paths that never leave the user's folder, and users who never see each other's
files. The shapes were checked against ComfyUI a125cd84 run with the same requests."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from tests.server_helpers import LiveServer, call, error_message


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("userdata"), packs=()) as srv:
        yield srv
    assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("multi"), "--multi-user", packs=()) as srv:
        yield srv
    assert "Traceback" not in srv.log(), srv.log()


def user_dir(srv: LiveServer, user: str = "default") -> Path:
    return srv.base / "user" / user


# -- settings ------------------------------------------------------------------------------

def test_settings_merge_persist_and_read_back_as_comfyui(server):
    api = server.url + "/api"
    assert call(api + "/settings") == (200, {})
    assert call(api + "/settings/Comfy.Missing") == (200, None)  # JSON null
    # the frontend posts settings as text/plain JSON; that must be accepted
    assert call(api + "/settings", "POST", b'{"Comfy.A": 1, "Comfy.B": [1, 2]}',
                {"Content-Type": "text/plain;charset=UTF-8"}) == (200, None)
    assert call(api + "/settings/Comfy.B", "POST", b'{"deep": true}') == (200, None)
    assert call(api + "/settings/Comfy.Null", "POST", b"null") == (200, None)
    assert call(api + "/settings") == (200, {"Comfy.A": 1, "Comfy.B": {"deep": True}, "Comfy.Null": None})
    assert call(api + "/settings/Comfy.A") == (200, 1)
    on_disk = json.loads((user_dir(server) / "comfy.settings.json").read_text())
    assert on_disk == {"Comfy.A": 1, "Comfy.B": {"deep": True}, "Comfy.Null": None}


def test_concurrent_setting_posts_all_land(server):
    api = server.url + "/api"
    threads = [threading.Thread(target=call, args=(f"{api}/settings/Race.{i}", "POST", str(i).encode()))
               for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    settings = call(api + "/settings")[1]
    assert all(settings[f"Race.{i}"] == i for i in range(24)), settings


@pytest.mark.parametrize("path, body, fragment", [
    ("/settings", b"[1, 2]", "JSON object"),
    ("/settings", b"{not json", "not valid JSON"),
    ("/settings", b"", "empty"),
    ("/settings/Comfy.A", b"", "empty"),
    ("/settings/Comfy.A", b"NaN", "not valid JSON"),
])
def test_bad_settings_bodies_are_400_with_a_message(server, path, body, fragment):
    before = call(server.url + "/api/settings")[1]
    status, doc = call(server.url + "/api" + path, "POST", body)
    assert status == 400 and fragment in error_message(doc)
    assert call(server.url + "/api/settings")[1] == before


# -- userdata ------------------------------------------------------------------------------

def test_userdata_store_read_list_move_delete(server):
    api = server.url + "/api"
    workflow = b'{"nodes": [], "links": []}'
    assert call(api + "/userdata/workflows%2Fa.json", "POST", workflow) == (200, "workflows/a.json")
    status, info = call(api + "/userdata/workflows%2Fsub%2Fb.json?full_info=true", "POST", b"{}")
    assert status == 200 and info["path"] == "workflows/sub/b.json" and info["size"] == 2
    assert set(info) == {"path", "size", "modified", "created"} and isinstance(info["modified"], float)
    assert call(api + "/userdata/workflows%2Fa.json") == (200, json.loads(workflow))
    assert (user_dir(server) / "workflows" / "a.json").read_bytes() == workflow

    assert call(api + "/userdata?dir=workflows") == (200, ["a.json"])
    assert call(api + "/userdata?dir=workflows&recurse=true") == (200, ["a.json", "sub/b.json"])
    assert call(api + "/userdata?dir=workflows&recurse=true&split=true") == \
        (200, [["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]])
    status, full = call(api + "/userdata?dir=workflows&recurse=true&full_info=true")
    assert [f["path"] for f in full] == ["a.json", "sub/b.json"] and full[0]["size"] == len(workflow)

    status, tree = call(api + "/v2/userdata?path=workflows")
    assert status == 200
    assert [(e["type"], e["path"]) for e in tree] == [("directory", "workflows/sub"), ("file", "workflows/a.json"),
                                                      ("file", "workflows/sub/b.json")]
    assert set(tree[1]) == {"name", "path", "type", "size", "modified"} and tree[1]["name"] == "a.json"

    # overwrite=false keeps the existing file: 409
    status, doc = call(api + "/userdata/workflows%2Fa.json?overwrite=false", "POST", b"{}")
    assert status == 409 and "already exists" in error_message(doc)
    assert call(api + "/userdata/workflows%2Fa.json")[1] == json.loads(workflow)
    # the frontend sends overwrite=undefined when it does not care: that overwrites, as in ComfyUI
    assert call(api + "/userdata/workflows%2Fsub%2Fb.json?overwrite=undefined", "POST", b"[]")[0] == 200

    # move: onto an existing name only with overwrite
    status, doc = call(api + "/userdata/workflows%2Fa.json/move/workflows%2Fsub%2Fb.json?overwrite=false", "POST")
    assert status == 409 and "already exists" in error_message(doc)
    assert call(api + "/userdata/workflows%2Fa.json/move/workflows%2Fc.json?overwrite=false", "POST") == \
        (200, "workflows/c.json")
    status, info = call(api + "/userdata/workflows%2Fc.json/move/moved%2Fd.json?full_info=true", "POST")
    assert status == 200 and info["path"] == "moved/d.json" and info["size"] == len(workflow)
    assert call(api + "/userdata/workflows%2Fa.json")[0] == 404

    assert call(api + "/userdata/moved%2Fd.json", "DELETE") == (204, None)
    status, doc = call(api + "/userdata/moved%2Fd.json", "DELETE")
    assert status == 404 and "moved/d.json" in error_message(doc)


def test_userdata_listing_errors_and_edge_cases(server):
    api = server.url + "/api"
    status, doc = call(api + "/userdata")
    assert status == 400 and "'dir' is required" in error_message(doc)
    status, doc = call(api + "/userdata?dir=no-such-folder")
    assert status == 404 and "no-such-folder" in error_message(doc)
    status, doc = call(api + "/v2/userdata?path=no-such-folder")
    assert status == 404 and "no-such-folder" in error_message(doc)
    call(api + "/userdata/notes%2Fone.txt", "POST", b"hello")
    status, doc = call(api + "/v2/userdata?path=notes%2Fone.txt")
    assert status == 400 and "not a directory" in error_message(doc)
    status, doc = call(api + "/userdata/notes", "POST", b"x")  # an existing folder
    assert status == 400 and "folder" in error_message(doc)
    status, doc = call(api + "/userdata/notes%2Fone.txt%2Fdeeper.txt", "POST", b"x")  # a file as a folder
    assert status == 400 and "notes/one.txt/deeper.txt" in error_message(doc)
    status, doc = call(api + "/userdata/notes%2Fmissing.txt/move/x.txt", "POST")
    assert status == 404 and "missing.txt" in error_message(doc)
    # dotfiles (and our in-flight temporary files) stay out of the v1 listing, as glob's
    (user_dir(server) / "notes" / ".hidden").write_text("x")
    assert call(api + "/userdata?dir=notes") == (200, ["one.txt"])
    # stored bytes come back unchanged whatever they are
    blob = bytes(range(256))
    assert call(api + "/userdata/notes%2Fblob.bin", "POST", blob)[0] == 200
    assert call(api + "/userdata/notes%2Fblob.bin") == (200, blob)


@pytest.mark.parametrize("request_path", [
    "/userdata/..%2F..%2Fsecret.txt",
    "/userdata/%2Fetc%2Fpasswd",
    "/userdata/..%5C..%5Csecret.txt",
    "/userdata/a%00b",
    "/userdata/%252e%252e%252fsecret.txt",  # encoded twice: decoded again, as ComfyUI does, and refused
    "/userdata?dir=..",
    "/userdata?dir=..%2F..",
    "/v2/userdata?path=..",
    "/userdata/notes%2Fone.txt/move/..%2F..%2Fsecret.txt",
])
def test_traversal_is_refused(server, request_path):
    secret = server.base / "secret.txt"
    secret.write_text("outside")
    call(server.url + "/api/userdata/notes%2Fone.txt", "POST", b"hello")
    methods = ("POST",) if "/move/" in request_path else ("GET",) if "?" in request_path else ("GET", "POST", "DELETE")
    for method in methods:
        status, doc = call(server.url + "/api" + request_path, method, b"overwritten" if method == "POST" else None)
        assert status in (400, 403), (method, status, doc)
        error_message(doc)
    assert secret.read_text() == "outside"
    assert (user_dir(server) / "notes" / "one.txt").read_text() == "hello"


def test_a_symlink_out_of_the_user_folder_is_not_followed(server):
    outside = server.base / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "private.json").write_text('{"secret": 1}')
    os.symlink(outside, user_dir(server) / "link", target_is_directory=True)
    api = server.url + "/api"
    status, doc = call(api + "/userdata/link%2Fprivate.json")
    assert status == 403 and error_message(doc)
    assert call(api + "/userdata/link%2Fnew.json", "POST", b"{}")[0] == 403
    assert call(api + "/userdata?dir=link")[0] == 403
    assert not (outside / "new.json").exists()
    assert "link" not in [e["name"] for e in call(api + "/v2/userdata")[1]]


def test_single_user_server_reports_server_storage(server):
    status, doc = call(server.url + "/api/users")
    assert status == 200 and doc == {"storage": "server", "migrated": True}  # earlier tests wrote files
    status, doc = call(server.url + "/api/users", "POST", {"username": "bob"})
    assert status == 400 and "--multi-user" in doc["error"]


def test_userdata_writes_are_refused_cross_site(server):
    status, doc = call(server.url + "/api/userdata/x.json", "POST", b"{}", {"Origin": "http://evil.example"})
    assert status == 403 and "Cross-origin" in error_message(doc)
    status, doc = call(server.url + "/api/settings", "POST", b"{}", {"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    assert not (user_dir(server) / "x.json").exists()


def test_settings_and_files_survive_a_restart(tmp_path):
    with LiveServer(tmp_path, packs=()) as srv:
        call(srv.url + "/api/settings/Comfy.Kept", "POST", b'"yes"')
        call(srv.url + "/api/userdata/workflows%2Fkept.json", "POST", b'{"kept": true}')
    with LiveServer(tmp_path, packs=()) as srv:
        assert call(srv.url + "/api/settings/Comfy.Kept") == (200, "yes")
        assert call(srv.url + "/api/userdata/workflows%2Fkept.json") == (200, {"kept": True})
        assert call(srv.url + "/api/users")[1] == {"storage": "server", "migrated": True}


# -- multiple users --------------------------------------------------------------------------

def test_multi_user_profiles_keep_their_data_apart(multi):
    api = multi.url + "/api"
    assert call(api + "/users") == (200, {"storage": "server", "users": {}})
    status, alice = call(api + "/users", "POST", {"username": "Alice Smith"})
    assert status == 200 and alice.startswith("Alice-Smith_")
    bob = call(api + "/users", "POST", {"username": "bob"})[1]
    assert call(api + "/users")[1] == {"storage": "server", "users": {alice: "Alice Smith", bob: "bob"}}
    assert call(api + "/users", "POST", {"username": "bob"}) == (400, {"error": "Duplicate username."})
    assert call(api + "/users", "POST", {"username": "  "})[0] == 400
    assert json.loads((multi.base / "user" / "users.json").read_text()) == {alice: "Alice Smith", bob: "bob"}

    as_alice, as_bob = {"Comfy-User": alice}, {"Comfy-User": bob}
    assert call(api + "/userdata/workflows%2Fmine.json", "POST", b'{"a": 1}', as_alice)[0] == 200
    call(api + "/settings/Comfy.Theme", "POST", b'"dark"', as_alice)
    assert (multi.base / "user" / alice / "workflows" / "mine.json").is_file()

    assert call(api + "/userdata/workflows%2Fmine.json", headers=as_bob)[0] == 404
    assert call(api + "/userdata?dir=workflows", headers=as_bob)[0] == 404
    assert call(api + "/v2/userdata", headers=as_bob) == (200, [])
    assert call(api + "/settings", headers=as_bob) == (200, {})
    assert call(api + "/userdata/..%2F" + alice + "%2Fworkflows%2Fmine.json", headers=as_bob)[0] == 400
    assert call(api + "/settings", headers=as_alice) == (200, {"Comfy.Theme": "dark"})

    for headers in ({}, {"Comfy-User": "nobody"}, {"Comfy-User": "../" + alice}, {"Comfy-User": "default"}):
        status, doc = call(api + "/userdata/workflows%2Fmine.json", headers=headers)
        assert status == 403 and "Unknown user" in error_message(doc), headers
        assert call(api + "/settings", headers=headers)[0] == 403
        assert call(api + "/userdata/x.json", "POST", b"{}", headers)[0] == 403


def test_without_the_templates_package_the_template_index_is_empty(server):
    from server.frontend import template_roots

    status, doc = call(server.url + "/templates/index.json")
    if template_roots():  # comfyui-workflow-templates is installed here: its index is served
        assert status == 200 and isinstance(doc, list) and doc
        return
    assert (status, doc) == (200, [])
    status, doc = call(server.url + "/templates/default.json")
    assert status == 404 and "comfyui-workflow-templates is not installed" in error_message(doc)
    status, doc = call(server.url + "/docs/KSampler/en.md")
    assert status == 404 and "comfyui-embedded-docs" in error_message(doc)
