"""`comfy.comfy_types.node_typing`: the classic node contract as types.

`IO` names the built-in socket types. Its members compare with ComfyUI's rule for `!=`: "*"
matches everything and a comma-joined union matches any of its parts (or a superset), so
`IO.ANY` and `IO.NUMBER` link to what they should while still being plain strings in JSON.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Literal, Optional, TypedDict

from typing_extensions import NotRequired


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value


class IO(StrEnum):
    STRING = "STRING"
    IMAGE = "IMAGE"
    MASK = "MASK"
    LATENT = "LATENT"
    BOOLEAN = "BOOLEAN"
    INT = "INT"
    FLOAT = "FLOAT"
    COMBO = "COMBO"
    CONDITIONING = "CONDITIONING"
    SAMPLER = "SAMPLER"
    SIGMAS = "SIGMAS"
    GUIDER = "GUIDER"
    NOISE = "NOISE"
    CLIP = "CLIP"
    CONTROL_NET = "CONTROL_NET"
    VAE = "VAE"
    MODEL = "MODEL"
    LORA_MODEL = "LORA_MODEL"
    LOSS_MAP = "LOSS_MAP"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    STYLE_MODEL = "STYLE_MODEL"
    GLIGEN = "GLIGEN"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    AUDIO = "AUDIO"
    WEBCAM = "WEBCAM"
    POINT = "POINT"
    FACE_ANALYSIS = "FACE_ANALYSIS"
    BBOX = "BBOX"
    SEGS = "SEGS"
    VIDEO = "VIDEO"
    ANY = "*"
    NUMBER = "FLOAT,INT"
    PRIMITIVE = "STRING,FLOAT,INT,BOOLEAN"

    def __ne__(self, value: object) -> bool:
        return not union_matches(self, value)

    __hash__ = str.__hash__


def union_matches(a: str, b: object) -> bool:
    """ComfyUI's type rule: "*" matches all; otherwise one side's parts contain the other's."""
    if a == "*" or b == "*":
        return True
    if not isinstance(b, str):
        return False
    left, right = frozenset(a.split(",")), frozenset(b.split(","))
    return left <= right or right <= left


class RemoteInputOptions(TypedDict):
    route: str
    refresh: NotRequired[int]
    response_key: NotRequired[str]
    query_params: NotRequired[dict[str, str]]
    refresh_button: NotRequired[bool]
    control_after_refresh: NotRequired[Literal["first", "last"]]
    timeout: NotRequired[int]
    max_retries: NotRequired[int]


class MultiSelectOptions(TypedDict):
    placeholder: NotRequired[str]
    chip: NotRequired[bool]


class InputTypeOptions(TypedDict):
    """The options dict of an INPUT_TYPES entry (every key optional)."""

    default: NotRequired[bool | str | float | int | list | tuple]
    defaultInput: NotRequired[bool]
    forceInput: NotRequired[bool]
    lazy: NotRequired[bool]
    rawLink: NotRequired[bool]
    tooltip: NotRequired[str]
    socketless: NotRequired[bool]
    widgetType: NotRequired[str]
    min: NotRequired[float]
    max: NotRequired[float]
    step: NotRequired[float]
    round: NotRequired[float]
    label_on: NotRequired[str]
    label_off: NotRequired[str]
    multiline: NotRequired[bool]
    placeholder: NotRequired[str]
    dynamicPrompts: NotRequired[bool]
    image_upload: NotRequired[bool]
    image_folder: NotRequired[Literal["input", "output", "temp"]]
    remote: NotRequired[RemoteInputOptions]
    control_after_generate: NotRequired[bool]
    options: NotRequired[list[str | int | float]]
    multi_select: NotRequired[MultiSelectOptions]


class HiddenInputTypeDict(TypedDict):
    node_id: NotRequired[Literal["UNIQUE_ID"]]
    unique_id: NotRequired[Literal["UNIQUE_ID"]]
    prompt: NotRequired[Literal["PROMPT"]]
    extra_pnginfo: NotRequired[Literal["EXTRA_PNGINFO"]]
    dynprompt: NotRequired[Literal["DYNPROMPT"]]


class InputTypeDict(TypedDict):
    required: NotRequired[dict[str, tuple[IO, InputTypeOptions]]]
    optional: NotRequired[dict[str, tuple[IO, InputTypeOptions]]]
    hidden: NotRequired[HiddenInputTypeDict]


class ComfyNodeABC(ABC):
    """A classic node: INPUT_TYPES plus the class attributes the executor reads."""

    DESCRIPTION: str
    CATEGORY: str
    EXPERIMENTAL: bool
    DEPRECATED: bool
    API_NODE: Optional[bool]
    OUTPUT_NODE: bool
    INPUT_IS_LIST: bool
    OUTPUT_IS_LIST: tuple[bool, ...]
    RETURN_TYPES: tuple[IO, ...]
    RETURN_NAMES: tuple[str, ...]
    OUTPUT_TOOLTIPS: tuple[str, ...]
    FUNCTION: str

    @classmethod
    @abstractmethod
    def INPUT_TYPES(s) -> InputTypeDict:
        return {"required": {}}


class CheckLazyMixin:
    """A check_lazy_status that asks for every lazy input not evaluated yet."""

    def check_lazy_status(self, **kwargs) -> list[str]:
        need = [name for name in kwargs if kwargs[name] is None]
        return need


class FileLocator(TypedDict):
    filename: str
    subfolder: str
    type: Literal["input", "output", "temp"]
