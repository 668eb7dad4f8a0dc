"""`comfy_api.latest.io`: ComfyUI's V3 node schema.

A V3 node subclasses `ComfyNode` and implements two classmethods: `define_schema()` returning a
`Schema` (id, display name, category, typed `Input`s and `Output`s, hidden values, flags) and
`execute(**inputs)` returning a `NodeOutput` (values, a ui, an expansion or a block). Hooks are
classmethods too: `validate_inputs`, `fingerprint_inputs` (IS_CHANGED), `check_lazy_status`.
Hidden values (unique id, prompt, ...) are read from `cls.hidden` during a call.

The class also speaks the classic contract the engine reads (INPUT_TYPES, RETURN_TYPES, FUNCTION,
...), derived from the schema, and /object_info lists it exactly as ComfyUI does
(`GET_NODE_INFO_V1`: every field present, each input's options as a dict).
"""
from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Literal

import torch

from comfy.comfy_types.node_typing import union_matches
from graph.blocker import ExecutionBlocker


def _pruned(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class classproperty:
    """A read-only property of the class (ComfyUI derives RETURN_TYPES & co. from the schema)."""

    def __init__(self, fget: Callable):
        self.fget = fget

    def __get__(self, obj: Any, owner: type) -> Any:
        return self.fget(owner)


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class RemoteOptions:
    def __init__(self, route: str, refresh_button: bool, control_after_refresh: Literal["first", "last"] = "first",
                 timeout: int | None = None, max_retries: int | None = None, refresh: int | None = None):
        self.route = route
        self.refresh_button = refresh_button
        self.control_after_refresh = control_after_refresh
        self.timeout = timeout
        self.max_retries = max_retries
        self.refresh = refresh

    def as_dict(self) -> dict:
        return _pruned({"route": self.route, "refresh_button": self.refresh_button,
                        "control_after_refresh": self.control_after_refresh, "timeout": self.timeout,
                        "max_retries": self.max_retries, "refresh": self.refresh})


class _IOType(str):
    """A socket type name that compares with ComfyUI's union rule for `!=` ("*" matches all)."""

    def __ne__(self, other: object) -> bool:
        return not union_matches(self, other)

    __hash__ = str.__hash__


# ---------------------------------------------------------------------------------------------
# Inputs and outputs


class _IO:
    Parent: Any = None  # the ComfyType this Input/Output class belongs to

    @property
    def io_type(self) -> Any:
        return self.Parent.io_type

    @property
    def Type(self) -> Any:
        return self.Parent.Type


class Input(_IO):
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, extra_dict: dict | None = None):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict if extra_dict is not None else {}

    def as_dict(self) -> dict:
        return _pruned({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                        "lazy": self.lazy}) | _pruned(self.extra_dict)

    def get_io_type(self) -> Any:
        return _IOType(self.io_type)


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: Any = None, socketless: bool | None = None,
                 widget_type: str | None = None, force_input: bool | None = None, extra_dict: dict | None = None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self) -> dict:
        return super().as_dict() | _pruned({"default": self.default, "socketless": self.socketless,
                                            "widgetType": self.widget_type, "forceInput": self.force_input})

    def get_io_type(self) -> Any:
        return self.widget_type if self.widget_type is not None else super().get_io_type()


class Output(_IO):
    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    def as_dict(self) -> dict:
        return _pruned({"display_name": self.display_name, "tooltip": self.tooltip,
                        "is_output_list": self.is_output_list})

    def get_io_type(self) -> Any:
        return self.io_type


class _ComfyType(ABC):
    Type: Any = Any
    io_type: str | None = None


class ComfyTypeI(_ComfyType):
    """A type with an Input class only."""

    class Input(Input):
        pass


class ComfyTypeIO(ComfyTypeI):
    """A type with Input and Output classes."""

    class Output(Output):
        pass


def comfytype(io_type: str, **kwargs: Any) -> Callable[[type], type]:
    """Class decorator: make a ComfyType for `io_type`. Its Input and Output classes are fresh
    subclasses that know this type, so types built on each other never share them."""
    def decorate(cls: type) -> type:
        if not issubclass(cls, _ComfyType):
            namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            cls = type(cls.__name__, (cls, ComfyTypeIO), namespace)
        cls.io_type = _IOType(io_type) if isinstance(io_type, str) else io_type
        for role in ("Input", "Output"):
            part = getattr(cls, role, None)
            if part is not None:
                setattr(cls, role, type(part.__name__, (part,), {"Parent": cls, "__module__": cls.__module__,
                                                                  "__qualname__": f"{cls.__qualname__}.{role}"}))
        return cls
    return decorate


