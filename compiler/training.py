"""Training through Inductor: one pure step (forward, backward, optimizer update) compiled whole, and its references.

A step is `(params, opt_state, *batch) -> (new_params, new_opt_state, loss, grads)` over the model's parameter
tree: `torch.func.grad_and_value` differentiates `loss(apply(params, *inputs), *batch)`, a pure optimizer maps
the old tree to a new one, and `torch.compile(backend="inductor", fullgraph=True)` captures all of it as one
graph. Nothing is mutated: the caller's tensors are the same before and after a step.

Batches: a loss names how many leading batch items feed the model (`n_inputs`); the loss function sees the
model's outputs and the whole batch ("mse": batch (x, y); "next_token": batch (input_ids,), whose shifted ids are
the targets).

Optimizers are written here as pure tree functions rather than taken from `torch.optim._functional`, whose
functions update their argument lists in place (an input mutation inside the compiled graph) and are private
API. The arithmetic follows `torch.optim.AdamW` / `torch.optim.SGD` (single-tensor path) so that those classes
serve as eager references. AdamW's step counter is a 0-d tensor in the optimizer state, not a Python int, so that
successive steps reuse one compiled graph instead of recompiling per step value.

Compile cost: a step compiles on its first call and again only when shapes, dtypes or the tree's structure
change; each `TrainStep` has its own compiled graphs (Inductor's on-disk caches still make a rebuild cheaper).
Keep one `TrainStep` per (model, shapes) and call it with any parameters and batches of those shapes.

`jax_grads` differentiates the Flax reference on the same parameters. It differentiates a function of the jax
tree in *our* layout that builds the Flax module inside (through the model's own `from_params` mapping), so the
gradient tree is already in our layout, and the layout mapping (transposed kernels, renamed leaves) is itself
under test: no inverse mapping per model has to be written, or could hide a mistake.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree

from crossgraph.compiler.flax_reference import load_factory
from crossgraph.graphs import FunctionalModel, InputError, flatten_tree


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss with the same meaning in both frameworks: `fn(outputs, *batch) -> scalar` (mean over the batch)."""

    name: str
    n_inputs: int
    torch_fn: Callable[..., torch.Tensor]
    jax_fn: Callable[..., Any]


def _mse_torch(outputs: torch.Tensor, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, targets)


def _mse_jax(outputs: Any, x: Any, targets: Any) -> Any:
    import jax.numpy as jnp

    return jnp.mean(jnp.square(outputs - targets))


def _next_token_torch(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))


def _next_token_jax(logits: Any, input_ids: Any) -> Any:
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1))


LOSSES: dict[str, Loss] = {
    # Mean squared error of outputs against targets; batch (x, targets).
    "mse": Loss("mse", 1, _mse_torch, _mse_jax),
    # Language-model cross entropy: logits [B, T, V] at position t predict input_ids[:, t + 1]; batch (input_ids,).
    "next_token": Loss("next_token", 1, _next_token_torch, _next_token_jax),
}


def get_loss(name: str) -> Loss:
    """The loss called `name`; an unknown name is an InputError that lists the known ones."""
    if name not in LOSSES:
        raise InputError(f"unknown loss '{name}'; known: {', '.join(LOSSES)}")
    return LOSSES[name]


def loss_fn(model: FunctionalModel, loss: str) -> Callable[..., torch.Tensor]:
    """`(params, *batch) -> scalar loss` of the model's eager torch `apply`: what every step differentiates."""
    spec = get_loss(loss)

    def objective(params: Any, *batch: torch.Tensor) -> torch.Tensor:
        return spec.torch_fn(model.apply(params, *batch[:spec.n_inputs]), *batch)

    return objective


