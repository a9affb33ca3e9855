"""Every model in the zoo passes `crossgraph check --targets eager,flax --strict`: tiny presets, then realistic ones."""

import pytest

from crossgraph.compiler.cli import main

TINY = ["mlp:tiny", "gpt2:tiny", "llama:tiny", "llama:tiny_with_cache", "bert:tiny", "resnet:tiny", "vit:tiny"]
REALISTIC = ["gpt2:small", "llama:small", "bert:base", "resnet:resnet18", "vit:b16"]


@pytest.mark.parametrize("spec", TINY)
def test_tiny_presets_pass(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", f"crossgraph.models.{spec}", "--targets", "eager,flax", "--strict"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count(" pass ") == 3 and "verdict: pass (2 passed)" in out  # two rows and the verdict


@pytest.mark.slow
@pytest.mark.parametrize("spec", REALISTIC)
def test_realistic_presets_pass(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", f"crossgraph.models.{spec}", "--targets", "eager,flax", "--strict"])
    out = capsys.readouterr().out
    assert code == 0, out
