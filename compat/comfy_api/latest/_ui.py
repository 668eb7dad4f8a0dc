"""`comfy_api.latest.ui`: what a V3 node shows in the editor (NodeOutput(..., ui=...)).

PreviewImage and PreviewMask write the images to the temp folder (as the core PreviewImage
node does: 8-bit PNGs, the prompt and workflow embedded from `cls.hidden`); the others only
describe files or text the node already has.
"""
from __future__ import annotations

import random
import string
from typing import Any

from comfy_api.latest._io import ComfyNode, FolderType, _UIOutput
from graph.context import current_context
from nodes.image import PREVIEW_COMPRESS_LEVEL, SAVE_COMPRESS_LEVEL, save_images


class SavedResult(dict):
    def __init__(self, filename: str, subfolder: str, type: FolderType):
        super().__init__(filename=filename, subfolder=subfolder, type=FolderType(type).value)

    @property
    def filename(self) -> str:
        return self["filename"]

    @property
    def subfolder(self) -> str:
        return self["subfolder"]

    @property
    def type(self) -> FolderType:
        return FolderType(self["type"])


class SavedImages(_UIOutput):
    def __init__(self, results: list[SavedResult], is_animated: bool = False):
        self.results = results
        self.is_animated = is_animated

    def as_dict(self) -> dict:
        data: dict[str, Any] = {"images": self.results}
        if self.is_animated:
            data["animated"] = (True,)
        return data


def _node_context():
    ctx = current_context.get()
    if ctx is None:
        raise RuntimeError("comfy_api.latest.ui saves images only while a node runs")
    return ctx


class ImageSaveHelper:
    @staticmethod
    def save_images(images: Any, filename_prefix: str, folder_type: FolderType, cls: type[ComfyNode] | None,
                    compress_level: int = SAVE_COMPRESS_LEVEL) -> list[SavedResult]:
        """Write a batch as numbered PNGs in the folder of `folder_type`."""
        ctx = _node_context()
        kind = FolderType(folder_type).value
        hidden = getattr(cls, "hidden", None) if cls is not None else None
        ui = save_images(ctx, images, ctx.env.folders.typed_dir(kind), filename_prefix, kind, compress_level,
                         getattr(hidden, "prompt", None), getattr(hidden, "extra_pnginfo", None))
        return [SavedResult(item["filename"], item["subfolder"], FolderType(item["type"]))
                for item in ui["ui"]["images"]]

    @staticmethod
    def get_save_images_ui(images: Any, filename_prefix: str, cls: type[ComfyNode] | None,
                           compress_level: int = SAVE_COMPRESS_LEVEL) -> SavedImages:
        return SavedImages(ImageSaveHelper.save_images(images, filename_prefix, FolderType.output, cls,
                                                       compress_level))


def _temp_prefix() -> str:
    return "ComfyUI_temp_" + "".join(random.choices(string.ascii_lowercase, k=5))


class PreviewImage(_UIOutput):
    def __init__(self, image: Any, animated: bool = False, cls: type[ComfyNode] | None = None, **kwargs: Any):
        self.values = ImageSaveHelper.save_images(image, _temp_prefix(), FolderType.temp, cls,
                                                  PREVIEW_COMPRESS_LEVEL)
        self.animated = animated

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    def __init__(self, mask: Any, animated: bool = False, cls: type[ComfyNode] | None = None, **kwargs: Any):
        grey = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(grey, animated, cls, **kwargs)


class PreviewVideo(_UIOutput):
    def __init__(self, values: list, **kwargs: Any):
        self.values = values

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (True,)}


class PreviewUI3D(_UIOutput):
    def __init__(self, model_file: Any, camera_info: Any, **kwargs: Any):
        self.model_file = model_file
        self.camera_info = camera_info

    def as_dict(self) -> dict:
        return {"result": [self.model_file, self.camera_info]}


class PreviewText(_UIOutput):
    def __init__(self, value: str, **kwargs: Any):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}


__all__ = ["SavedResult", "SavedImages", "ImageSaveHelper", "PreviewImage", "PreviewMask", "PreviewVideo",
           "PreviewUI3D", "PreviewText"]
