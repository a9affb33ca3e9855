"""GPT-2 as a functional model: token + position embeddings, pre-norm blocks, tied LM head.

Linear weights use torch's [out, in] layout (Hugging Face's GPT-2 stores Conv1D as [in, out]; `hf.py` maps it).
Attention is written out (scores, causal mask, softmax) so fusion passes have the real pattern to find.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

from crossgraph.graphs import FunctionalModel


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2 hyperparameters; the defaults are GPT-2 small (124M)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    @classmethod
    def tiny(cls) -> "GPT2Config":
        return cls(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4)

    @classmethod
    def tiny_parallel(cls) -> "GPT2Config":
        """Tiny, with sizes (8 heads, vocabulary 128) that split evenly over 2, 4 or 8 devices."""
        return cls(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=8)

    @classmethod
    def small(cls) -> "GPT2Config":
        return cls()


def init(config: GPT2Config, seed: int = 0) -> dict:
    """GPT-2's initialization: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layer)."""
    g = torch.Generator().manual_seed(seed)
    d = config.n_embd

    def normal(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def linear(n_out: int, n_in: int, std: float = 0.02) -> dict:
        return {"weight": normal(n_out, n_in, std=std), "bias": torch.zeros(n_out)}

    def layer_norm() -> dict:
        return {"weight": torch.ones(d), "bias": torch.zeros(d)}

    proj_std = 0.02 / math.sqrt(2 * config.n_layer)
    blocks = {
        str(i): {
            "ln_1": layer_norm(),
            "attn": {"c_attn": linear(3 * d, d), "c_proj": linear(d, d, proj_std)},
            "ln_2": layer_norm(),
            "mlp": {"c_fc": linear(4 * d, d), "c_proj": linear(d, 4 * d, proj_std)},
        }
        for i in range(config.n_layer)
    }
    return {"wte": {"weight": normal(config.vocab_size, d)}, "wpe": {"weight": normal(config.n_positions, d, std=0.01)},
            "h": blocks, "ln_f": layer_norm()}


def attention(p: dict, x: torch.Tensor, n_head: int) -> torch.Tensor:
    """Causal multi-head self-attention over x [B, T, D]."""
    b, t, d = x.shape
    q, k, v = F.linear(x, p["c_attn"]["weight"], p["c_attn"]["bias"]).split(d, dim=2)
    q, k, v = (z.view(b, t, n_head, d // n_head).transpose(1, 2) for z in (q, k, v))
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // n_head))
    causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
    scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    y = torch.softmax(scores, dim=-1) @ v
    y = y.transpose(1, 2).reshape(b, t, d)
    return F.linear(y, p["c_proj"]["weight"], p["c_proj"]["bias"])


def mlp(p: dict, x: torch.Tensor) -> torch.Tensor:
    h = F.gelu(F.linear(x, p["c_fc"]["weight"], p["c_fc"]["bias"]), approximate="tanh")
    return F.linear(h, p["c_proj"]["weight"], p["c_proj"]["bias"])


def block(p: dict, x: torch.Tensor, config: GPT2Config) -> torch.Tensor:
    eps = config.layer_norm_epsilon
    x = x + attention(p["attn"], F.layer_norm(x, x.shape[-1:], p["ln_1"]["weight"], p["ln_1"]["bias"], eps),
                      config.n_head)
    return x + mlp(p["mlp"], F.layer_norm(x, x.shape[-1:], p["ln_2"]["weight"], p["ln_2"]["bias"], eps))


def hidden_states(params: dict, input_ids: torch.Tensor, *, config: GPT2Config) -> torch.Tensor:
    """input_ids [B, T] -> final hidden states [B, T, D] (after ln_f), as Hugging Face's GPT2Model returns."""
    t = input_ids.shape[1]
    positions = torch.arange(t, device=input_ids.device)
    x = F.embedding(input_ids, params["wte"]["weight"]) + F.embedding(positions, params["wpe"]["weight"])
    for i in range(len(params["h"])):
        x = block(params["h"][str(i)], x, config)
    return F.layer_norm(x, x.shape[-1:], params["ln_f"]["weight"], params["ln_f"]["bias"], config.layer_norm_epsilon)


def apply(params: dict, input_ids: torch.Tensor, *, config: GPT2Config) -> torch.Tensor:
    """input_ids [B, T] (int64) -> logits [B, T, vocab]; the LM head is tied to the token embedding."""
    return hidden_states(params, input_ids, config=config) @ params["wte"]["weight"].T


def model(config: GPT2Config, seed: int = 0) -> FunctionalModel:
    """GPT-2 with fresh parameters, bound to its config and its Flax reference."""
    return FunctionalModel(name="gpt2", apply=functools.partial(apply, config=config), params=init(config, seed),
                           config=config, flax_reference="crossgraph.models.gpt2_flax:from_params")


def example_inputs(config: GPT2Config, batch: int = 2, seq: int = 8, seed: int = 0) -> tuple[torch.Tensor]:
    if seq > config.n_positions:
        raise ValueError(f"sequence length {seq} exceeds n_positions {config.n_positions}")
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, config.vocab_size, (batch, seq), generator=g),)


def dynamic_shapes(config: GPT2Config) -> tuple[dict[int, torch.export.Dim]]:
    """Symbolic batch and sequence for `input_ids` (sequence up to n_positions)."""
    return ({0: torch.export.Dim("batch", min=1, max=1024),
             1: torch.export.Dim("seq", min=1, max=config.n_positions)},)


def tiny() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory: `crossgraph check crossgraph.models.gpt2:tiny`."""
    config = GPT2Config.tiny()
    return model(config), example_inputs(config)


def tiny_parallel() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory for sharding: the tiny_parallel config at batch 8 (splits over up to 8 devices)."""
    config = GPT2Config.tiny_parallel()
    return model(config), example_inputs(config, batch=8)


def small() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory: GPT-2 small (124M) at batch 1, sequence 128."""
    config = GPT2Config.small()
    return model(config), example_inputs(config, batch=1, seq=128)
