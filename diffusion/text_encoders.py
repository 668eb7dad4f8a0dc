"""CLIP text encoders of SD1 (CLIP-L), SD2 (OpenCLIP ViT-H) and SDXL (CLIP-L + OpenCLIP bigG).

Each transformer is diffusion.clip_text's, whose keys are those of transformers' CLIPTextModel /
CLIPTextModelWithProjection. CLIP-L checkpoints are already in that layout (only ``position_ids``
differs: files carry it, we regenerate it). OpenCLIP checkpoints differ (fused q/k/v,
``resblocks``, ``ln_final``, a ``text_projection`` matrix used as ``x @ P``), so they are
converted on load and back in :meth:`TextEncoder.state_dict_original`.

How the output is read follows ComfyUI:

* SD1: last layer after the final layer norm. SD2: penultimate layer, final norm applied.
  SDXL: penultimate layer of both encoders *without* the final norm, CLIP-L (768) and bigG
  (1280) concatenated to 2048 on the feature axis.
* ``clip_skip`` is CLIPSetLastLayer's ``stop_at_clip_layer``: -1 the last layer, -2 the
  penultimate, ... It replaces the family default; whether the final norm is applied stays a
  property of the family (so SDXL at -1 is the last layer un-normed). A value deeper than the
  model falls back to the normed last layer.
* Windows of 77 tokens are encoded together and concatenated on the token axis. The pooled
  output is the first window's final-normed hidden state at its first end token, through the
  text projection where the model has one (SD1 has none: ComfyUI's projection is then identity).
* Token weights: when any weight differs from 1, an empty prompt (start, end, padding) is
  encoded alongside and each weighted position becomes ``(z - z_empty) * w + z_empty``.
* Precision: weights stay in their storage dtype (fp16 on the CPU by default, as ComfyUI's) and
  are computed in float32.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from .clip_text import COMPUTE_DTYPE, ClipTextConfig, ClipTextModel
from .device import meta_skeleton
from .prompt_weights import Chunk, EmbeddingResolver, has_weights
from .tokenizer import ClipTokenizer, FamilyTokenizer, TowerTokenizer

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
Tokens = dict[str, list[Chunk]]
"""Tokenized prompt: per text encoder name ("l", "h", "g"), its windows of (token, weight)."""

VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
START_TOKEN, END_TOKEN = 49406, 49407
# OpenCLIP's initial temperature (ln 100); only used when a file lacks logit_scale.
DEFAULT_LOGIT_SCALE = math.log(100.0)


# -- configurations -----------------------------------------------------------------------------

def text_config(width: int, layers: int, *, heads: int | None = None, intermediate: int | None = None,
                act: str = "quick_gelu", projection_dim: int | None = None, vocab: int = VOCAB_SIZE,
                positions: int = CONTEXT_LENGTH) -> ClipTextConfig:
    """A ClipTextConfig; heads default to width // 64 (64-wide heads, as in every SD encoder)."""
    return ClipTextConfig(
        vocab_size=vocab, hidden_size=width, num_hidden_layers=layers,
        num_attention_heads=heads or max(1, width // 64), intermediate_size=intermediate or 4 * width,
        max_position_embeddings=positions, hidden_act=act, projection_dim=projection_dim or width,
    )


def clip_l_config() -> ClipTextConfig:
    """OpenAI CLIP ViT-L/14 text transformer (SD1, SDXL's first encoder)."""
    return text_config(768, 12, act="quick_gelu")


def open_clip_h_config() -> ClipTextConfig:
    """OpenCLIP ViT-H/14 text transformer (SD2)."""
    return text_config(1024, 24, act="gelu", projection_dim=1024)


def open_clip_bigg_config() -> ClipTextConfig:
    """OpenCLIP ViT-bigG/14 text transformer (SDXL's second encoder, the SDXL refiner's only one)."""
    return text_config(1280, 32, act="gelu", projection_dim=1280)


# -- key conversion -----------------------------------------------------------------------------
# "Inner" keys are those of the bare text transformer (`text_model`: embeddings.*, encoder.layers.*,
# final_layer_norm.*).

_OPEN_CLIP_RENAMES = [  # (original, inner) for everything but the fused attention input
    (r"token_embedding\.weight", "embeddings.token_embedding.weight"),
    (r"positional_embedding", "embeddings.position_embedding.weight"),
    (r"ln_final\.(weight|bias)", r"final_layer_norm.\1"),
    (r"transformer\.resblocks\.(\d+)\.ln_1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"transformer\.resblocks\.(\d+)\.ln_2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"encoder.layers.\1.mlp.fc1.\2"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"encoder.layers.\1.mlp.fc2.\2"),
]
_FUSED_QKV = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")
_INNER_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)")


