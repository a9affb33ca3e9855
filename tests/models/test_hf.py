"""Hugging Face import: HF output == our torch model == our Flax reference, on the HF model's weights."""

import pytest
import torch
import transformers

from crossgraph.compiler import check
from crossgraph.graphs import InputError, flatten_tree
from crossgraph.models import bert, gpt2, hf, llama
from helpers import torch_vs_flax


def hf_gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=96, n_positions=32)
    return transformers.GPT2LMHeadModel(config).eval()


def hf_bert() -> torch.nn.Module:
    config = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(config).eval()


def hf_llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config).eval()


def randomize_norms(model: torch.nn.Module) -> torch.nn.Module:
    """HF initializes norms to ones/zeros; random values prove they are mapped to the right places."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_gpt2() -> None:
    model = randomize_norms(hf_gpt2())
    ours = hf.from_hf(model)
    assert ours.config == gpt2.GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    (ids,) = gpt2.example_inputs(ours.config, batch=2, seq=12)
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
    torch.testing.assert_close(ours(ids), expected, atol=1e-5, rtol=1e-4)
    verdict = torch_vs_flax(ours, (ids,))
    assert verdict.ok, verdict.message


def test_bert() -> None:
    model = randomize_norms(hf_bert())
    ours = hf.from_hf(model)
    inputs = bert.example_inputs(ours.config, batch=3, seq=10)
    with torch.no_grad():
        expected = model(*inputs).last_hidden_state
    mask = inputs[1].bool()  # padded positions are undefined in both; compare the real tokens
    torch.testing.assert_close(ours(*inputs)[mask], expected[mask], atol=1e-5, rtol=1e-4)
    verdict = torch_vs_flax(ours, inputs)
    assert verdict.ok, verdict.message


def test_llama_with_grouped_query_attention() -> None:
    model = randomize_norms(hf_llama())
    ours = hf.from_hf(model)
    assert ours.config.num_key_value_heads == 2 and not ours.config.tie_word_embeddings
    (ids,) = llama.example_inputs(ours.config, batch=2, seq=12)
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
    torch.testing.assert_close(ours(ids), expected, atol=1e-5, rtol=1e-4)
    verdict = torch_vs_flax(ours, (ids,))
    assert verdict.ok, verdict.message


def test_raw_hf_model_checks_on_eager() -> None:
    model = hf_llama()
    (ids,) = llama.example_inputs(hf.from_hf(model).config, batch=2, seq=8)
    report = check(model, (ids,), ["eager", "flax"])
    assert report.targets["eager"].status == "pass"
    assert report.targets["flax"].status == "skipped"


def test_unmapped_missing_and_mismatched_keys_are_listed() -> None:
    model = hf_gpt2()
    want = flatten_tree(gpt2.init(hf.from_hf(model).config))
    state = dict(model.base_model.state_dict())
    state["h.0.attn.extra"] = torch.zeros(1)
    del state["ln_f.bias"]
    state["wpe.weight"] = torch.zeros(3, 3)
    with pytest.raises(InputError) as info:
        hf.map_state_dict(state, want, lambda k: k)
    text = str(info.value)
    assert "unmapped HF keys ['h.0.attn.extra']" in text and "missing ['ln_f.bias']" in text
    assert "wpe.weight -> wpe.weight: (3, 3) != (32, 32)" in text


def test_unsupported_models_and_variants_are_refused() -> None:
    with pytest.raises(InputError, match="supported: bert, gpt2, llama"):
        hf.from_hf(torch.nn.Linear(2, 2))
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, activation_function="relu")
    with pytest.raises(InputError, match="activation 'relu'"):
        hf.from_hf(transformers.GPT2Model(config))
