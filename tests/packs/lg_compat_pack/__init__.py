"""A test pack using ComfyUI's server API as real packs do: routes on PromptServer.instance at
import time (and one added while the server runs), a route put straight on the app, an on_prompt
handler, and a node that messages the client that queued it."""
import os

from aiohttp import web
from PIL import Image

from server import BinaryEventTypes, PromptServer

PRESTARTUP = os.environ.get("LG_COMPAT_PRESTARTUP")
WEB_DIRECTORY = "./web"

routes = PromptServer.instance.routes


@routes.get("/lg_compat/hello/{name}")
async def hello(request):
    return web.json_response({"hello": request.match_info["name"], "prestartup": PRESTARTUP})


@routes.post("/lg_compat/echo")
async def echo(request):
    return web.json_response({"echo": await request.json()})


async def direct(request):
    return web.Response(text="straight on the app")


PromptServer.instance.app.router.add_get("/lg_compat/direct", direct)


def tag_prompts(json_data):
    """Rewrites every LgCompatMessage node's text before the prompt is validated."""
    for node in json_data.get("prompt", {}).values():
        if isinstance(node, dict) and node.get("class_type") == "LgCompatMessage":
            node["inputs"]["text"] = node["inputs"].get("text", "") + " (seen by on_prompt)"
    return json_data


PromptServer.instance.add_on_prompt_handler(tag_prompts)


async def late(request):
    return web.json_response({"late": True})


class LgCompatMessage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "send"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def send(self, text):
        server = PromptServer.instance
        server.send_sync("lg_compat.message", {"text": text, "client_id": server.client_id,
                                               "node": server.last_node_id, "prompt_id": server.last_prompt_id},
                         server.client_id)
        server.send_sync(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE,
                         ["PNG", Image.new("RGB", (4, 4), (255, 0, 0)), None], server.client_id)
        server.send_progress_text("working on it", server.last_node_id, server.client_id)
        server.routes.get("/lg_compat/late")(late)  # a route added while the server runs
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"LgCompatMessage": LgCompatMessage}