def open_clip_to_inner(sd: StateDict) -> tuple[StateDict, StateDict, list[str]]:
    """OpenCLIP text keys (prefix removed) -> (inner transformer keys, extras, unknown keys).

    extras holds ``text_projection.weight`` (transposed to Linear's [out, in]) and ``logit_scale``.
    """
    inner: StateDict = {}
    extras: StateDict = {}
    unknown: list[str] = []
    for key, value in sd.items():
        fused = _FUSED_QKV.fullmatch(key)
        if fused:
            layer, kind = fused.groups()
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                inner[f"encoder.layers.{layer}.self_attn.{name}_proj.{kind}"] = part
        elif key == "text_projection":
            extras["text_projection.weight"] = value.t()
        elif key == "logit_scale":
            extras["logit_scale"] = value
        else:
            for pattern, target in _OPEN_CLIP_RENAMES:
                if re.fullmatch(pattern, key):
                    inner[re.sub(pattern, target, key)] = value
                    break
            else:
                unknown.append(key)
    return inner, extras, unknown


def inner_to_open_clip(inner: StateDict) -> StateDict:
    """Inner transformer keys -> OpenCLIP text keys (prefix not added), fusing q/k/v back."""
    out: StateDict = {}
    for key, value in inner.items():
        qkv = _INNER_QKV.fullmatch(key)
        if qkv:
            layer, kind = qkv.groups()
            parts = [inner[f"encoder.layers.{layer}.self_attn.{n}_proj.{kind}"] for n in "qkv"]
            out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
        elif re.fullmatch(r"encoder\.layers\.\d+\.self_attn\.[kv]_proj\.(weight|bias)", key):
            continue  # fused together with q above
        else:
            out[_rename_back(key)] = value
    return out


def _rename_back(inner_key: str) -> str:
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding"}
    if inner_key in fixed:
        return fixed[inner_key]
    m = re.fullmatch(r"final_layer_norm\.(weight|bias)", inner_key)
    if m:
        return f"ln_final.{m.group(1)}"
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", inner_key)
    if not m:
        raise KeyError(inner_key)
    layer, rest = m.groups()
    local = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    module, param = rest.rsplit(".", 1)
    return f"transformer.resblocks.{layer}.{local[module]}.{param}"


def clip_l_to_inner(sd: StateDict) -> tuple[StateDict, list[str]]:
    """transformers-layout CLIP keys (prefix removed) -> (inner keys, ignored keys).

    Old SD1 files lack the ``text_model.`` level; ``position_ids`` is dropped because some files
    store it as floats with rounding damage, and it is always 0..76 anyway.
    """
    inner: StateDict = {}
    ignored: list[str] = []
    for key, value in sd.items():
        bare = key.removeprefix("text_model.")
        if bare == "embeddings.position_ids" or not bare.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
            ignored.append(key)
        else:
            inner[bare] = value
    return inner, ignored


