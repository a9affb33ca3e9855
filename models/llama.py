"""Llama as a functional model: RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP, optional KV cache.

Parameter paths are Hugging Face's LlamaForCausalLM names ("layers.0.self_attn.q_proj.weight"), Linear weights
in torch's [out, in] layout without biases, so an importer maps a checkpoint key for key.
Attention is written out (scores, causal mask, softmax) so fusion passes have the real pattern to find.
The cache form takes and returns keys/values as [num_layers, batch, num_kv_heads, length, head_dim].
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

from crossgraph.graphs import FunctionalModel


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Llama hyperparameters; the defaults are the `small` preset (125M, grouped-query attention)."""

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be divisible by 2 for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def tiny(cls) -> "LlamaConfig":
        return cls(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64)

    @classmethod
    def tiny_parallel(cls) -> "LlamaConfig":
        """Tiny, with sizes (16 query and 8 KV heads, vocabulary 128) that split evenly over 2, 4 or 8 devices."""
        return cls(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=64)

    @classmethod
    def small(cls) -> "LlamaConfig":
        return cls()


def init(config: LlamaConfig, seed: int = 0) -> dict:
    """Hugging Face Llama's initialization: N(0, 0.02) embeddings and projections, RMSNorm weights at one."""
    g = torch.Generator().manual_seed(seed)
    d, kv = config.hidden_size, config.num_key_value_heads * config.head_dim

    def linear(n_out: int, n_in: int) -> dict:
        return {"weight": torch.randn(n_out, n_in, generator=g) * 0.02}

    def rms_norm() -> dict:
        return {"weight": torch.ones(d)}

    layers = {
        str(i): {
            "input_layernorm": rms_norm(),
            "self_attn": {"q_proj": linear(d, d), "k_proj": linear(kv, d), "v_proj": linear(kv, d),
                          "o_proj": linear(d, d)},
            "post_attention_layernorm": rms_norm(),
            "mlp": {"gate_proj": linear(config.intermediate_size, d), "up_proj": linear(config.intermediate_size, d),
                    "down_proj": linear(d, config.intermediate_size)},
        }
        for i in range(config.num_hidden_layers)
    }
    params = {"embed_tokens": linear(config.vocab_size, d), "layers": layers, "norm": rms_norm()}
    if not config.tie_word_embeddings:
        params["lm_head"] = linear(config.vocab_size, d)
    return params


def rms_norm(p: dict, x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight, normalized in float32 as Hugging Face does for low-precision inputs."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return p["weight"] * h.to(x.dtype)


def rotary(positions: torch.Tensor, config: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, head_dim] of each position's angles, the frequencies repeated for both halves."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32,
                                                         device=positions.device) / dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, head_dim] by its positions' angles (Hugging Face's rotate_half convention)."""
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, KV, S, D] -> [B, KV * n_rep, S, D]: each KV head serves n_rep consecutive query heads."""
    if n_rep == 1:
        return x
    b, kv, s, d = x.shape
    return x[:, :, None].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)


def causal_mask(positions: torch.Tensor, length: int) -> torch.Tensor:
    """[T, S] bool: the query at each of `positions` sees keys 0..its position of the S = `length` keys."""
    return torch.arange(length, device=positions.device)[None, :] <= positions[:, None]


def attention(p: dict, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], causal: torch.Tensor,
              config: LlamaConfig, past: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal grouped-query self-attention over x [B, T, D], after the cached keys/values `past` if any.

    Returns the output and this layer's keys/values [B, KV, S, head_dim] (past then new), for the cache.
    """
    b, t, d = x.shape
    nh, nkv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q = F.linear(x, p["q_proj"]["weight"]).view(b, t, nh, hd).transpose(1, 2)
    k = F.linear(x, p["k_proj"]["weight"]).view(b, t, nkv, hd).transpose(1, 2)
    v = F.linear(x, p["v_proj"]["weight"]).view(b, t, nkv, hd).transpose(1, 2)
    q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    if past is not None:
        k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
    scores = q @ repeat_kv(k, nh // nkv).transpose(-2, -1) * (1.0 / math.sqrt(hd))
    scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    y = torch.softmax(scores, dim=-1) @ repeat_kv(v, nh // nkv)
    y = y.transpose(1, 2).reshape(b, t, d)
    return F.linear(y, p["o_proj"]["weight"]), k, v


def mlp(p: dict, x: torch.Tensor) -> torch.Tensor:
    """SwiGLU: down(silu(gate(x)) * up(x))."""
    gate = F.silu(F.linear(x, p["gate_proj"]["weight"]))
    return F.linear(gate * F.linear(x, p["up_proj"]["weight"]), p["down_proj"]["weight"])


def layer(p: dict, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], causal: torch.Tensor,
          config: LlamaConfig, past: tuple[torch.Tensor, torch.Tensor] | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pre-norm decoder layer; also returns the layer's keys/values for the cache."""
    eps = config.rms_norm_eps
    h, k, v = attention(p["self_attn"], rms_norm(p["input_layernorm"], x, eps), rope, causal, config, past)
    x = x + h
    return x + mlp(p["mlp"], rms_norm(p["post_attention_layernorm"], x, eps)), k, v