def Custom(io_type: str) -> type:
    """A ComfyType for a type of your own (or "*")."""
    @comfytype(io_type=io_type)
    class CustomComfyType(ComfyTypeIO):
        pass
    return CustomComfyType


@comfytype(io_type="BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: bool | None = None,
                     label_on: str | None = None, label_off: str | None = None, socketless: bool | None = None,
                     force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.label_on = label_on
            self.label_off = label_off

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"label_on": self.label_on, "label_off": self.label_off})


@comfytype(io_type="INT")
class Int(ComfyTypeIO):
    Type = int

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: int | None = None,
                     min: int | None = None, max: int | None = None, step: int | None = None,
                     control_after_generate: bool | None = None, display_mode: NumberDisplay | None = None,
                     socketless: bool | None = None, force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min = min
            self.max = max
            self.step = step
            self.control_after_generate = control_after_generate
            self.display_mode = display_mode

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({
                "min": self.min, "max": self.max, "step": self.step,
                "control_after_generate": self.control_after_generate,
                "display": self.display_mode.value if self.display_mode else None})


@comfytype(io_type="FLOAT")
class Float(ComfyTypeIO):
    Type = float

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: float | None = None,
                     min: float | None = None, max: float | None = None, step: float | None = None,
                     round: float | None = None, display_mode: NumberDisplay | None = None,
                     socketless: bool | None = None, force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min = min
            self.max = max
            self.step = step
            self.round = round
            self.display_mode = display_mode

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                                "round": self.round, "display": self.display_mode})


@comfytype(io_type="STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, multiline: bool = False,
                     placeholder: str | None = None, default: str | None = None,
                     dynamic_prompts: bool | None = None, socketless: bool | None = None,
                     force_input: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.multiline = multiline
            self.placeholder = placeholder
            self.dynamic_prompts = dynamic_prompts

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"multiline": self.multiline, "placeholder": self.placeholder,
                                                "dynamicPrompts": self.dynamic_prompts})


