"""Import Hugging Face GPT-2, BERT and Llama models (built with `from_config` or loaded) onto crossgraph's
parameter trees, so the HF model, our torch model and our Flax reference run on the same weights.

Every HF key must land on exactly one tree path with the right shape; anything unmapped, missing or mismatched
is an InputError that lists all of it.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import torch

from crossgraph.graphs import FunctionalModel, InputError, flatten_tree, unflatten_tree
from crossgraph.models import bert, gpt2, llama

Rename = Callable[[str], "str | None"]

def from_hf(hf_model: torch.nn.Module) -> FunctionalModel:
    """The crossgraph functional model equal to `hf_model` (GPT2*, Bert*, Llama*), carrying its weights."""
    config = getattr(hf_model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in _IMPORTERS:
        raise InputError(f"cannot import a {type(hf_model).__name__} (model_type {kind!r}); supported: "
                         f"{', '.join(sorted(_IMPORTERS))}")
    return _IMPORTERS[kind](hf_model)

def map_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rename: Rename,
                   transform: Callable[[str, torch.Tensor], torch.Tensor] = lambda path, t: t) -> dict[str, Any]:
    """HF flat state -> our nested tree. `rename` gives the tree path for an HF key (None: a known non-weight to
    drop); `transform` fixes layouts. Raises listing every unmapped, missing and mis-shaped key."""
    mapped: dict[str, torch.Tensor] = {}
    unmapped, mismatched = [], []
    for key, tensor in state.items():
        path = rename(key)
        if path is None:
            continue
        if path not in expected:
            unmapped.append(key)
            continue
        value = transform(path, tensor.detach().clone())
        if value.shape != expected[path].shape:
            mismatched.append(f"{key} -> {path}: {tuple(value.shape)} != {tuple(expected[path].shape)}")
        mapped[path] = value
    missing = sorted(set(expected) - set(mapped))
    if unmapped or missing or mismatched:
        parts = [f"unmapped HF keys {unmapped}" if unmapped else "", f"missing {missing}" if missing else "",
                 f"mismatched {mismatched}" if mismatched else ""]
        raise InputError("Hugging Face weights do not fit: " + "; ".join(p for p in parts if p))
    return unflatten_tree(mapped)

def _require(condition: bool, what: str) -> None:
    if not condition:
        raise InputError(f"cannot import this Hugging Face model: {what}")

# ---- GPT-2 ---------------------------------------------------------------------------------------------------
_GPT2_CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")

def _gpt2(hf: torch.nn.Module) -> FunctionalModel:
    c = hf.config
    _require(c.activation_function in ("gelu_new", "gelu_pytorch_tanh"),
             f"GPT-2 activation {c.activation_function!r} (crossgraph's GPT-2 uses the tanh GELU)")
    _require(c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx and not c.reorder_and_upcast_attn,
             "non-default GPT-2 attention scaling")
    _require(getattr(c, "tie_word_embeddings", True), "an untied GPT-2 LM head (crossgraph's GPT-2 ties it)")
    config = gpt2.GPT2Config(vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.n_embd,
                             n_layer=c.n_layer, n_head=c.n_head, layer_norm_epsilon=c.layer_norm_epsilon)

    def rename(key: str) -> str | None:
        return None if re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", key) else key

    def transform(path: str, t: torch.Tensor) -> torch.Tensor:  # HF Conv1D stores [in, out]
        return t.T.contiguous() if _GPT2_CONV1D.match(path) else t

    params = map_state_dict(hf.base_model.state_dict(), flatten_tree(gpt2.init(config)), rename, transform)
    return _bound(gpt2, config, params)

# ---- BERT ----------------------------------------------------------------------------------------------------
def _bert(hf: torch.nn.Module) -> FunctionalModel:
    c = hf.config
    _require(c.hidden_act == "gelu", f"BERT activation {c.hidden_act!r} (crossgraph's BERT uses exact GELU)")
    _require(getattr(c, "position_embedding_type", "absolute") in (None, "absolute"),
             "relative position embeddings")
    config = bert.BertConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                             num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                             intermediate_size=c.intermediate_size,
                             max_position_embeddings=c.max_position_embeddings,
                             type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps)

    def rename(key: str) -> str | None:  # the pooler is not part of crossgraph's BERT; position_ids is a buffer
        return None if key.startswith("pooler.") or key == "embeddings.position_ids" else key

    params = map_state_dict(hf.base_model.state_dict(), flatten_tree(bert.init(config)), rename)
    return _bound(bert, config, params)

# ---- Llama ---------------------------------------------------------------------------------------------------
def _llama(hf: torch.nn.Module) -> FunctionalModel:
    c = hf.config
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    theta = rope.get("rope_theta", getattr(c, "rope_theta", None))
    _require(rope.get("rope_type", "default") == "default", f"rope scaling {rope.get('rope_type')!r}")
    _require(c.hidden_act == "silu", f"Llama activation {c.hidden_act!r}")
    _require(not c.attention_bias and not c.mlp_bias, "attention or MLP biases")
    _require(getattr(c, "head_dim", None) in (None, c.hidden_size // c.num_attention_heads),
             "a head_dim other than hidden_size / num_attention_heads")
    has_head = hasattr(hf, "lm_head")
    _require(has_head or c.tie_word_embeddings, "a bare LlamaModel with an untied LM head (import "
             "LlamaForCausalLM, which carries lm_head)")
    config = llama.LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                               intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
                               num_attention_heads=c.num_attention_heads,
                               num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps,
                               rope_theta=float(theta), max_position_embeddings=c.max_position_embeddings,
                               tie_word_embeddings=bool(c.tie_word_embeddings))
    state = dict(hf.base_model.state_dict())
    if has_head and not config.tie_word_embeddings:
        state["lm_head.weight"] = hf.lm_head.weight
    params = map_state_dict(state, flatten_tree(llama.init(config)), lambda key: key)
    return _bound(llama, config, params)

def _bound(module: Any, config: Any, params: dict[str, Any]) -> FunctionalModel:
    """Like `module.model(config)`, with imported parameters instead of fresh ones."""
    name = module.__name__.rpartition(".")[2]
    return FunctionalModel(name=name, apply=functools.partial(module.apply, config=config), params=params,
                           config=config, flax_reference=f"crossgraph.models.{name}_flax:from_params")

_IMPORTERS: dict[str, Callable[[torch.nn.Module], FunctionalModel]] = {"gpt2": _gpt2, "bert": _bert,
                                                                        "llama": _llama}


def gpt2_tiny() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """SPEC factory: a 2-layer Hugging Face GPT2LMHeadModel from a config (random weights), batch 2, sequence 8:
    `crossgraph check crossgraph.models.hf:gpt2_tiny`."""
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    return AutoModelForCausalLM.from_config(config).eval(), (torch.randint(0, 128, (2, 8)),)


def llama_tiny() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """SPEC factory: a 2-layer Hugging Face LlamaForCausalLM (grouped-query attention, 4 heads over 2) from a
    config, batch 2, sequence 8: `crossgraph check crossgraph.models.hf:llama_tiny`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(config).eval(), (torch.randint(0, 128, (2, 8)),)