def _layer_count(keys, pattern: str) -> int:
    return len({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def config_from_state_dict(sd: StateDict, layout: str) -> ClipTextConfig:
    """Sizes read off the weights of one encoder (prefix removed), so tiny models work too."""
    if layout == "openclip":
        vocab, width = sd["token_embedding.weight"].shape
        layers = _layer_count(sd, r"transformer\.resblocks\.(\d+)\.")
        intermediate = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        positions = sd["positional_embedding"].shape[0]
        projection = sd["text_projection"].shape[1] if "text_projection" in sd else width
        return text_config(width, layers, intermediate=intermediate, act="gelu", projection_dim=projection,
                           vocab=vocab, positions=positions)
    inner, _ = clip_l_to_inner(sd)
    vocab, width = inner["embeddings.token_embedding.weight"].shape
    return text_config(width, _layer_count(inner, r"encoder\.layers\.(\d+)\."),
                       intermediate=inner["encoder.layers.0.mlp.fc1.weight"].shape[0], act="quick_gelu",
                       vocab=vocab, positions=inner["embeddings.position_embedding.weight"].shape[0])


# -- one transformer ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TowerSpec:
    """What distinguishes one text encoder slot of a family, in ComfyUI's terms."""
    name: str  # tokens key: "l", "h" or "g"
    prefix: str  # checkpoint key prefix of this encoder
    layout: str  # "clip" (transformers layout) or "openclip"
    pad_token: int  # what fills a window after its end token
    default_layer: int | None  # None: last layer, final-normed; else CLIPSetLastLayer-style index
    norm_hidden: bool  # apply the final layer norm to a hidden (non-last) layer
    embedding_key: str  # tensor name in multi-encoder embedding files
    projected: bool  # has a text projection (pooled output goes through it)


class ClipTextTower(nn.Module):
    """One CLIP text transformer, read the way ComfyUI reads it.

    This is ComfyUI's SDClipModel to a plugin: `transformer` (state-dict keys as ComfyUI's,
    "transformer.text_model.encoder.layers..."), `encode_token_weights(windows)`,
    `set_clip_options({"layer": i, "projected_pooled": b})` / `reset_clip_options()`,
    `clip_layer(i)`, `special_tokens`, `num_layers`, `load_sd(sd)`.
    """

    def __init__(self, spec: TowerSpec, config: ClipTextConfig):
        super().__init__()
        self.spec = spec
        self.transformer = ClipTextModel(config, projected=spec.projected)
        if spec.layout == "openclip":
            self.logit_scale = nn.Parameter(torch.tensor(DEFAULT_LOGIT_SCALE), requires_grad=False)
        self.special_tokens = {"start": START_TOKEN, "end": END_TOKEN, "pad": spec.pad_token}
        self.layer_norm_hidden_state = spec.norm_hidden
        self.reset_clip_options()
        self.eval().requires_grad_(False)

    @property
    def text(self) -> nn.Module:
        """The bare text transformer (embeddings, encoder, final_layer_norm)."""
        return self.transformer.text_model

    # ComfyUI's layer options ------------------------------------------------------------------
    def set_clip_options(self, options: dict) -> None:
        """{"layer": index or None (None or deeper than the model: the last layer, final-normed),
        "projected_pooled": whether the pooled output goes through the text projection}."""
        if "layer" in options:
            layer = options["layer"]
            self.layer = "last" if layer is None or abs(layer) > self.num_layers else layer
        self.return_projected_pooled = options.get("projected_pooled", self.return_projected_pooled)

    def reset_clip_options(self) -> None:
        self.layer = "default"  # the family's layer (spec.default_layer)
        self.return_projected_pooled = True

    def clip_layer(self, layer_idx) -> None:
        self.set_clip_options({"layer": layer_idx})

    def reset_clip_layer(self) -> None:
        self.reset_clip_options()

    @property
    def layer_idx(self):
        return self.spec.default_layer if self.layer == "default" else (None if self.layer == "last" else self.layer)

    @property
    def width(self) -> int:
        return self.text.embeddings.token_embedding.embedding_dim

    @property
    def num_layers(self) -> int:
        return len(self.text.encoder.layers)

    # weights ---------------------------------------------------------------------------------
    def _inner_prefix(self) -> str:
        return "transformer.text_model."

    def load_original(self, sd: StateDict, dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None) -> list[str]:
        """Load this encoder's original-layout weights (prefix removed); returns ignored keys.

        Meant for a tower built on the meta device: tensors are assigned, not copied.
        """
        if self.spec.layout == "openclip":
            inner, extras, ignored = open_clip_to_inner(sd)
        else:
            (inner, ignored), extras = clip_l_to_inner(sd), {}
        state = {self._inner_prefix() + k: v for k, v in inner.items()}
        if self.spec.projected and "text_projection.weight" in extras:
            state["transformer.text_projection.weight"] = extras["text_projection.weight"]
        if self.spec.layout == "openclip" and "logit_scale" in extras:
            state["logit_scale"] = extras["logit_scale"].reshape(())
        state = {k: v.to(device=device, dtype=dtype or v.dtype).contiguous() for k, v in state.items()}
        result = self.load_state_dict(state, strict=False, assign=True)
        ignored += [k for k in result.unexpected_keys]
        self._fill_missing(set(result.missing_keys), dtype, device)
        return ignored

    def _fill_missing(self, missing: set[str], dtype, device) -> None:
        """Defaults for what files may lack (projection: identity, as ComfyUI); error for the rest."""
        optional = {"transformer.text_projection.weight", "logit_scale"}
        required = sorted(missing - optional)
        if required:
            raise ValueError(f"text encoder weights missing: {required[:8]}{' ...' if len(required) > 8 else ''}")
        like = self.text.embeddings.token_embedding.weight
        dtype, device = dtype or like.dtype, device or like.device
        if "transformer.text_projection.weight" in missing:
            proj = self.transformer.text_projection
            proj.weight = nn.Parameter(torch.eye(proj.out_features, proj.in_features, dtype=dtype, device=device),
                                       requires_grad=False)
        if "logit_scale" in missing:
            self.logit_scale = nn.Parameter(torch.tensor(DEFAULT_LOGIT_SCALE, dtype=dtype, device=device),
                                            requires_grad=False)

    def state_dict_original(self) -> StateDict:
        """This encoder's weights in the original layout, prefix not added."""
        inner = self.text.state_dict()
        if self.spec.layout == "clip":
            out = {"text_model." + k: v for k, v in inner.items()}
            positions = inner["embeddings.position_embedding.weight"]
            ids = torch.arange(positions.shape[0], device=positions.device)
            out["text_model.embeddings.position_ids"] = ids.unsqueeze(0)
            return out
        out = inner_to_open_clip(inner)
        if self.spec.projected:
            out["text_projection"] = self.transformer.text_projection.weight.t().contiguous()
        out["logit_scale"] = self.logit_scale.data
        return out

    # encoding --------------------------------------------------------------------------------
    def load_sd(self, sd: StateDict):
        """Load weights given in transformers' layout (text_model.*, text_projection.weight) or
        OpenCLIP's, without prefix, as ComfyUI's SDClipModel.load_sd does."""
        if any(k.startswith("transformer.resblocks.") for k in sd):
            inner, extras, _ = open_clip_to_inner(sd)
        else:
            inner, _ = clip_l_to_inner(sd)
            extras = {k: v for k, v in sd.items() if k == "text_projection.weight"}
        state = {self._inner_prefix() + k: v for k, v in inner.items()}
        if self.spec.projected and "text_projection.weight" in extras:
            state["transformer.text_projection.weight"] = extras["text_projection.weight"]
        return self.load_state_dict(state, strict=False)

    def hidden_index(self, clip_skip: int | None = None) -> int | None:
        """Index of the layer whose output is read, or None for the final-normed last layer.
        `clip_skip` overrides the layer options when given."""
        layer = self.layer_idx if clip_skip is None else clip_skip
        if layer is None or abs(layer) > self.num_layers or layer == self.num_layers:
            return None
        return layer % self.num_layers

    def input_embeddings(self, chunks: list[Chunk]) -> torch.Tensor:
        """Float32 token embeddings [n, T, D]; embedding vectors replace the rows they stand in for."""
        table = self.text.embeddings.token_embedding
        ids = torch.tensor([[0 if isinstance(t[0], torch.Tensor) else int(t[0]) for t in chunk] for chunk in chunks],
                           dtype=torch.long, device=table.weight.device)
        x = table(ids).to(COMPUTE_DTYPE)  # already so for our table; also for one a plugin set
        for b, chunk in enumerate(chunks):
            for j, item in enumerate(chunk):
                token = item[0]
                if isinstance(token, torch.Tensor):
                    x[b, j] = token.to(device=x.device, dtype=x.dtype)
        return x

    @torch.no_grad()
    def forward(self, chunks: list[Chunk], clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states [n, T, D], pooled [n, P]) in float32 for n windows."""
        last, hidden = self.text(self.input_embeddings(chunks), keep=self.hidden_index(clip_skip))
        if hidden is None:
            hidden = last
        elif self.spec.norm_hidden:
            hidden = self.text.final_layer_norm(hidden)
        ends = [next((j for j, t in enumerate(c) if not isinstance(t[0], torch.Tensor) and t[0] == END_TOKEN),
                     len(c) - 1) for c in chunks]
        pooled = last[torch.arange(len(chunks), device=last.device), torch.tensor(ends, device=last.device)]
        if self.spec.projected and self.return_projected_pooled:
            pooled = self.transformer.text_projection(pooled)
        return hidden.float(), pooled.float()

    def encode_token_weights(self, chunks: list[Chunk], clip_skip: int | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """cond [1, 77 * windows, D] with token weights applied, pooled [1, P] of the first window,
        both float32 on the CPU. Windows hold (token, weight) or (token, weight, word id)."""
        weighted = has_weights(chunks)
        batch = list(chunks)
        if weighted or not batch:
            length = max((len(c) for c in chunks), default=CONTEXT_LENGTH)
            empty = [(START_TOKEN, 1.0), (END_TOKEN, 1.0)] + [(self.spec.pad_token, 1.0)] * (length - 2)
            batch.append(empty)
        hidden, pooled = self(batch, clip_skip)
        if not chunks:
            return hidden[-1:].cpu(), pooled[:1].cpu()
        z = hidden[:len(chunks)]
        if weighted:
            z_empty = hidden[-1]
            weights = torch.tensor([[t[1] for t in c] for c in chunks], dtype=z.dtype, device=z.device)[..., None]
            z = torch.where(weights != 1.0, (z - z_empty) * weights + z_empty, z)
        return z.reshape(1, -1, z.shape[-1]).cpu(), pooled[:1].cpu()


# -- encoders of each family --------------------------------------------------------------------

def _clip_l(prefix: str, default_layer: int | None, norm_hidden: bool) -> TowerSpec:
    return TowerSpec("l", prefix, "clip", END_TOKEN, default_layer, norm_hidden, "clip_l", projected=False)


def _open_clip(name: str, prefix: str, norm_hidden: bool, embedding_key: str) -> TowerSpec:
    return TowerSpec(name, prefix, "openclip", 0, -2, norm_hidden, embedding_key, projected=True)


class TextEncoder(nn.Module):
    """The text side of one model family: tokenize a prompt, encode tokens to conditioning.

    ``from_state_dict`` on this base class picks the family from the checkpoint's keys; on a
    subclass it builds that family. Tensors come back on the weights' device, in float32.
    """
    family = ""
    TOWERS: tuple[TowerSpec, ...] = ()
    DEFAULT_CONFIGS: dict = {}

    def __init__(self, configs: dict[str, ClipTextConfig] | None = None, *, tokenizer: ClipTokenizer | None = None,
                 embeddings: EmbeddingResolver | None = None):
        """Real-size encoders unless ``configs`` (per tower name) says otherwise. Build under
        ``torch.device("meta")`` to avoid allocating weights that will be loaded anyway."""
        super().__init__()
        configs = configs or {}
        # Attributes clip_l / clip_h / clip_g, as ComfyUI's models name them (and their keys).
        for spec in self.TOWERS:
            setattr(self, f"clip_{spec.name}", ClipTextTower(spec, configs.get(spec.name)
                                                             or self.DEFAULT_CONFIGS[spec.name]()))
        self.clip_name = self.TOWERS[0].name if self.TOWERS else "l"
        self.clip = f"clip_{self.clip_name}"
        self._bpe = tokenizer
        self.embeddings = embeddings

    @property
    def towers(self) -> dict[str, ClipTextTower]:
        return {spec.name: getattr(self, f"clip_{spec.name}") for spec in self.TOWERS}

    @property
    def dtypes(self) -> set:
        return {tower.text.embeddings.token_embedding.weight.dtype for tower in self.towers.values()}

    @property
    def bpe(self) -> ClipTokenizer:
        if self._bpe is None:
            self._bpe = ClipTokenizer()
        return self._bpe

    def make_tokenizer(self, embeddings: EmbeddingResolver | None = None) -> FamilyTokenizer:
        """The CLIP object's tokenizer for this family (ComfyUI's SD1Tokenizer / SDXLTokenizer)."""
        resolver = embeddings if embeddings is not None else self.embeddings
        return FamilyTokenizer({name: TowerTokenizer(self.bpe, tower.spec.pad_token, tower.width,
                                                     tower.spec.embedding_key, resolver)
                                for name, tower in self.towers.items()})

    # ComfyUI's encoder interface --------------------------------------------------------------
    def set_clip_options(self, options: dict) -> None:
        for tower in self.towers.values():
            tower.set_clip_options(options)

    def reset_clip_options(self) -> None:
        for tower in self.towers.values():
            tower.reset_clip_options()

    def clip_layer(self, layer_idx) -> None:
        self.set_clip_options({"layer": layer_idx})

    def reset_clip_layer(self) -> None:
        self.reset_clip_options()

    def encode_token_weights(self, token_weight_pairs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond [1, 77 * windows, D], pooled [1, P]) from {encoder name: windows}."""
        with torch.no_grad():
            outputs = {name: tower.encode_token_weights(token_weight_pairs[name])
                       for name, tower in self.towers.items()}
        return self.combine(outputs)

    def load_sd(self, sd: StateDict):
        """One encoder's weights in transformers' or OpenCLIP's layout (ComfyUI's load_sd): bigG
        when the file has its 32 layers, else the first encoder."""
        towers = self.towers
        if "g" in towers and ("text_model.encoder.layers.30.mlp.fc1.weight" in sd
                              or "transformer.resblocks.30.attn.in_proj_weight" in sd):
            return towers["g"].load_sd(sd)
        return next(iter(towers.values())).load_sd(sd)

    # construction ----------------------------------------------------------------------------
    @classmethod
    def detect(cls, sd) -> type[TextEncoder] | None:
        """The family whose text-encoder keys the state dict holds, or None."""
        for family in (SDXLTextEncoder, SDXLRefinerTextEncoder, SD2TextEncoder, SD1TextEncoder):
            if family.matches(sd):
                return family
        return None

    @classmethod
    def matches(cls, sd) -> bool:
        return all(_has_layout(sd, spec) for spec in cls.TOWERS)

    @classmethod
    def from_state_dict(cls, sd: StateDict, *, dtype: torch.dtype | None = torch.float32,
                        device: torch.device | str | None = None, embeddings: EmbeddingResolver | None = None,
                        tokenizer: ClipTokenizer | None = None) -> TextEncoder:
        """Build from a checkpoint state dict (full keys; other components' keys are ignored).

        Sizes come from the weights. ``dtype`` is the storage dtype, float32 by default; None
        keeps the file's (of its token embedding, for every tensor). Whatever the storage, the
        encoder computes in float32. Keys nobody uses (e.g. ``position_ids``) are ignored.
        """
        family = cls if cls.TOWERS else cls.detect(sd)
        if family is None or not family.matches(sd):
            wanted = family.family if family else "SD1/SD2/SDXL"
            raise ValueError(f"no {wanted} text encoder keys found in the state dict")
        configs, parts = {}, {}
        for spec in family.TOWERS:
            parts[spec.name] = {k[len(spec.prefix):]: v for k, v in sd.items() if k.startswith(spec.prefix)}
            configs[spec.name] = config_from_state_dict(parts[spec.name], spec.layout)
        with meta_skeleton():
            encoder = family(configs, tokenizer=tokenizer, embeddings=embeddings)
        for spec in family.TOWERS:
            table = parts[spec.name].get("token_embedding.weight")
            if table is None:
                table = clip_l_to_inner(parts[spec.name])[0]["embeddings.token_embedding.weight"]
            target = dtype or table.dtype
            ignored = getattr(encoder, f"clip_{spec.name}").load_original(parts[spec.name], target, device)
            if ignored:
                log.debug("%s text encoder %s: ignored %s", family.family, spec.name, ignored)
        return encoder

    # tokens ----------------------------------------------------------------------------------
    def tokenize(self, text: str, embeddings: EmbeddingResolver | None = None) -> Tokens:
        """Per encoder, the prompt's 77-token windows of (token id or embedding vector, weight)."""
        return self.make_tokenizer(embeddings).tokenize_with_weights(text)

    def encode(self, tokens: Tokens | str, clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond, pooled) for tokens or prompt text; ``clip_skip`` None for the family default, else
        CLIPSetLastLayer's negative layer index."""
        if isinstance(tokens, str):
            tokens = self.tokenize(tokens)
        self.reset_clip_options()
        if clip_skip is not None:
            self.set_clip_options({"layer": clip_skip})
        try:
            return self.encode_token_weights(tokens)
        finally:
            self.reset_clip_options()

    def combine(self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        (cond, pooled), = outputs.values()
        return cond, pooled

    # weights ---------------------------------------------------------------------------------
    def state_dict_original(self) -> StateDict:
        """Weights under their checkpoint keys and shapes (as CheckpointSave would write them)."""
        out: StateDict = {}
        for tower in self.towers.values():
            out.update({tower.spec.prefix + k: v for k, v in tower.state_dict_original().items()})
        return out


def _has_layout(sd, spec: TowerSpec) -> bool:
    if spec.layout == "openclip":
        return spec.prefix + "transformer.resblocks.0.attn.in_proj_weight" in sd
    return any(spec.prefix + p + "embeddings.token_embedding.weight" in sd for p in ("text_model.", ""))


class SD1TextEncoder(TextEncoder):
    """SD1.x: CLIP-L, last layer with the final norm, padded with the end token."""
    family = "sd1"
    TOWERS = (_clip_l("cond_stage_model.transformer.", None, norm_hidden=True),)
    DEFAULT_CONFIGS = {"l": clip_l_config}


class SD2TextEncoder(TextEncoder):
    """SD2.x: OpenCLIP ViT-H, penultimate layer with the final norm, padded with token 0."""
    family = "sd2"
    # ComfyUI looks SD2 embeddings up under the "clip_l" name too (its tokenizer default).
    TOWERS = (_open_clip("h", "cond_stage_model.model.", norm_hidden=True, embedding_key="clip_l"),)
    DEFAULT_CONFIGS = {"h": open_clip_h_config}


class SDXLTextEncoder(TextEncoder):
    """SDXL base: CLIP-L and bigG penultimate layers (no final norm) side by side; bigG's pooled."""
    family = "sdxl"
    TOWERS = (_clip_l("conditioner.embedders.0.transformer.", -2, norm_hidden=False),
              _open_clip("g", "conditioner.embedders.1.model.", norm_hidden=False, embedding_key="clip_g"))
    DEFAULT_CONFIGS = {"l": clip_l_config, "g": open_clip_bigg_config}

    def combine(self, outputs):
        (l_cond, _), (g_cond, g_pooled) = outputs["l"], outputs["g"]
        # Embeddings of different lengths per encoder can leave one side with an extra window.
        length = min(l_cond.shape[1], g_cond.shape[1])
        return torch.cat([l_cond[:, :length], g_cond[:, :length]], dim=-1), g_pooled


class SDXLRefinerTextEncoder(TextEncoder):
    """SDXL refiner: bigG alone, penultimate layer without the final norm, and its pooled output."""
    family = "sdxl_refiner"
    TOWERS = (_open_clip("g", "conditioner.embedders.0.model.", norm_hidden=False, embedding_key="clip_g"),)
    DEFAULT_CONFIGS = {"g": open_clip_bigg_config}


FAMILIES = {cls.family: cls for cls in (SD1TextEncoder, SD2TextEncoder, SDXLTextEncoder, SDXLRefinerTextEncoder)}
