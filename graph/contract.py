"""The node contract: how a node class declares its inputs, outputs and hooks.

Plugins use ComfyUI's classic attributes (INPUT_TYPES, RETURN_TYPES, FUNCTION, ...). Built-in
nodes subclass `Node` and declare typed `Input`s and `Output`s once; `Node` emits the classic
attributes from that declaration, so `NodeType` reads every node the same way and the editor
and the API see one description (ComfyUI's /object_info shape).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

from graph.blocker import ExecutionBlocker

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
HIDDEN_KINDS = frozenset(
    {"PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"}
)


@dataclass(frozen=True)
class InputSpec:
    """One declared input, parsed from an INPUT_TYPES entry."""

    name: str
    type: str  # "COMBO" for an option list
    section: str  # "required" | "optional" | "hidden"
    options: Mapping[str, Any]
    choices: tuple | None = None

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput")

    @property
    def lazy(self) -> bool:
        return bool(self.options.get("lazy"))

    @property
    def raw_link(self) -> bool:
        """A "rawLink" input receives the link itself ([node id, output index]), not the value;
        the node still runs after the linked one (ComfyUI's loop nodes read the graph this way)."""
        return bool(self.options.get("rawLink"))


def parse_input_types(raw: Mapping) -> dict[str, InputSpec]:
    """Parse a classic INPUT_TYPES() result into InputSpecs, keyed by input name."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"INPUT_TYPES() must return a dict, got {type(raw).__name__}")
    specs: dict[str, InputSpec] = {}
    for section in ("required", "optional", "hidden"):
        for name, entry in (raw.get(section) or {}).items():
            specs[name] = _parse_entry(name, section, entry)
    return specs


def _parse_entry(name: str, section: str, entry: Any) -> InputSpec:
    if isinstance(entry, str):  # hidden inputs are often written as bare strings
        entry = (entry,)
    if not isinstance(entry, (tuple, list)) or not entry:
        raise TypeError(f"input '{name}': expected (TYPE,) or (TYPE, options), got {entry!r}")
    kind = entry[0]
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
    if isinstance(kind, (list, tuple)):
        return InputSpec(name, "COMBO", section, options, tuple(kind))
    if kind == "COMBO":
        return InputSpec(name, "COMBO", section, options, tuple(options.get("options", ())))
    return InputSpec(name, str(kind), section, options)


def types_compatible(output_type: Any, input_type: Any) -> bool:
    """ComfyUI's link rule: equal, '*' on either side, or overlapping comma-joined unions. Types
    are compared with `!=` first, as ComfyUI does: plugins' str subclasses (AnyType, SmartType)
    override it to widen what they match."""
    try:
        if not (output_type != input_type):
            return True
    except Exception:  # a hostile __ne__ decides nothing
        pass
    if isinstance(output_type, (list, tuple)):
        output_type = "COMBO"
    if isinstance(input_type, (list, tuple)):
        input_type = "COMBO"
    if output_type == input_type or output_type == "*" or input_type == "*":
        return True
    if not isinstance(output_type, str) or not isinstance(input_type, str):
        return False
    return bool(set(output_type.split(",")) & set(input_type.split(",")))


# ---------------------------------------------------------------------------------------------
# The declarative style used by built-in nodes.


@dataclass(frozen=True)
class Input:
    """A typed input. `choices` may be a callable of the environment, so file lists stay fresh."""

    name: str
    type: str
    optional: bool = False
    choices: Sequence | Callable[[Any], Sequence] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    # A combo declared as ("COMBO", {..., "options": [...]}) rather than ([...], {...}), as
    # ComfyUI's V3 nodes (and a few classic ones) describe theirs.
    typed_combo: bool = False

    def entry(self, env: Any) -> tuple:
        if self.type == "COMBO":
            values = self.choices(env) if callable(self.choices) else self.choices
            if self.typed_combo:
                listed = {} if self.choices is None else {"options": list(values or [])}
                return ("COMBO", {**self.options, **listed})
            return (list(values or []), dict(self.options)) if self.options else (list(values or []),)
        return (self.type, dict(self.options)) if self.options else (self.type,)


def _present(**options) -> dict:
    """Options as declared: one given as None is left out, as ComfyUI leaves out what a node
    does not declare (an INT without a step, a primitive without a default)."""
    return {k: v for k, v in options.items() if v is not None}


def Int(name: str, default: int | None = 0, min: int | None = -(2**63), max: int | None = 2**63 - 1,
        step: int | None = None, **opts) -> Input:
    return Input(name, "INT", opts.pop("optional", False),
                 options=_present(default=default, min=min, max=max, step=step, **opts))


def Float(name: str, default: float | None = 0.0, min: float | None = -1e300, max: float | None = 1e300,
          step: float | None = 0.01, **opts) -> Input:
    return Input(name, "FLOAT", opts.pop("optional", False),
                 options=_present(default=default, min=min, max=max, step=step, **opts))


def String(name: str, default: str | None = "", multiline: bool | None = False, **opts) -> Input:
    return Input(name, "STRING", opts.pop("optional", False),
                 options=_present(default=default, multiline=multiline, **opts))


def Boolean(name: str, default: bool | None = False, **opts) -> Input:
    return Input(name, "BOOLEAN", opts.pop("optional", False), options=_present(default=default, **opts))


def Combo(name: str, choices: Sequence | Callable[[Any], Sequence], **opts) -> Input:
    return Input(name, "COMBO", opts.pop("optional", False), choices=choices, options=opts)


def Choice(name: str, choices: Sequence | Callable[[Any], Sequence], **opts) -> Input:
    """A combo of one of ComfyUI's V3 nodes: ("COMBO", {"multiselect": False, "options": [...]})."""
    return Input(name, "COMBO", opts.pop("optional", False), choices=choices,
                 options={**opts, "multiselect": False}, typed_combo=True)


def Socket(name: str, type: str, optional: bool = False, **opts) -> Input:
    """An input that only takes a link (MODEL, IMAGE, ...)."""
    return Input(name, type, optional, options=opts)


@dataclass(frozen=True)
class Output:
    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None


class Node:
    """Base class of built-in nodes.

    Subclasses declare `inputs`, `outputs` and metadata, and implement `run(self, ctx, **inputs)`,
    where `ctx` is the executor's NodeContext (progress, interrupt, folders, hidden values).
    Optional classmethods: `fingerprint(cls, env, **constants)` (IS_CHANGED) and
    `check(cls, env, **constants)` (VALIDATE_INPUTS; return True or an error string).

    `comfy_function` names the method ComfyUI's class of the same name is called through
    ("sample", "encode", ...; "execute" for ComfyUI's V3 nodes, a classmethod there). The class then
    also carries that method, with run's parameters after ctx as its signature, plus INPUT_TYPES(),
    IS_CHANGED and VALIDATE_INPUTS, so plugins call, subclass and inspect it as ComfyUI's own.
    """

    inputs: ClassVar[Sequence[Input]] = ()
    outputs: ClassVar[Sequence[Output]] = ()
    hidden: ClassVar[Mapping[str, str]] = {}
    category: ClassVar[str] = "utils"
    display_name: ClassVar[str | None] = ""  # "": the class name; None: null, as ComfyUI's V3 nodes without one
    output_node: ClassVar[bool] = False
    input_is_list: ClassVar[bool] = False
    not_idempotent: ClassVar[bool] = False

    comfy_function: ClassVar[str | None] = None

    FUNCTION = "run"
    DESCRIPTION = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        # A plugin's subclass of a built-in node sets some classic attributes itself (its own
        # RETURN_TYPES, CATEGORY, FUNCTION...); those win over what the declaration gives.
        own = vars(cls)
        derived = {
            "RETURN_TYPES": lambda: tuple(o.type for o in cls.outputs),
            "RETURN_NAMES": lambda: tuple(o.name or o.type for o in cls.outputs),
            "OUTPUT_IS_LIST": lambda: tuple(o.is_list for o in cls.outputs),
            "OUTPUT_TOOLTIPS": lambda: tuple(o.tooltip or "" for o in cls.outputs),
            "CATEGORY": lambda: cls.category,
            "OUTPUT_NODE": lambda: cls.output_node,
            "INPUT_IS_LIST": lambda: cls.input_is_list,
            "NOT_IDEMPOTENT": lambda: cls.not_idempotent,
        }
        for attr, value in derived.items():
            if attr not in own:
                setattr(cls, attr, value())
        if "DESCRIPTION" not in own and own.get("__doc__"):
            cls.DESCRIPTION = inspect.cleandoc(own["__doc__"])
        _emit_comfy_methods(cls)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """ComfyUI's spelling, for plugins: the inputs as the running engine offers them."""
        return cls.input_types(_plugin_env())

    @classmethod
    def input_types(cls, env: Any) -> dict:
        raw: dict[str, dict] = {"required": {}}
        for item in cls.inputs:
            raw.setdefault("optional" if item.optional else "required", {})[item.name] = item.entry(env)
        if cls.hidden:  # like ComfyUI, sections a node does not have are left out, not sent empty
            raw["hidden"] = dict(cls.hidden)
        return raw

    def run(self, ctx, **inputs):  # pragma: no cover - every subclass defines it
        raise TypeError(f"{type(self).__name__} does not define run()")


# ---------------------------------------------------------------------------------------------
# ComfyUI's calling convention on built-in nodes, for plugins that call or subclass them.

_EMITTED = "__latentgraph_emitted__"


def emitted(member: Any) -> bool:
    """Whether a class member is one that Node wrote from the declaration (not a plugin's own)."""
    return getattr(getattr(member, "__func__", member), _EMITTED, False)


def _mark(fn: Callable) -> Callable:
    setattr(fn, _EMITTED, True)
    return fn


_mark(vars(Node)["INPUT_TYPES"].__func__)


def _plugin_env() -> Any:
    """The environment of a call made by plugin code: the running node's, else the bound runtime's."""
    from graph.context import current_context
    ctx = current_context.get()
    if ctx is not None:
        return ctx.env
    from app import compat
    return compat.bound().env


def _plugin_context(class_type: str) -> Any:
    """The running node's context (its progress and interrupt), or a quiet one outside a prompt."""
    import threading

    from graph.context import NodeContext, current_context
    ctx = current_context.get()
    if ctx is not None:
        return ctx
    return NodeContext("", "", class_type, _plugin_env(), {}, {}, threading.Event(), lambda event, data: None)


def _without_ctx(fn: Callable) -> inspect.Signature:
    params = list(inspect.signature(fn).parameters.values())
    return inspect.Signature([params[0]] + params[2:])


def _emit_comfy_methods(cls: type) -> None:
    own = vars(cls)
    name = cls.comfy_function
    declares = "comfy_function" in own or "run" in own  # a plugin's subclass declares neither
    if name and declares and "FUNCTION" not in own:
        cls.FUNCTION = name
    if name and declares and name not in own:
        setattr(cls, name, _comfy_call(cls, name))
    if "fingerprint" in own and "IS_CHANGED" not in own:
        fingerprint = own["fingerprint"].__func__
        cls.IS_CHANGED = classmethod(_mark(_env_hook(fingerprint, "IS_CHANGED")))
    if "check" in own and "VALIDATE_INPUTS" not in own:
        check = own["check"].__func__
        cls.VALIDATE_INPUTS = classmethod(_mark(_env_hook(check, "VALIDATE_INPUTS")))


def _env_hook(fn: Callable, name: str) -> Callable:
    """fingerprint/check(cls, env, ...) as ComfyUI's IS_CHANGED/VALIDATE_INPUTS(cls, ...)."""
    signature = _without_ctx(fn)

    def hook(cls, *args, **kwargs):
        return fn(cls, _plugin_env(), *args, **kwargs)

    hook.__name__ = hook.__qualname__ = name
    hook.__signature__ = signature
    return hook


def _comfy_call(cls: type, name: str) -> Callable:
    """ComfyUI's method: run's parameters without ctx; V3's "execute" is a classmethod."""
    signature = _without_ctx(cls.run)

    def method(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        return self.run(_plugin_context(type(self).__name__), *bound.args[1:], **bound.kwargs)

    method.__signature__ = signature
    method.__name__ = method.__qualname__ = name
    if name != "execute":
        return _mark(method)

    def execute(cls_, *args, **kwargs):
        return _node_output(method(cls_(), *args, **kwargs))

    execute.__signature__ = signature
    execute.__name__ = execute.__qualname__ = name
    return classmethod(_mark(execute))


def _node_output(result: Any) -> Any:
    """A V3 node's return value: comfy_api's NodeOutput where it is importable, else the tuple."""
    try:
        from comfy_api.latest import io
    except ImportError:
        return result["result"] if isinstance(result, dict) else result
    if isinstance(result, dict):
        return io.NodeOutput(*(result.get("result") or ()), ui=result.get("ui"))
    return io.NodeOutput(*result)


# ---------------------------------------------------------------------------------------------
# One adapter over every style.

# What a node class calls each hook, per style: classic (ComfyUI V1), declarative (built-in Node)
# and ComfyUI's V3 schema (comfy_api.latest io.ComfyNode, in compat/).
_HOOK_NAMES = {
    "classic": {"is_changed": "IS_CHANGED", "validate": "VALIDATE_INPUTS", "lazy": "check_lazy_status"},
    "declarative": {"is_changed": "fingerprint", "validate": "check", "lazy": "check_lazy_status"},
    "v3": {"is_changed": "fingerprint_inputs", "validate": "validate_inputs", "lazy": "check_lazy_status"},
}


def _is_v3(cls: Any) -> bool:
    """ComfyUI's V3 node classes: io.ComfyNode subclasses (duck-typed; graph/ never imports compat/)."""
    return isinstance(cls, type) and callable(getattr(cls, "GET_NODE_INFO_V1", None)) \
        and callable(getattr(cls, "PREPARE_CLASS_CLONE", None))


def _v3_overrides(cls: type, name: str) -> bool:
    """Whether a V3 node defines `name` itself: its base class only has placeholders for the hooks."""
    base = cls.GET_BASE_CLASS()
    for klass in cls.__mro__:
        if klass is base:
            return False
        if name in vars(klass):
            return True
    return False


class NodeType:
    """A registered node class, read the same way whatever style it is written in."""

    def __init__(self, name: str, cls: type, display_name: str | None, python_module: str, env: Any = None):
        self.name = name
        self.cls = cls
        # A declarative node sets display_name = None where ComfyUI's node has none (V3 nodes
        # without one are listed with a null display name); "" or no attribute means the class name.
        declared = getattr(cls, "display_name", "")
        self.display_name = display_name or (name if declared == "" else declared)
        self.python_module = python_module
        self.env = env
        self.declarative = isinstance(cls, type) and issubclass(cls, Node)
        self.v3 = _is_v3(cls)
        self.style = "declarative" if self.declarative else "v3" if self.v3 else "classic"
        # A plugin's subclass of a built-in may replace INPUT_TYPES, its FUNCTION method or a hook:
        # each replaced part is then read the classic way, the rest through the declaration.
        self.declared_inputs = self.declarative and emitted(cls.INPUT_TYPES)
        function = getattr(cls, "FUNCTION", None)
        self.declared_call = self.declarative and (function == "run" or emitted(getattr(cls, function or "", None)))
        self.outputs: tuple = tuple(getattr(cls, "RETURN_TYPES", ()) or ())
        self.output_names: tuple = tuple(getattr(cls, "RETURN_NAMES", None) or self.outputs)
        is_list = getattr(cls, "OUTPUT_IS_LIST", None) or ()
        self.output_is_list: tuple = tuple(bool(x) for x in is_list) + (False,) * (len(self.outputs) - len(is_list))
        self.is_output_node = getattr(cls, "OUTPUT_NODE", False) is True
        self.input_is_list = bool(getattr(cls, "INPUT_IS_LIST", False))
        self.not_idempotent = bool(getattr(cls, "NOT_IDEMPOTENT", False))
        self.function = getattr(cls, "FUNCTION", None)

    # -- inputs ---------------------------------------------------------------------------
    def input_types(self) -> dict:
        """The raw INPUT_TYPES, evaluated now (file lists are read on every call)."""
        if self.declared_inputs:
            return self.cls.input_types(self.env)
        return self.cls.INPUT_TYPES()

    def inputs(self) -> dict[str, InputSpec]:
        return parse_input_types(self.input_types())

    def describe(self) -> dict:
        """This node's /object_info entry."""
        if self.v3:  # ComfyUI lists V3 nodes from their schema, every field present
            return self.cls.GET_NODE_INFO_V1()
        raw = self.input_types()
        info = {
            "input": raw,
            "input_order": {k: list(v.keys()) for k, v in raw.items() if isinstance(v, Mapping)},
            "output": list(self.outputs),
            "output_is_list": list(self.output_is_list),
            "output_name": list(self.output_names),
            "name": self.name,
            "display_name": self.display_name,
            "description": getattr(self.cls, "DESCRIPTION", "") or "",
            "python_module": self.python_module,
            "category": getattr(self.cls, "CATEGORY", "sd"),
            "output_node": self.is_output_node,
        }
        for attr, key in (("OUTPUT_TOOLTIPS", "output_tooltips"), ("DEPRECATED", "deprecated"),
                          ("EXPERIMENTAL", "experimental"), ("API_NODE", "api_node")):
            if getattr(self.cls, attr, None):
                info[key] = list(getattr(self.cls, attr)) if attr == "OUTPUT_TOOLTIPS" else True
        return info

    # -- hooks ----------------------------------------------------------------------------
    def _style_of(self, hook: str) -> str:
        """The style a hook is read in: a built-in's declared hook, or a plugin subclass's own."""
        if self.style != "declarative":
            return self.style
        if hook == "function":
            return "declarative" if self.declared_call else "classic"
        if hook in ("is_changed", "validate"):
            member = getattr(self.cls, _HOOK_NAMES["classic"][hook], None)
            return "classic" if member is not None and not emitted(member) else "declarative"
        return "declarative"

    def has_hook(self, hook: str) -> bool:
        """Whether the class defines 'is_changed', 'validate' or 'lazy' (check_lazy_status)."""
        name = _HOOK_NAMES[self._style_of(hook)][hook]
        if self.v3:
            return _v3_overrides(self.cls, name)
        return callable(getattr(self.cls, name, None))

    def has_is_changed(self) -> bool:
        return self.has_hook("is_changed")

    def hook(self, hook: str, instance: Any = None, hidden: Mapping[str, Any] | None = None) -> Callable:
        """The callable behind 'is_changed', 'validate', 'lazy' or 'function' (FUNCTION), taking the
        inputs as keywords; it may return a coroutine. `hidden` maps hidden kinds (UNIQUE_ID, ...) to
        values for V3 nodes, which read them from the class rather than from their arguments."""
        style = self._style_of(hook)
        if hook == "function":
            if style == "declarative":
                return lambda ctx, **kw: instance.run(ctx, **kw)
            if not self.function or not hasattr(self.cls, self.function):
                raise TypeError(f"node class {self.name} has no FUNCTION method {self.function!r}")
        name = self.function if hook == "function" else _HOOK_NAMES[style][hook]
        if self.v3:
            return getattr(self.cls.PREPARE_CLASS_CLONE(dict(hidden or {})), name)
        if style == "declarative" and hook in ("is_changed", "validate"):
            fn, env = getattr(self.cls, name), self.env
            return lambda **kw: fn(env, **kw)
        return getattr(instance if instance is not None and hook in ("function", "lazy") else self.cls, name)

    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(getattr(self.cls, self.function or "run", None))

    def is_changed(self, constants: dict) -> Any:
        fn = self.hook("is_changed")
        return fn(**constants) if self._style_of("is_changed") == "declarative" else fn(**_accepted(fn, constants))

    def validator(self) -> tuple[Callable, set[str], bool, bool] | None:
        """(function, parameter names, takes **kwargs, wants input_types) of the custom validator."""
        if not self.has_hook("validate"):
            return None
        target = getattr(self.cls, _HOOK_NAMES[self._style_of("validate")]["validate"])
        fn = self.hook("validate") if not self.v3 else (lambda **kw: self.hook("validate")(**kw))
        params = inspect.signature(target).parameters
        names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        names.discard("env")
        has_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
        return fn, names, has_kwargs, "input_types" in names

    def instantiate(self) -> Any:
        return self.cls()

    def takes(self, name: str) -> bool:
        """Whether the node's function is given a hidden value of this name: a classic node always
        is (as in ComfyUI); a built-in one only where its `run` names it, so that a built-in that
        stands for one of ComfyUI's V3 nodes (hidden values in `cls.hidden` there) keeps that
        node's signature."""
        if self._style_of("function") != "declarative":
            return True
        params = inspect.signature(self.cls.run).parameters
        return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def call(self, instance: Any, ctx: Any, kwargs: dict, hidden: Mapping[str, Any] | None = None) -> Any:
        """One call of the node's function (a coroutine for an async node), its result normalised
        to the classic shapes (a tuple, or a dict with "ui"/"result"/"expand")."""
        fn = self.hook("function", instance, hidden)
        result = fn(ctx, **kwargs) if self._style_of("function") == "declarative" else fn(**kwargs)
        if inspect.isawaitable(result):
            return self._finish_async(result)
        return self.normalise(result)

    async def _finish_async(self, result: Any) -> Any:
        return self.normalise(await result)

    def normalise(self, result: Any) -> Any:
        """V3 nodes return a NodeOutput (args, ui, expand, block_execution): the classic dict."""
        if not self.v3 or not hasattr(result, "block_execution"):
            return result
        ui = result.ui
        if ui is not None and not isinstance(ui, dict):
            ui = ui.as_dict()
        doc: dict = {} if ui is None else {"ui": ui}
        if result.block_execution is not None:
            doc["result"] = (ExecutionBlocker(result.block_execution),) * len(self.outputs)
        elif result.args:
            doc["result"] = tuple(result.args)
        if result.expand is not None:
            doc["expand"] = result.expand
        return doc if doc else {"result": ()}


def _accepted(fn: Callable, kwargs: dict) -> dict:
    """Only the keyword arguments `fn` can take (IS_CHANGED often names a subset)."""
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}
