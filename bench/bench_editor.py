"""Editor benchmark: open a 300-node workflow in the browser editor, then pan it.

    python bench/bench_editor.py            # 300 nodes
    python bench/bench_editor.py 600        # another size

Starts a real server, drives Debian's Chromium (/usr/bin/chromium, headless) with Playwright and
prints:
  * load: loadWorkflowData() of the workflow up to the first frame drawn with it, and a page
    reload with the workflow kept in localStorage up to the editor being ready and drawn;
  * pan: a scripted pan (pointer events dispatched from requestAnimationFrame, through the
    editor's own input handling) at 100 % zoom and zoomed out to show every node; frame times
    are requestAnimationFrame timestamp deltas, a dropped frame is a delta over 1.5x the
    display's frame interval, and draw is the time the editor spent drawing each frame.
Targets: load under 2 s; no dropped frames while panning.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.editor_helpers import CHROMIUM, VIEWPORT, launch, start_server, sync_playwright  # noqa: E402

PAN_FRAMES = 240

# Rows of the grid cycle through these chains: (first node, middle nodes, last node), each as
# (type, widgets_values, inputs, outputs); every node takes a link from its left neighbour.
CHAINS = [
    (("EmptyImage", [512, 512, 1, 0], [], [("IMAGE", "IMAGE")]),
     ("ImageScale", ["bilinear", 256, 256, "disabled"], [("image", "IMAGE")], [("IMAGE", "IMAGE")]),
     ("SaveImage", ["bench"], [("images", "IMAGE")], [])),
    (("TestValue", [7], [], [("INT", "INT")]),
     ("TestAdd", [1], [("a", "INT")], [("sum", "INT")]),
     ("TestOutput", [], [("value", "*")], [])),
    (("PrimitiveStringMultiline", ["a prompt\nover two lines"], [], [("STRING", "STRING")]),
     ("ShowText", [], [("text", "STRING")], [("STRING", "STRING")]),
     ("PreviewAny", [], [("source", "*")], [])),
    (("TestSampler", [1, 2, 3, 4, 42, "fixed", "fast"], [], [("INT", "INT")]),
     ("TestListIn", [2], [("values", "INT")], [("INT", "INT")]),
     ("TestOutput", [], [("value", "*")], [])),
]
COLUMNS = 20


def big_workflow(count: int) -> dict:
    """`count` nodes in a grid of chains, each node linked to its left neighbour."""
    nodes, links = [], []
    for index in range(count):
        col, row = index % COLUMNS, index // COLUMNS
        first, middle, last = CHAINS[row % len(CHAINS)]
        node_type, widgets, inputs, outputs = first if col == 0 else last if col == COLUMNS - 1 else middle
        node = {"id": index + 1, "type": node_type, "pos": [col * 340, row * 300], "size": [300, 240],
                "flags": {}, "order": index, "mode": 0,
                "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
                "properties": {}, "widgets_values": widgets}
        left = nodes[-1] if col > 0 else None
        if left and node["inputs"] and left["outputs"]:
            link_id = len(links) + 1
            links.append([link_id, left["id"], 0, node["id"], 0, left["outputs"][0]["type"]])
            left["outputs"][0]["links"].append(link_id)
            node["inputs"][0]["link"] = link_id
        nodes.append(node)
    return {"last_node_id": count, "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 1, "offset": [20, 60]}}, "version": 0.4}


LOAD_JS = """async (wf) => {
    const frame = () => new Promise((r) => requestAnimationFrame(r));
    await frame();
    const t0 = performance.now();
    lgApp.loadWorkflowData(wf, "bench");
    await frame();  // the frame that draws it
    await frame();
    return performance.now() - t0;
}"""

RELOAD_JS = """async () => {
    await lgApp.ready;
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    return performance.now();  // milliseconds since the navigation started
}"""

PAN_JS = """async ([frames, scale, step]) => {
    const canvas = lgApp.canvas;
    if (scale === "fit") canvas.fitView(); else canvas.setView({ scale, offset: [20, 60] });
    const el = canvas.el;
    const rect = el.getBoundingClientRect();
    let x = 0;
    // find empty canvas to press on, so the drag pans instead of moving a node
    let start = null;
    for (let sx = rect.left + rect.width - 10; sx > rect.left && !start; sx -= 25) {
        for (let sy = rect.top + rect.height - 10; sy > rect.top && !start; sy -= 25) {
            const [gx, gy] = canvas.toGraph(sx, sy);
            if (!canvas.nodeAt(gx, gy, 8) && !canvas.groupAt(gx, gy)) start = [sx, sy];
        }
    }
    if (!start) { canvas.offset[1] += 60; start = [rect.left + 10, rect.top + 10]; }
    x = start[0];
    const y0 = start[1];
    const inView = () => {
        const [gx, gy] = canvas.toGraph(rect.left, rect.top);
        const [gw, gh] = [rect.width / canvas.scale, rect.height / canvas.scale];
        return lgApp.graph.nodes.filter((node) => node.pos[0] + node.size[0] > gx && node.pos[0] < gx + gw
            && node.pos[1] + node.size[1] > gy && node.pos[1] - 30 < gy + gh).length;
    };
    const visible = inView();
    const stamps = [];
    const draws = [];
    await new Promise((done) => {
        let n = 0;
        const tick = (t) => {
            stamps.push(t);
            if (n > 0) draws.push(canvas.stats.lastDrawMs);
            if (n === 0) el.dispatchEvent(new PointerEvent("pointerdown", { pointerId: 7, bubbles: true, button: 0,
                buttons: 1, clientX: x, clientY: y0, isPrimary: true, pointerType: "mouse" }));
            else {
                x = start[0] - step * 60 * Math.sin((2 * Math.PI * n) / 120);  // back and forth
                el.dispatchEvent(new PointerEvent("pointermove", { pointerId: 7, bubbles: true, buttons: 1,
                    clientX: x, clientY: y0, isPrimary: true, pointerType: "mouse" }));
            }
            n += 1;
            if (n <= frames) requestAnimationFrame(tick);
            else {
                el.dispatchEvent(new PointerEvent("pointerup", { pointerId: 7, bubbles: true, button: 0, buttons: 0,
                    clientX: x, clientY: y0, isPrimary: true, pointerType: "mouse" }));
                done();
            }
        };
        requestAnimationFrame(tick);
    });
    return { stamps, draws, scale: canvas.scale, visible };
}"""


def frame_stats(stamps: list[float], draws: list[float]) -> dict:
    deltas = [b - a for a, b in zip(stamps, stamps[1:])]
    nominal = statistics.median(deltas)
    ordered = sorted(deltas)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    dropped = sum(max(0, round(d / nominal) - 1) for d in deltas if d > 1.5 * nominal)
    draw_sorted = sorted(draws)
    return {"frames": len(deltas), "nominal": nominal, "mean": statistics.fmean(deltas), "p95": p95, "max": max(deltas),
            "dropped": dropped, "draw_mean": statistics.fmean(draws), "draw_p95": draw_sorted[int(0.95 * (len(draws) - 1))]}


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    if not Path(CHROMIUM).exists() or sync_playwright is None:
        print(f"needs {CHROMIUM} and the playwright package", file=sys.stderr)
        return 2
    workflow = big_workflow(count)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "base")
        try:
            with sync_playwright() as playwright:
                browser = launch(playwright)
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(server.url + "/")
                page.evaluate("lgApp.ready")
                loads = [page.evaluate(LOAD_JS, workflow) for _ in range(3)]
                page.evaluate("lgApp.saveToBrowser()")
                page.reload()
                reload_ms = page.evaluate(RELOAD_JS)
                assert page.evaluate("lgApp.graph.nodes.length") == count
                links = page.evaluate("lgApp.graph.links.size")
                print(f"workflow: {count} nodes, {links} links; viewport {VIEWPORT['width']}x{VIEWPORT['height']}, "
                      f"Chromium {browser.version} headless")
                print(f"load: loadWorkflowData + first frame {min(loads):.0f} ms (best of 3; runs "
                      f"{', '.join(f'{x:.0f}' for x in loads)} ms); page reload to ready and drawn {reload_ms:.0f} ms")
                for label, scale, step in (("100% zoom", 1, 6), ("50% zoom", 0.5, 6), ("zoomed out to all nodes", "fit", 6)):
                    page.evaluate(PAN_JS, [30, scale, step])  # warm-up
                    result = page.evaluate(PAN_JS, [PAN_FRAMES, scale, step])
                    s = frame_stats(result["stamps"], result["draws"])
                    print(f"pan {label} (scale {result['scale']:.2f}, {result['visible']} nodes in view, "
                          f"{s['frames']} frames): frame mean {s['mean']:.1f} ms, p95 {s['p95']:.1f} ms, "
                          f"max {s['max']:.1f} ms, dropped {s['dropped']} (frame interval {s['nominal']:.1f} ms); "
                          f"draw mean {s['draw_mean']:.1f} ms, p95 {s['draw_p95']:.1f} ms")
                browser.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
