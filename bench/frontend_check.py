"""Failed requests and console errors of ComfyUI's official frontend, against our server or ComfyUI.

    python bench/frontend_check.py                      # ours, the pinned and the newest frontend
    python bench/frontend_check.py --server comfyui     # the same steps against ComfyUI
    python bench/frontend_check.py --versions 1.58.1 --repeat 3 --record out.json

Each round starts the server on a fresh base directory (so the frontend sees a first visit) and
takes the steps of tests/test_official_frontend.py in headless Chromium (Debian's
/usr/bin/chromium): load the frontend, open a text-to-image workflow, (ours only, with a tiny
checkpoint: pick it and run), save the workflow to the server, then open it from the Workflows
sidebar in a fresh browser context. It prints what failed (tests/official_frontend.py: PageLog);
--record writes the distinct failures and console errors per version (the test's expectations).
ComfyUI cannot load the tiny test checkpoint, so its rounds do not run the workflow. ComfyUI is
run from --comfyui with --comfyui-python (default: the checkout at /work/ref, where
../shared/tools/comfyui-reference puts it); both servers get the same --front-end-root.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.editor_helpers import VIEWPORT, launch, sync_playwright  # noqa: E402
from tests.official_frontend import (NEWEST, PINNED, PageLog, frontend_root, load_workflow, open_frontend,  # noqa: E402
                                     open_from_sidebar, press_run_and_watch, save_to_server, set_widget,
                                     txt2img_workflow)
from bench.comfyui_server import ComfyUIServer  # noqa: E402
from tests.server_helpers import LiveServer  # noqa: E402


CHECKPOINT = "tiny_sd15.safetensors"


def one_round(server_kind: str, version: str, args, playwright) -> list[PageLog]:
    root = frontend_root(version)
    with tempfile.TemporaryDirectory(prefix="frontend-check-") as tmp:
        base = Path(tmp)
        if server_kind == "comfyui":
            server = ComfyUIServer(base, Path(args.comfyui), args.comfyui_python, "--front-end-root", str(root)).start()
        else:
            from tests.models_tiny import write_tiny_full_checkpoint

            (base / "models" / "checkpoints").mkdir(parents=True)
            write_tiny_full_checkpoint(base / "models" / "checkpoints" / CHECKPOINT, "sd15")
            server = LiveServer(base, "--front-end-root", str(root), packs=()).start()
        host = server.url.split("//", 1)[1]
        browser = launch(playwright)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(60000)
            logs = [PageLog(host).attach(page)]
            open_frontend(page, server.url + "/", settle_ms=args.settle_ms)
            load_workflow(page, txt2img_workflow())
            if server_kind == "ours" and not args.no_run:
                set_widget(page, 4, "ckpt_name", CHECKPOINT)
                press_run_and_watch(page)
            save_to_server(page)
            context.close()
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(60000)
            logs.append(PageLog(host).attach(page))
            open_frontend(page, server.url + "/", settle_ms=1000)
            open_from_sidebar(page)
            page.wait_for_timeout(args.settle_ms)
            return logs
        finally:
            browser.close()
            server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", choices=["ours", "comfyui"], default="ours")
    p.add_argument("--versions", nargs="+", default=[PINNED, NEWEST])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--settle-ms", type=int, default=3000)
    p.add_argument("--no-run", action="store_true", help="ours: skip the run too, to compare with ComfyUI step for step")
    p.add_argument("--record", type=Path, help="write the distinct failures per version to this JSON file")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI", "/work/ref/ComfyUI"))
    p.add_argument("--comfyui-python", default=os.environ.get("COMFYUI_PYTHON", "/work/ref/venv/bin/python"))
    args = p.parse_args()
    record = {}
    with sync_playwright() as playwright:
        for version in args.versions:
            failed, console, hosts, counts = set(), set(), set(), []
            for round_no in range(1, args.repeat + 1):
                logs = one_round(args.server, version, args, playwright)
                total = {k: sum(log.counts()[k] for log in logs) for k in logs[0].counts()}
                counts.append(total)
                print(f"{args.server} + frontend {version} (round {round_no}): "
                      + ", ".join(f"{v} {k}" for k, v in total.items()), flush=True)
                for log in logs:
                    for line in log.failed + log.external:
                        print(f"    request: {line}")
                    for line in log.console:
                        print(f"    console: {line[:200]}")
                    failed |= set(log.failed)
                    console |= log.kinds()
                    hosts |= log.external_hosts()
            record[version] = {"counts": counts, "failed": sorted(failed), "console": sorted(console),
                               "external_hosts": sorted(hosts)}
    if args.record:
        note = (f"Made by: python bench/frontend_check.py --server {args.server} --versions "
                f"{' '.join(args.versions)} --repeat {args.repeat} --record {args.record}")
        args.record.write_text(json.dumps({"_note": note, **record}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