# ---- optimizers: pure functions of trees ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SGD:
    """Plain gradient descent, p - lr * g (torch.optim.SGD without momentum or weight decay); no state."""

    lr: float

    def init(self, params: Any) -> dict[str, Any]:
        """No state: plain SGD remembers nothing between steps."""
        return {}

    def update(self, params: Any, grads: Any, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(new params, the same empty state)."""
        return pytree.tree_map(lambda p, g: p - self.lr * g, params, grads), state


@dataclasses.dataclass(frozen=True)
class AdamW:
    """Adam with decoupled weight decay, computed as torch.optim.AdamW computes it (amsgrad off)."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2

    def init(self, params: Any) -> dict[str, Any]:
        """Step 0 and zero first and second moments shaped like `params`."""
        zeros = functools.partial(pytree.tree_map, torch.zeros_like)
        # float64 step: the bias correction 1 - beta2**t (beta2 = 0.999) keeps only ~3 of float32's 7 digits, and
        # torch.optim.AdamW computes them in Python floats.
        return {"step": torch.zeros((), dtype=torch.float64), "m": zeros(params), "v": zeros(params)}

    def update(self, params: Any, grads: Any, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(new params, new state): one AdamW step, every tensor new."""
        b1, b2 = self.betas
        step = state["step"] + 1
        m = pytree.tree_map(lambda m, g: m + (g - m) * (1 - b1), state["m"], grads)
        v = pytree.tree_map(lambda v, g: v * b2 + g * g * (1 - b2), state["v"], grads)
        step_size = self.lr / (1 - b1 ** step)
        bias_correction2_sqrt = torch.sqrt(1 - b2 ** step)

        def new(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            denom = torch.sqrt(v) / bias_correction2_sqrt + self.eps
            return p * (1 - self.lr * self.weight_decay) - step_size * m / denom

        return pytree.tree_map(new, params, m, v), {"step": step, "m": m, "v": v}


OPTIMIZERS: dict[str, Callable[..., SGD | AdamW]] = {"sgd": SGD, "adamw": AdamW}


# ---- the step ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A pure step `(params, opt_state, *batch) -> (new_params, new_opt_state, loss, grads)` and its optimizer."""

    loss: Loss
    optimizer: SGD | AdamW
    fn: Callable[..., tuple[Any, Any, torch.Tensor, Any]]
    compiled: bool

    def __call__(self, params: Any, opt_state: Any, *batch: torch.Tensor) -> tuple[Any, Any, torch.Tensor, Any]:
        return self.fn(params, opt_state, *batch)

    def init(self, params: Any) -> Any:
        """The optimizer state for `params` (zeros for AdamW's moments, step 0)."""
        return self.optimizer.init(params)

    def run(self, params: Any, batches: Sequence[Sequence[torch.Tensor]], steps: int) -> tuple[Any, list[float]]:
        """`steps` steps from fresh optimizer state cycling through `batches`: (final params, loss before each step)."""
        if not batches:
            raise InputError("training needs at least one batch")
        state, history = self.init(params), []
        for i in range(steps):
            params, state, value, _ = self(params, state, *batches[i % len(batches)])
            history.append(float(value))
        return params, history


def make_train_step(model: FunctionalModel, loss: str, *, optimizer: str = "adamw", lr: float = 1e-3,
                    compile: bool = True, **optimizer_options: Any) -> TrainStep:
    """A training step for `model` under `loss`, compiled whole by Inductor (fullgraph) unless compile=False.

    `optimizer_options` go to the optimizer (AdamW: betas, eps, weight_decay). Every parameter leaf must be a
    floating-point tensor: it is differentiated and updated.
    """
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer '{optimizer}'; known: {', '.join(OPTIMIZERS)}")
    not_float = [path for path, t in flatten_tree(model.params).items() if not t.is_floating_point()]
    if not_float:
        raise InputError(f"training differentiates every parameter, but {', '.join(not_float)} "
                         "are not floating point")
    spec = get_loss(loss)
    opt = OPTIMIZERS[optimizer](lr=lr, **optimizer_options)
    grad_and_value = torch.func.grad_and_value(loss_fn(model, loss))

    def step(params: Any, opt_state: Any, *batch: torch.Tensor) -> tuple[Any, Any, torch.Tensor, Any]:
        grads, value = grad_and_value(params, *batch)
        new_params, new_state = opt.update(params, grads, opt_state)
        return new_params, new_state, value, grads

    if not compile:
        return TrainStep(spec, opt, step, compiled=False)
    # A code object of its own per step: Dynamo keeps compiled graphs (and counts recompiles against
    # torch._dynamo.config.recompile_limit) per code object, so steps for different models would otherwise share
    # one cache, and a process building steps for a ninth model would fail with FailOnRecompileLimitHit.
    own = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__, None, step.__closure__)
    return TrainStep(spec, opt, torch.compile(own, backend="inductor", fullgraph=True), compiled=True)


def train(model: FunctionalModel, loss: str, batches: Sequence[Sequence[torch.Tensor]], steps: int, *,
          optimizer: str = "adamw", lr: float = 1e-3, compile: bool = True, **optimizer_options: Any) -> list[float]:
    """Train from `model.params` for `steps` steps cycling through `batches`; the loss history, one value a step."""
    step = make_train_step(model, loss, optimizer=optimizer, lr=lr, compile=compile, **optimizer_options)
    return step.run(model.params, batches, steps)[1]


# ---- the Flax reference's gradients --------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _jax_value_and_grad(reference: str, config: Any, loss: str) -> Callable[..., Any]:
    """Jitted (params in our layout, *batch) -> (loss, grads in our layout); cached, so the config must hash."""
    import jax

    factory = load_factory(reference)
    spec = get_loss(loss)

    def objective(params: Any, *batch: Any) -> Any:
        return spec.jax_fn(factory(config, params)(*batch[:spec.n_inputs]), *batch)

    return jax.jit(jax.value_and_grad(objective))


def jax_grads(model: FunctionalModel, loss: str, *batch: torch.Tensor) -> tuple[float, dict[str, Any]]:
    """Loss and `jax.value_and_grad` of the Flax reference at model.params: (float, jax tree in our layout)."""
    from crossgraph.models.convert import tensor_to_jax, to_jax

    if not model.flax_reference:
        raise InputError(f"model '{model.name}' has no Flax reference")
    fn = _jax_value_and_grad(model.flax_reference, model.config, loss)
    value, grads = fn(to_jax(model.params), *(tensor_to_jax(t) for t in batch))
    return float(value), grads


__all__ = ["AdamW", "LOSSES", "Loss", "OPTIMIZERS", "SGD", "TrainStep", "get_loss", "jax_grads", "loss_fn",
           "make_train_step", "train"]