def decoder(params: dict, input_ids: torch.Tensor, config: LlamaConfig, past_keys: torch.Tensor | None = None,
            past_values: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """input_ids [B, T] at positions past_len..past_len+T-1 -> final hidden states and every layer's keys/values."""
    past_len = 0 if past_keys is None else past_keys.shape[3]
    t = input_ids.shape[1]
    positions = torch.arange(past_len, past_len + t, device=input_ids.device)
    rope, causal = rotary(positions, config), causal_mask(positions, past_len + t)
    x = F.embedding(input_ids, params["embed_tokens"]["weight"])
    keys, values = [], []
    for i in range(len(params["layers"])):
        past = None if past_keys is None else (past_keys[i], past_values[i])
        x, k, v = layer(params["layers"][str(i)], x, rope, causal, config, past)
        keys.append(k)
        values.append(v)
    return rms_norm(params["norm"], x, config.rms_norm_eps), keys, values


def lm_head(params: dict, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from hidden states; the head is the token embedding when the config ties them."""
    weight = params["lm_head"]["weight"] if "lm_head" in params else params["embed_tokens"]["weight"]
    return F.linear(hidden, weight)


def hidden_states(params: dict, input_ids: torch.Tensor, *, config: LlamaConfig) -> torch.Tensor:
    """input_ids [B, T] -> final hidden states [B, T, D] (after the final norm), as Hugging Face's LlamaModel."""
    return decoder(params, input_ids, config)[0]


def apply(params: dict, input_ids: torch.Tensor, *, config: LlamaConfig) -> torch.Tensor:
    """input_ids [B, T] (int64) -> logits [B, T, vocab]."""
    return lm_head(params, hidden_states(params, input_ids, config=config))


def apply_with_cache(params: dict, input_ids: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor, *,
                     config: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step after a cache of past_len positions (0 allowed): -> (logits, keys, values), the caches extended
    to past_len + T. Caches are [num_layers, B, num_kv_heads, length, head_dim]."""
    hidden, keys, values = decoder(params, input_ids, config, past_keys, past_values)
    return lm_head(params, hidden), torch.stack(keys), torch.stack(values)


def model(config: LlamaConfig, seed: int = 0) -> FunctionalModel:
    """Llama with fresh parameters, bound to its config and its Flax reference."""
    return FunctionalModel(name="llama", apply=functools.partial(apply, config=config), params=init(config, seed),
                           config=config, flax_reference="crossgraph.models.llama_flax:from_params")


def model_with_cache(config: LlamaConfig, seed: int = 0) -> FunctionalModel:
    """The cache form (`apply_with_cache`) with fresh parameters and its cache-aware Flax reference."""
    return FunctionalModel(name="llama_with_cache", apply=functools.partial(apply_with_cache, config=config),
                           params=init(config, seed), config=config,
                           flax_reference="crossgraph.models.llama_flax:from_params_with_cache")


def empty_cache(config: LlamaConfig, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values holding no positions yet, for the first (prompt) step of the cache form."""
    shape = (config.num_hidden_layers, batch, config.num_key_value_heads, 0, config.head_dim)
    return torch.zeros(shape), torch.zeros(shape)


def example_inputs(config: LlamaConfig, batch: int = 2, seq: int = 8, seed: int = 0) -> tuple[torch.Tensor]:
    if seq > config.max_position_embeddings:
        raise ValueError(f"sequence length {seq} exceeds max_position_embeddings {config.max_position_embeddings}")
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, config.vocab_size, (batch, seq), generator=g),)


def example_inputs_with_cache(config: LlamaConfig, batch: int = 2, seq: int = 1, past: int = 7, seed: int = 0
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids [B, seq] and random past keys/values of `past` positions, for the cache form."""
    if past + seq > config.max_position_embeddings:
        raise ValueError(f"past {past} + sequence {seq} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings}")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    shape = (config.num_hidden_layers, batch, config.num_key_value_heads, past, config.head_dim)
    return ids, torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def dynamic_shapes(config: LlamaConfig) -> tuple[dict[int, torch.export.Dim]]:
    """Symbolic batch and sequence for `input_ids` (sequence up to max_position_embeddings)."""
    return ({0: torch.export.Dim("batch", min=1, max=1024),
             1: torch.export.Dim("seq", min=1, max=config.max_position_embeddings)},)


def dynamic_shapes_with_cache(config: LlamaConfig) -> tuple[dict[int, torch.export.Dim], ...]:
    """Symbolic batch, sequence and past length for the cache form's (input_ids, past_keys, past_values)."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=config.max_position_embeddings)
    past = torch.export.Dim("past", min=0, max=config.max_position_embeddings)
    return {0: batch, 1: seq}, {1: batch, 3: past}, {1: batch, 3: past}


def tiny() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory: `crossgraph check crossgraph.models.llama:tiny`."""
    config = LlamaConfig.tiny()
    return model(config), example_inputs(config)


def tiny_parallel() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory for sharding: the tiny_parallel config at batch 8 (splits over up to 8 devices)."""
    config = LlamaConfig.tiny_parallel()
    return model(config), example_inputs(config, batch=8)


def tiny_with_cache() -> tuple[FunctionalModel, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """SPEC factory: one decode step of the tiny Llama after 7 cached positions."""
    config = LlamaConfig.tiny()
    return model_with_cache(config), example_inputs_with_cache(config)


def small() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory: a 125M Llama (12 layers, 12 query / 4 KV heads) at batch 1, sequence 128."""
    config = LlamaConfig.small()
    return model(config), example_inputs(config, batch=1, seq=128)
