"""The CLIP text transformer of SD1, SD2 and SDXL, as ComfyUI computes it.

Token + position embeddings, pre-LayerNorm blocks of causal multi-head self-attention and an MLP,
a final layer norm, and (for OpenCLIP towers) a text projection. Module names give the state-dict
keys of transformers' CLIPTextModel(WithProjection), which ComfyUI and plugins rely on
(``text_model.encoder.layers.N.self_attn.q_proj.weight``, ``text_projection.weight``, ...).

Weights are kept in any storage dtype and every layer casts its weight and bias to the input's
dtype per call; the embeddings come out in float32, so the whole transformer computes in float32
however it is stored (ComfyUI keeps text encoders in fp16 and computes them in fp32).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention_basic, comfy_cpu_numerics

COMPUTE_DTYPE = torch.float32


@dataclass(frozen=True)
class ClipTextConfig:
    """Sizes of one text transformer (attribute names as transformers' CLIPTextConfig)."""
    vocab_size: int = 49408
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"  # OpenAI CLIP; OpenCLIP uses "gelu"
    projection_dim: int = 768
    layer_norm_eps: float = 1e-5


# -- layers whose weights are cast to the input's dtype per call (ComfyUI's manual cast) ---------

class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class Embedding(nn.Embedding):
    """Rows looked up in the storage dtype, then widened: the same values as widening the table."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).to(COMPUTE_DTYPE)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


# -- the transformer ------------------------------------------------------------------------------

class ClipAttention(nn.Module):
    def __init__(self, c: ClipTextConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (Linear(c.hidden_size, c.hidden_size) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if comfy_cpu_numerics(x):
            # ComfyUI's text encoders compute attention on the CPU with its basic attention and an
            # additive causal mask of -max above the diagonal: the same numbers, bit for bit.
            t = x.shape[1]
            causal = torch.full((t, t), -torch.finfo(x.dtype).max, dtype=x.dtype, device=x.device).triu_(1)
            return self.out_proj(attention_basic(q, k, v, self.heads, mask=causal))
        b, t, d = x.shape
        q, k, v = (p.view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class ClipMLP(nn.Module):
    def __init__(self, c: ClipTextConfig):
        super().__init__()
        self.fc1 = Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = Linear(c.intermediate_size, c.hidden_size)
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    def __init__(self, c: ClipTextConfig):
        super().__init__()
        self.layer_norm1 = LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.self_attn = ClipAttention(c)
        self.layer_norm2 = LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = ClipMLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nn.Module):
    def __init__(self, c: ClipTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(ClipEncoderLayer(c) for _ in range(c.num_hidden_layers))


class ClipEmbeddings(nn.Module):
    def __init__(self, c: ClipTextConfig):
        super().__init__()
        self.token_embedding = Embedding(c.vocab_size, c.hidden_size)
        self.position_embedding = Embedding(c.max_position_embeddings, c.hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Float32 token embeddings [n, T, D] (from ids, or given as vectors) plus positions."""
        x = (tokens if tokens.is_floating_point() else self.token_embedding(tokens)).to(COMPUTE_DTYPE)
        return x + self.position_embedding(torch.arange(x.shape[1], device=x.device))


class ClipTextTransformer(nn.Module):
    """Embeddings, encoder layers and the final layer norm (transformers' `text_model`)."""

    def __init__(self, c: ClipTextConfig):
        super().__init__()
        self.embeddings = ClipEmbeddings(c)
        self.encoder = ClipEncoder(c)
        self.final_layer_norm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, tokens: torch.Tensor, keep: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(last layer's output after the final norm, the output of layer `keep` as it is, or None).

        `tokens` are ids [n, T] or input embeddings [n, T, D]; attention is causal."""
        x = self.embeddings(tokens)
        kept = None
        for i, layer in enumerate(self.encoder.layers):
            x = layer(x)
            if i == keep:
                kept = x
        return self.final_layer_norm(x), kept


class ClipTextModel(nn.Module):
    """`text_model` and, for projected towers, `text_projection` (no bias), as ComfyUI's keys."""

    def __init__(self, config: ClipTextConfig, projected: bool = False):
        super().__init__()
        self.config = config
        self.text_model = ClipTextTransformer(config)
        if projected:
            self.text_projection = Linear(config.hidden_size, config.projection_dim, bias=False)

    # what plugins read off ComfyUI's (and transformers') text model
    @property
    def num_layers(self) -> int:
        return len(self.text_model.encoder.layers)

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype (computation is float32)."""
        return self.text_model.embeddings.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_model.embeddings.token_embedding.weight.device

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.text_model.embeddings.token_embedding = embeddings