@comfytype(io_type="COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, options: list | type[Enum] | None = None, display_name: str | None = None,
                     optional: bool = False, tooltip: str | None = None, lazy: bool | None = None,
                     default: Any = None, control_after_generate: bool | None = None,
                     upload: UploadType | None = None, image_folder: FolderType | None = None,
                     remote: RemoteOptions | None = None, socketless: bool | None = None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [member.value for member in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            self.multiselect = False
            self.options = options
            self.control_after_generate = control_after_generate
            self.upload = upload
            self.image_folder = image_folder
            self.remote = remote

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({
                "multiselect": self.multiselect, "options": self.options,
                "control_after_generate": self.control_after_generate,
                **({self.upload.value: True} if self.upload is not None else {}),
                "image_folder": self.image_folder.value if self.image_folder else None,
                "remote": self.remote.as_dict() if self.remote else None})

    class Output(Output):
        def __init__(self, id: str | None = None, display_name: str | None = None, options: list | None = None,
                     tooltip: str | None = None, is_output_list: bool = False):
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = options if options is not None else []

        @property
        def io_type(self) -> list:  # a combo output's type is its option list, as in ComfyUI
            return self.options


@comfytype(io_type="COMBO")
class MultiCombo(ComfyTypeI):
    Type = list

    class Input(Combo.Input):
        def __init__(self, id: str, options: list, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: list | None = None,
                     placeholder: str | None = None, chip: bool | None = None,
                     control_after_generate: bool | None = None, socketless: bool | None = None):
            super().__init__(id, options, display_name, optional, tooltip, lazy, default, control_after_generate,
                             socketless=socketless)
            self.multiselect = True
            self.placeholder = placeholder
            self.chip = chip

        def as_dict(self) -> dict:
            return super().as_dict() | _pruned({"multi_select": self.multiselect, "placeholder": self.placeholder,
                                                "chip": self.chip})


@comfytype(io_type="WEBCAM")
class Webcam(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: str | None = None,
                     socketless: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)


def _socket_type(name: str, io_type: str, type_hint: Any = Any) -> type:
    """A plain socket type (no widget): Input and Output with the common options only."""
    cls = type(name, (ComfyTypeIO,), {"Type": type_hint, "__module__": __name__, "__qualname__": name})
    return comfytype(io_type)(cls)


Image = _socket_type("Image", "IMAGE", torch.Tensor)
WanCameraEmbedding = _socket_type("WanCameraEmbedding", "WAN_CAMERA_EMBEDDING", torch.Tensor)
Mask = _socket_type("Mask", "MASK", torch.Tensor)
Latent = _socket_type("Latent", "LATENT", dict)
Conditioning = _socket_type("Conditioning", "CONDITIONING", list)
Sampler = _socket_type("Sampler", "SAMPLER")
Sigmas = _socket_type("Sigmas", "SIGMAS", torch.Tensor)
Noise = _socket_type("Noise", "NOISE")
Guider = _socket_type("Guider", "GUIDER")
Clip = _socket_type("Clip", "CLIP")
ControlNet = _socket_type("ControlNet", "CONTROL_NET")
Vae = _socket_type("Vae", "VAE")
Model = _socket_type("Model", "MODEL")
ClipVision = _socket_type("ClipVision", "CLIP_VISION")
ClipVisionOutput = _socket_type("ClipVisionOutput", "CLIP_VISION_OUTPUT")
StyleModel = _socket_type("StyleModel", "STYLE_MODEL")
Gligen = _socket_type("Gligen", "GLIGEN")
UpscaleModel = _socket_type("UpscaleModel", "UPSCALE_MODEL")
Audio = _socket_type("Audio", "AUDIO", dict)
Video = _socket_type("Video", "VIDEO")
SVG = _socket_type("SVG", "SVG")
LoraModel = _socket_type("LoraModel", "LORA_MODEL", dict)
LossMap = _socket_type("LossMap", "LOSS_MAP", dict)
Voxel = _socket_type("Voxel", "VOXEL")
Mesh = _socket_type("Mesh", "MESH")
Hooks = _socket_type("Hooks", "HOOKS")
HookKeyframes = _socket_type("HookKeyframes", "HOOK_KEYFRAMES")
TimestepsRange = _socket_type("TimestepsRange", "TIMESTEPS_RANGE", tuple)
LatentOperation = _socket_type("LatentOperation", "LATENT_OPERATION")
FlowControl = _socket_type("FlowControl", "FLOW_CONTROL", tuple)
Accumulation = _socket_type("Accumulation", "ACCUMULATION", dict)
Load3DCamera = _socket_type("Load3DCamera", "LOAD3D_CAMERA", dict)
Load3D = _socket_type("Load3D", "LOAD_3D", dict)
Load3DAnimation = _socket_type("Load3DAnimation", "LOAD_3D_ANIMATION", dict)
Photomaker = _socket_type("Photomaker", "PHOTOMAKER")
Point = _socket_type("Point", "POINT")
FaceAnalysis = _socket_type("FaceAnalysis", "FACE_ANALYSIS")
BBOX = _socket_type("BBOX", "BBOX")
SEGS = _socket_type("SEGS", "SEGS")
AnyType = _socket_type("AnyType", "*")
MODEL_PATCH = _socket_type("MODEL_PATCH", "MODEL_PATCH")
AudioEncoder = _socket_type("AudioEncoder", "AUDIO_ENCODER")
AudioEncoderOutput = _socket_type("AudioEncoderOutput", "AUDIO_ENCODER_OUTPUT")


@comfytype(io_type="COMFY_MULTITYPED_V3")
class MultiType(_ComfyType):
    """An input that takes any of several types; given an Input as `id`, that input's widget."""

    Type = Any

    class Input(Input):
        def __init__(self, id: str | Input, types: list, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, extra_dict: dict | None = None):
            self.input_override = None
            if isinstance(id, Input):
                base = copy.copy(id)
                optional = True if id.optional is True else optional
                tooltip = id.tooltip if id.tooltip is not None else tooltip
                display_name = id.display_name if id.display_name is not None else display_name
                lazy = id.lazy if id.lazy is not None else lazy
                if isinstance(base, WidgetInput):
                    base.widget_type = base.get_io_type()
                self.input_override = base
                id = id.id
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
            self._io_types = types

        @property
        def io_types(self) -> list[type]:
            return [t if isinstance(t, type) else type(t) for t in self._io_types]

        def get_io_type(self) -> str:
            names = [t.io_type for t in self.io_types]
            if self.input_override is not None:
                names.insert(0, self.input_override.get_io_type())
            return ",".join(dict.fromkeys(names))

        def as_dict(self) -> dict:
            own = super().as_dict()
            return self.input_override.as_dict() | own if self.input_override is not None else own


class DynamicInput(Input, ABC):
    """An input that stands for several: get_dynamic() lists them."""

    @abstractmethod
    def get_dynamic(self) -> list[Input]: ...


class DynamicOutput(Output, ABC):
    @abstractmethod
    def get_dynamic(self) -> list[Output]: ...


@comfytype(io_type="COMFY_AUTOGROW_V3")
class AutogrowDynamic(ComfyTypeI):
    Type = list

    class Input(DynamicInput):
        def __init__(self, id: str, template_input: Input, min: int = 1, max: int | None = None,
                     display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, extra_dict: dict | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
            if min is not None and min < 1 or max is not None and max < 1:
                raise ValueError("an autogrow input needs min and max of at least 1")
            self.template_input = template_input
            self.min = min
            self.max = max

        def get_dynamic(self) -> list[Input]:
            """min required copies of the template, then optional ones up to max."""
            made = []
            for count in range(1, max(self.min or 0, self.max or 0) + 1):
                item = copy.copy(self.template_input)
                item.id = f"{item.id}{count}_${self.id}_ag$"
                if item.display_name is not None:
                    item.display_name = f"{item.display_name}{count}"
                item.optional = True if count > (self.min or 0) else (self.optional or item.optional)
                if isinstance(self.template_input, WidgetInput):
                    item.force_input = True
                made.append(item)
            return made


@comfytype(io_type="COMFY_MATCHTYPE_V3")
class MatchType(ComfyTypeIO):
    class Template:
        def __init__(self, template_id: str, allowed_types: Any):
            self.template_id = template_id
            self.allowed_types = allowed_types if isinstance(allowed_types, list) else [allowed_types]

        def as_dict(self) -> dict:
            return {"template_id": self.template_id,
                    "allowed_types": "".join(t.io_type for t in self.allowed_types)}

    class Input(DynamicInput):
        def __init__(self, id: str, template: "MatchType.Template", display_name: str | None = None,
                     optional: bool = False, tooltip: str | None = None, lazy: bool | None = None,
                     extra_dict: dict | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
            self.template = template

        def get_dynamic(self) -> list[Input]:
            return [self]

        def as_dict(self) -> dict:
            return super().as_dict() | {"template": self.template.as_dict()}

    class Output(DynamicOutput):
        def __init__(self, id: str, template: "MatchType.Template", display_name: str | None = None,
                     tooltip: str | None = None, is_output_list: bool = False):
            super().__init__(id, display_name, tooltip, is_output_list)
            self.template = template

        def get_dynamic(self) -> list[Output]:
            return [self]

        def as_dict(self) -> dict:
            return super().as_dict() | {"template": self.template.as_dict()}


# ---------------------------------------------------------------------------------------------
# Hidden values


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """`cls.hidden` during a call: the hidden values the schema asked for (None otherwise)."""

    def __init__(self, unique_id: Any = None, prompt: Any = None, extra_pnginfo: Any = None, dynprompt: Any = None,
                 auth_token_comfy_org: Any = None, api_key_comfy_org: Any = None, **kwargs: Any):
        self.unique_id = unique_id
        self.prompt = prompt
        self.extra_pnginfo = extra_pnginfo
        self.dynprompt = dynprompt
        self.auth_token_comfy_org = auth_token_comfy_org
        self.api_key_comfy_org = api_key_comfy_org

    def __getattr__(self, key: str) -> Any:
        return None

    @classmethod
    def from_dict(cls, d: dict | None) -> "HiddenHolder":
        d = d or {}
        return cls(**{member.name: d.get(member.value) for member in Hidden})


# ---------------------------------------------------------------------------------------------
# The schema


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list | None = None
    outputs: list | None = None
    hidden: list | None = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        """Input ids and output ids must be unique, within and across the two lists."""
        inputs = [i.id for i in self.inputs or []]
        outputs = [o.id for o in self.outputs or []]
        issues = []
        for kind, ids in (("Input", inputs), ("Output", outputs)):
            repeated = [item for item, count in Counter(ids).items() if count > 1]
            if repeated:
                issues.append(f"{kind} ids must be unique, but {repeated} are not.")
        shared = set(inputs) & set(outputs)
        if shared:
            issues.append(f"Ids must be unique between inputs and outputs, but {shared} are not.")
        if issues:
            raise ValueError("\n".join(issues))

    def finalize(self) -> None:
        """Hidden values implied by the flags (API keys for API nodes; prompt and workflow for
        output nodes), and ids for unnamed outputs."""
        wanted = []
        if self.is_api_node:
            wanted += [Hidden.auth_token_comfy_org, Hidden.api_key_comfy_org]
        if self.is_output_node:
            wanted += [Hidden.prompt, Hidden.extra_pnginfo]
        for item in wanted:
            if self.hidden is None:
                self.hidden = []
            if item not in self.hidden:
                self.hidden.append(item)
        for index, output in enumerate(self.outputs or []):
            if output.id is None:
                output.id = f"_{index}_{output.io_type}_"

    def _flat_inputs(self) -> list[Input]:
        flat = []
        for item in self.inputs or []:
            flat += item.get_dynamic() if isinstance(item, DynamicInput) else [item]
        return flat

    def v1_inputs(self) -> dict:
        """The classic INPUT_TYPES: (type, options) per input, under required/optional/hidden."""
        sections: dict[str, dict] = {"required": {}}
        for item in self._flat_inputs():
            options = item.as_dict()
            options.pop("optional", None)
            sections.setdefault("optional" if item.optional else "required", {})[item.id] = \
                (item.get_io_type(), options)
        for hidden in self.hidden or []:
            sections.setdefault("hidden", {})[hidden.name] = (hidden.value,)
        return sections

    def get_v1_info(self, cls: type) -> dict:
        inputs = self.v1_inputs()
        outputs = self.outputs or []
        return {
            "input": inputs,
            "input_order": {section: list(entries) for section, entries in inputs.items()},
            "output": [o.io_type for o in outputs],
            "output_is_list": [o.is_output_list for o in outputs],
            "output_name": [o.display_name or o.io_type for o in outputs],
            "output_tooltips": [o.tooltip or None for o in outputs],
            "name": self.node_id,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
            "category": self.category,
            "output_node": self.is_output_node,
            "deprecated": self.is_deprecated,
            "experimental": self.is_experimental,
            "api_node": self.is_api_node,
        }

    def get_v3_info(self, cls: type) -> dict:
        return {
            "input": {i.id: (i.get_io_type(), i.as_dict()) for i in self.inputs or []},
            "output": {o.id: (o.get_io_type(), o.as_dict()) for o in self.outputs or []},
            "hidden": [h.value for h in self.hidden or []],
            "name": self.node_id,
            "display_name": self.display_name,
            "description": self.description,
            "category": self.category,
            "output_node": self.is_output_node,
            "deprecated": self.is_deprecated,
            "experimental": self.is_experimental,
            "api_node": self.is_api_node,
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        }


# ---------------------------------------------------------------------------------------------
# Results


class _UIOutput(ABC):
    @abstractmethod
    def as_dict(self) -> dict: ...


class NodeOutput:
    """What execute() returns: output values in order, and optionally a ui (a dict or one of
    comfy_api.latest.ui's outputs), an expansion subgraph, or a block message."""

    def __init__(self, *args: Any, ui: _UIOutput | dict | None = None, expand: dict | None = None,
                 block_execution: str | None = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple | None:
        return self.args if self.args else None

    @classmethod
    def from_dict(cls, data: dict) -> "NodeOutput":
        """The classic {"result", "ui", "expand"} dict as a NodeOutput."""
        result = data.get("result", ())
        if isinstance(result, ExecutionBlocker):
            return cls(block_execution=result.message)
        return cls(*(result or ()), ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


# ---------------------------------------------------------------------------------------------
# The node base class

_LOCKED_META: dict[type, type] = {}


def _locked(meta: type) -> type:
    """A metaclass like `meta` whose classes refuse attribute assignment (a call's class clone
    must not change the node class for later calls)."""
    if meta not in _LOCKED_META:
        def refuse(cls, name, value):
            if name == "__abstractmethods__" or name.startswith("_abc_"):  # ABCMeta sets these while creating it
                return meta.__setattr__(cls, name, value)
            raise AttributeError(f"Cannot modify class attribute '{name}' on locked class '{cls.__name__}'")
        _LOCKED_META[meta] = type(f"Locked{meta.__name__}", (meta,), {"__setattr__": refuse})
    return _LOCKED_META[meta]


def _normalise(cls: type, value: Any) -> NodeOutput:
    if value is None:
        out = NodeOutput()
    elif isinstance(value, NodeOutput):
        out = value
    elif isinstance(value, tuple):
        out = NodeOutput(*value)
    elif isinstance(value, dict):
        out = NodeOutput.from_dict(value)
    elif isinstance(value, ExecutionBlocker):
        out = NodeOutput(block_execution=value.message)
    else:
        raise TypeError(f"Invalid return type from node {cls.__name__}: {type(value).__name__}")
    if out.expand is not None and not cls.SCHEMA.enable_expand:
        raise TypeError(f"Node {cls.__name__} is not expandable, but expand included in NodeOutput; "
                        "developer should set enable_expand=True on node's Schema to allow this.")
    return out


class ComfyNode:
    """Base class of V3 nodes. Implement define_schema() and execute() as classmethods. (Not an
    ABC, as in ComfyUI: VALIDATE_CLASS reports a missing method when the node is loaded.)"""

    RELATIVE_PYTHON_MODULE: str | None = None  # set by the plugin loader: "custom_nodes.<pack>"
    SCHEMA: Schema | None = None
    hidden: HiddenHolder | None = None  # set on the per-call class clone
    resources: Any = None

    @classmethod
    @abstractmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError

    # Optional hooks; the engine calls one only when the node class overrides it.
    @classmethod
    def validate_inputs(cls, **kwargs: Any) -> bool | str:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs: Any) -> list[str]:
        return [name for name, value in kwargs.items() if value is None]

    def __init__(self):
        self.local_resources = None
        type(self).VALIDATE_CLASS()

    @classmethod
    def GET_BASE_CLASS(cls) -> type:
        return ComfyNode

    @classmethod
    def VALIDATE_CLASS(cls) -> None:
        for name in ("define_schema", "execute"):
            if getattr(getattr(cls, name), "__isabstractmethod__", False):
                raise TypeError(f"No {name} function was defined for node class {cls.__name__}.")

    @classproperty
    def FUNCTION(cls) -> str:  # noqa: N802
        return "EXECUTE_NORMALIZED_ASYNC" if inspect.iscoroutinefunction(cls.execute) else "EXECUTE_NORMALIZED"

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args: Any, **kwargs: Any) -> NodeOutput:
        return _normalise(cls, cls.execute(*args, **kwargs))

    @classmethod
    async def EXECUTE_NORMALIZED_ASYNC(cls, *args: Any, **kwargs: Any) -> NodeOutput:
        return _normalise(cls, await cls.execute(*args, **kwargs))

    @classmethod
    def PREPARE_CLASS_CLONE(cls, hidden_inputs: dict | None) -> type:
        """A locked subclass for one call, with `hidden` set, so a call cannot alter the class."""
        return _locked(type(cls))(cls.__name__, (cls,), {"hidden": HiddenHolder.from_dict(hidden_inputs),
                                                          "_LG_CLONE_OF": cls, "__module__": cls.__module__,
                                                          "__qualname__": cls.__qualname__})

    @classmethod
    def FINALIZE_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.finalize()
        return schema

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        """Check the class, build and check its schema, and derive the classic attributes."""
        cls.VALIDATE_CLASS()
        schema = cls.FINALIZE_SCHEMA()
        schema.validate()
        outputs = schema.outputs or []
        derived = {
            "_DESCRIPTION": schema.description, "_CATEGORY": schema.category,
            "_EXPERIMENTAL": schema.is_experimental, "_DEPRECATED": schema.is_deprecated,
            "_API_NODE": schema.is_api_node, "_OUTPUT_NODE": schema.is_output_node,
            "_INPUT_IS_LIST": schema.is_input_list, "_NOT_IDEMPOTENT": schema.not_idempotent,
            "_RETURN_TYPES": [o.io_type for o in outputs],
            "_RETURN_NAMES": [o.display_name or o.io_type for o in outputs],
            "_OUTPUT_IS_LIST": [o.is_output_list for o in outputs],
            "_OUTPUT_TOOLTIPS": [o.tooltip or None for o in outputs],
        }
        for name, value in derived.items():
            setattr(cls, name, value)
        cls.SCHEMA = schema
        return schema

    @classmethod
    def _derived(cls, name: str) -> Any:
        """A classic attribute from this class's own schema (a call's clone reads its node's)."""
        owner = cls.__dict__.get("_LG_CLONE_OF", cls)
        if name not in owner.__dict__:
            owner.GET_SCHEMA()
        return owner.__dict__[name]

    DESCRIPTION = classproperty(lambda cls: cls._derived("_DESCRIPTION"))
    CATEGORY = classproperty(lambda cls: cls._derived("_CATEGORY"))
    EXPERIMENTAL = classproperty(lambda cls: cls._derived("_EXPERIMENTAL"))
    DEPRECATED = classproperty(lambda cls: cls._derived("_DEPRECATED"))
    API_NODE = classproperty(lambda cls: cls._derived("_API_NODE"))
    OUTPUT_NODE = classproperty(lambda cls: cls._derived("_OUTPUT_NODE"))
    INPUT_IS_LIST = classproperty(lambda cls: cls._derived("_INPUT_IS_LIST"))
    OUTPUT_IS_LIST = classproperty(lambda cls: cls._derived("_OUTPUT_IS_LIST"))
    RETURN_TYPES = classproperty(lambda cls: cls._derived("_RETURN_TYPES"))
    RETURN_NAMES = classproperty(lambda cls: cls._derived("_RETURN_NAMES"))
    OUTPUT_TOOLTIPS = classproperty(lambda cls: cls._derived("_OUTPUT_TOOLTIPS"))
    NOT_IDEMPOTENT = classproperty(lambda cls: cls._derived("_NOT_IDEMPOTENT"))

    @classmethod
    def INPUT_TYPES(cls, include_hidden: bool = True, return_schema: bool = False) -> Any:
        schema = cls.FINALIZE_SCHEMA()
        inputs = schema.v1_inputs()
        if not include_hidden:
            inputs.pop("hidden", None)
        return (inputs, schema) if return_schema else inputs

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:
        return cls.GET_SCHEMA().get_v1_info(cls)

    @classmethod
    def GET_NODE_INFO_V3(cls) -> dict:
        return cls.GET_SCHEMA().get_v3_info(cls)


__all__ = [
    "FolderType", "UploadType", "RemoteOptions", "NumberDisplay", "comfytype", "Custom", "Input", "WidgetInput",
    "Output", "ComfyTypeI", "ComfyTypeIO", "Boolean", "Int", "Float", "String", "Combo", "MultiCombo", "Image",
    "WanCameraEmbedding", "Webcam", "Mask", "Latent", "Conditioning", "Sampler", "Sigmas", "Noise", "Guider", "Clip",
    "ControlNet", "Vae", "Model", "ClipVision", "ClipVisionOutput", "AudioEncoder", "AudioEncoderOutput",
    "StyleModel", "Gligen", "UpscaleModel", "Audio", "Video", "SVG", "LoraModel", "LossMap", "Voxel", "Mesh", "Hooks",
    "HookKeyframes", "TimestepsRange", "LatentOperation", "FlowControl", "Accumulation", "Load3DCamera", "Load3D",
    "Load3DAnimation", "Photomaker", "Point", "FaceAnalysis", "BBOX", "SEGS", "AnyType", "MultiType",
    "MODEL_PATCH", "AutogrowDynamic", "MatchType", "DynamicInput", "DynamicOutput", "HiddenHolder", "Hidden",
    "Schema", "ComfyNode", "NodeOutput",
]
