"""Shared fixtures for pass tests: captured tiny GPT-2 (static and dynamic) and Llama graphs and a capture helper for
plain functions. Passes never change the graph they are given, so one capture serves a whole session."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from crossgraph.graphs import Graph, capture
from crossgraph.models import gpt2, llama


class Fn(torch.nn.Module):
    """A plain function (and optional weights, as parameters and buffers) as the module capture() takes."""

    def __init__(self, fn: Callable[..., Any], **weights: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        for name, tensor in weights.items():
            if tensor.is_floating_point():
                self.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))
            else:
                self.register_buffer(name, tensor)

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.fn(self, *inputs)


@pytest.fixture(scope="session")
def capture_fn() -> Callable[..., Graph]:
    """capture_fn(fn, *inputs, weights={...}, dynamic_shapes=None): capture `fn(module, *inputs)`."""
    def run(fn: Callable[..., Any], *inputs: torch.Tensor, weights: dict[str, torch.Tensor] | None = None,
            dynamic_shapes: Any = None) -> Graph:
        return capture(Fn(fn, **(weights or {})), inputs, dynamic_shapes)
    return run


@pytest.fixture(scope="session")
def gpt2_tiny() -> tuple[Graph, tuple[torch.Tensor, ...]]:
    model, inputs = gpt2.tiny()
    return capture(model, inputs), inputs


@pytest.fixture(scope="session")
def llama_tiny() -> tuple[Graph, tuple[torch.Tensor, ...]]:
    model, inputs = llama.tiny()
    return capture(model, inputs), inputs


@pytest.fixture(scope="session")
def gpt2_dynamic() -> Graph:
    model, inputs = gpt2.tiny()
    return capture(model, inputs, gpt2.dynamic_shapes(model.config))

