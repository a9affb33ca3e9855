"""Test settings: hypothesis profiles (`ci` by default, `thorough` on request), a quiet torch, and 8 simulated
CPU devices for JAX (the sharding tests run meshes of up to 8 devices; set before anything imports jax)."""

import os
import warnings

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import pytest
import torch

from hypothesis import HealthCheck, Phase, settings

# No `explain` phase in CI: after a failure it re-runs examples under sys.settrace, which makes a test that
# compiles (Inductor, XLA) take tens of minutes to report.
settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True, print_blob=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip cleanly, with the reason, where there is no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
