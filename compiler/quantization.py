"""Quantize a model and prove it: a scheme applied to the captured graph, the quantized graph checked on every
target against itself run eagerly (its own torch reference), and an accuracy report against the float graph.

Order: the structural fusions and cleanup first (`PREPARE`: attention fused, Q/K/V as one matmul, weights
folded to plain constants), so the quantization pass sees each linear once with its stored weight; then the
scheme's pass; then dead code (the float weights it replaced). Targets then run their own pipelines on the
quantized graph as on any other (their structural passes find nothing left to do).

Verdict: each target is checked against the quantized graph run eagerly under the float tolerance policy; a
target whose outputs fail it is then judged by the "quantized-steps" rule (compiler.quant_verdict): an activation
next to a rounding tie of a quantized op may land one step apart on a target whose float ops differ from torch's
by an ulp, and that step is carried to every later layer. The rule counts those steps at each quantized node and
compares both sides' accuracy against the float graph; the target's result then says which rule judged it.

Accuracy: cosine similarity and errors of the quantized graph's outputs against the float graph's, over the
example inputs and drawn ones; for a language model (one int64 [B, T] input, logits [B, T, V] first), also the
perplexity of both on `data/perplexity.txt`, byte-level tokens (byte value mod V). The models here have random
weights, so the perplexities themselves mean little; their ratio says how much the quantization moved the
model's predictions on text rather than on random token ids.
"""

from __future__ import annotations

import dataclasses
import math
import time
from importlib import resources
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from crossgraph.compiler.parity import check
from crossgraph.compiler.quant_verdict import RULE as STEPS_RULE, StepVerdict, activation_nodes, quantized_steps
from crossgraph.compiler.report import ParityReport
from crossgraph.compiler.tolerance import TolerancePolicy
from crossgraph.graphs import FunctionalModel, Graph, InputError, capture
from crossgraph.graphs.annotations import get
from crossgraph.graphs.quant import QuantSpec
from crossgraph.passes import PassManager, calibrate
from crossgraph.passes.pipelines import CLEANUP, STRUCTURAL
from crossgraph.passes.quantize import quantize_static, quantize_weight_only, validate_weight_only

PREPARE = STRUCTURAL + CLEANUP
"""What runs before a quantization pass: fusions that change which matmuls exist, then weights folded."""


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A quantization scheme: the passes that apply it, and whether it needs calibration batches."""

    name: str
    description: str
    passes: tuple[str, ...] = ()
    calibrated: bool = False
    bits: int | None = None
    compute_dtype: str | None = None
    """For a casting scheme, the dtype it computes in: parity judges its float32 outputs by that dtype's
    tolerances (one float16 ulp is far beyond float32's)."""


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("int8", "int8 weights and embeddings per output channel, float activations",
           ("quantize_int8_weight_only",), bits=8),
    Scheme("int4", "int4 weights and embeddings in groups of 32 with zero points, float activations",
           ("quantize_int4_weight_only",), bits=4),
    Scheme("dynamic", "int8 weights per channel, activations quantized to uint8 on every call",
           ("quantize_dynamic_int8",)),
    Scheme("static", "int8 weights per channel, activations quantized with calibrated uint8 scales (QDQ)",
           calibrated=True),
    Scheme("fp16", "float16 weights and compute, norms and softmax kept in float32", ("cast_float16",),
           compute_dtype="float16"),
    Scheme("bf16", "bfloat16 weights and compute, norms and softmax kept in float32", ("cast_bfloat16",),
           compute_dtype="bfloat16"),
)}
"""Every scheme by the name `crossgraph quantize --scheme` takes."""


def scheme(name: str) -> Scheme:
    """The scheme called `name`; an unknown name is an InputError listing the known ones."""
    if name not in SCHEMES:
        raise InputError(f"unknown quantization scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def quantize(graph: Graph, name: str, *, calibration: Iterable[Sequence[torch.Tensor]] | None = None,
             observer: str = "minmax", group_size: int | None = None, symmetric: bool | None = None,
             progress: bool = True) -> Graph:
    """`graph` quantized with scheme `name`. Static int8 needs `calibration` batches (tuples of the graph's
    inputs); weight-only schemes take `group_size` (0: per channel) and `symmetric` over their defaults."""
    chosen = scheme(name)
    if chosen.calibrated and calibration is None:
        raise InputError("static int8 needs calibration batches")
    prepared = PassManager(PREPARE).run(graph).graph
    steps: list[Any] = list(chosen.passes)
    if chosen.calibrated:
        found = calibrate(prepared, calibration, observer=observer, progress=progress)
        steps = [_named("quantize_static_int8", lambda g: quantize_static(g, found))]
    elif group_size is not None or symmetric is not None:
        if chosen.bits is None:
            raise InputError(f"scheme {name!r} takes no group size or symmetry; int8 and int4 do")
        default = {8: (0, True), 4: (32, False)}[chosen.bits]
        group = default[0] if group_size is None else group_size
        sym = default[1] if symmetric is None else symmetric
        validate_weight_only(chosen.bits, group)
        steps = [_named(f"quantize_int{chosen.bits}_weight_only",
                        lambda g: quantize_weight_only(g, chosen.bits, group, sym))]
    return PassManager([*steps, "dead_code"]).run(prepared).graph


def _named(name: str, fn: Callable[[Graph], Graph]) -> Callable[[Graph], Graph]:
    """A plain pass function with a name the PassManager reports."""
    fn.__name__ = name
    return fn


def quantized_nodes(graph: Graph) -> int:
    """How many nodes carry a QuantSpec annotation."""
    return sum(get(n, QuantSpec) is not None for n in graph.fx.nodes)


# ---- accuracy ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Accuracy:
    """The quantized graph against the float graph: the worst cosine similarity of the flattened outputs over
    the examples, max and mean absolute error, and perplexity on the text set for language models."""

    examples: int
    cosine: float
    max_abs_err: float
    mean_abs_err: float
    perplexity_float: float | None = None
    perplexity_quantized: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields, NaN (non-finite quantized outputs) as null."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in dataclasses.asdict(self).items()}

    def text(self) -> str:
        line = (f"accuracy vs float over {self.examples} example(s): cosine {self.cosine:.6f}, "
                f"max abs err {self.max_abs_err:.3g}, mean abs err {self.mean_abs_err:.3g}")
        if self.perplexity_float is not None and self.perplexity_quantized is not None:
            change = self.perplexity_quantized / self.perplexity_float - 1
            line += (f"; perplexity {self.perplexity_float:.4g} -> {self.perplexity_quantized:.4g} "
                     f"({change:+.3%})")
        return line


def accuracy(float_graph: Graph, quantized: Graph, examples: Sequence[Sequence[torch.Tensor]]) -> Accuracy:
    """Compare `quantized` with `float_graph` on `examples`; NaN or Inf in the quantized outputs makes the
    cosine NaN (the report shows it; never a pass)."""
    cosines, max_errs, mean_errs = [], [], []
    for inputs in examples:
        ref = _flat_float(float_graph(*inputs))
        got = _flat_float(quantized(*inputs))
        cosines.append(float(torch.nn.functional.cosine_similarity(got, ref, dim=0)) if torch.isfinite(got).all()
                       else math.nan)
        err = (got - ref).abs()
        max_errs.append(float(err.max()))
        mean_errs.append(float(err.mean()))
    ppl = _perplexities(float_graph, quantized, examples[0]) if examples else None
    return Accuracy(len(examples), float(np.min(cosines)), float(np.max(max_errs)), float(np.mean(mean_errs)),
                    *(ppl or (None, None)))


def _flat_float(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Every floating output flattened into one float64 vector."""
    return torch.cat([o.detach().double().flatten() for o in outputs if o.is_floating_point()])


def text_batches(vocab: int, batch: int, seq: int, limit: int = 16) -> list[tuple[torch.Tensor]]:
    """The text set as byte-level token windows [batch, seq] (byte value mod `vocab`), at most `limit`."""
    data = resources.files("crossgraph.compiler").joinpath("data/perplexity.txt").read_bytes()
    ids = torch.tensor(list(data), dtype=torch.int64) % vocab
    windows = ids[: len(ids) // seq * seq].reshape(-1, seq)
    return [(windows[i:i + batch],) for i in range(0, len(windows) - batch + 1, batch)][:limit]


def _language_model(graph: Graph, example: Sequence[torch.Tensor]) -> int | None:
    """The vocabulary size when `graph` looks like a language model: one int64 [B, T] input and logits
    [B, T, V] as its first output; else None."""
    if len(example) != 1 or example[0].dtype != torch.int64 or example[0].dim() != 2:
        return None
    out = graph(*example)[0]
    return int(out.shape[-1]) if out.dim() == 3 and out.shape[:2] == example[0].shape else None


def _perplexities(float_graph: Graph, quantized: Graph,
                  example: Sequence[torch.Tensor]) -> tuple[float, float] | None:
    """(float perplexity, quantized perplexity) on the text set, for a language model whose example input
    shape (batch, length) is used for the windows; None for other models."""
    vocab = _language_model(float_graph, example)
    if vocab is None:
        return None
    batches = text_batches(vocab, *example[0].shape)
    if not batches:
        return None
    return _perplexity(float_graph, batches), _perplexity(quantized, batches)


def _perplexity(graph: Graph, batches: list[tuple[torch.Tensor]]) -> float:
    """exp of the mean next-token cross-entropy over every window."""
    losses = [torch.nn.functional.cross_entropy(graph(ids)[0][:, :-1].flatten(0, 1).double(), ids[:, 1:].flatten())
              for (ids,) in batches]
    return float(torch.stack(losses).mean().exp())


# ---- the whole check --------------------------------------------------------------------------------------------
class _GraphModel:
    """A Graph as the model a parity check compares with: the quantized graph run eagerly."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def __call__(self, *inputs: torch.Tensor, **kwargs: Any) -> list[torch.Tensor]:
        return self.graph(*self.graph.flatten(inputs, kwargs))


@dataclasses.dataclass
class QuantReport:
    """A quantized model's accuracy against the float graph and its parity on each target."""

    scheme: str
    graph: Graph
    quantized_nodes: int
    quantize_seconds: float
    accuracy: Accuracy
    parity: ParityReport
    steps: dict[str, StepVerdict] = dataclasses.field(default_factory=dict)
    """The "quantized-steps" verdict of each target that failed the float tolerance and was judged again by it."""

    @property
    def rules(self) -> dict[str, str]:
        """The rule that judged each target that ran: "quantized-steps" for those re-judged, else the float
        tolerance rule ("tolerance")."""
        return {name: STEPS_RULE if name in self.steps else "tolerance" for name, r in self.parity.targets.items()
                if r.status not in ("skipped", "error")}

    def steps_text(self) -> str:
        """One line per re-judged target: which rule judged it and its message ("" when none was)."""
        return "\n".join(f"{name}: judged by {v.rule}: {v.message}" for name, v in self.steps.items())

    @property
    def exit_code(self) -> int:
        """The parity check's exit code; non-finite quantized outputs are a failure too."""
        return self.parity.exit_code or (1 if math.isnan(self.accuracy.cosine) else 0)

    def to_json(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "quantized_nodes": self.quantized_nodes,
                "quantize_seconds": self.quantize_seconds, "accuracy": self.accuracy.to_json(),
                **self.parity.to_json(), "rules": self.rules,
                "steps": {name: v.to_json() for name, v in self.steps.items()}}


def check_quantized(model: torch.nn.Module | FunctionalModel, example_inputs: Sequence[torch.Tensor],
                    name: str, targets: Sequence[str] | str = ("onnx", "jax", "inductor"), *,
                    policy: TolerancePolicy | None = None, spec: str = "", examples: int = 1, seed: int = 0,
                    calibration: Iterable[Sequence[torch.Tensor]] | None = None, progress: bool = True,
                    kwargs: dict[str, torch.Tensor | None] | None = None, **options: Any) -> QuantReport:
    """Capture `model`, quantize it with scheme `name`, report its accuracy against the float graph on the
    example inputs (and `examples - 1` drawn ones), and check each target against the quantized graph run
    eagerly. Static int8 calibrates on `calibration`, or, when None, on the text set for a language model and
    on the example inputs otherwise. `kwargs` are the model's keyword inputs (the graph then takes every input
    positionally: see Graph.keyword_inputs)."""
    graph = capture(model, tuple(example_inputs), kwargs=kwargs)
    inputs = graph.flatten(tuple(example_inputs), kwargs)
    if scheme(name).calibrated and calibration is None:
        vocab = _language_model(graph, inputs)
        calibration = text_batches(vocab, *inputs[0].shape) if vocab else [inputs]
    start = time.perf_counter()
    quantized = quantize(graph, name, calibration=calibration, progress=progress, **options)
    seconds = time.perf_counter() - start
    policy = policy or TolerancePolicy()
    if scheme(name).compute_dtype:
        policy = policy.computed_in(scheme(name).compute_dtype)
    parity = check(_GraphModel(quantized), inputs, targets, graph=quantized, policy=policy,
                   spec=spec or graph.name, examples=examples, seed=seed, oracle=False)
    drawn = [inputs]
    if examples > 1:
        from crossgraph.compiler import strategies
        drawn += strategies.draw(strategies.inputs(graph, inputs), examples - 1, seed=seed)
    measured = accuracy(graph, quantized, drawn)
    steps = _rejudge(graph, quantized, parity, inputs, examples, seed, policy, measured)
    return QuantReport(name, quantized, quantized_nodes(quantized), seconds, measured, parity, steps)


REJUDGED = ("onnx", "jax", "inductor", "tensorrt")
"""Targets whose intermediate values can be read, so the "quantized-steps" rule can judge them."""


def _rejudge(float_graph: Graph, quantized: Graph, parity: ParityReport, inputs: tuple[torch.Tensor, ...],
             examples: int, seed: int, policy: TolerancePolicy, measured: Accuracy) -> dict[str, StepVerdict]:
    """Judge again, by the "quantized-steps" rule, every target whose outputs failed the float tolerance in a graph
    with activation-quantized ops, on the input sets parity used; its result takes the rule's status and says
    which rule judged it (TargetResult.rules, and the error text). A rule that cannot read the values leaves the
    failure as it was, with the reason added."""
    failed = [name for name, r in parity.targets.items() if r.status == "fail" and name in REJUDGED]
    if not failed or not activation_nodes(quantized):
        return {}
    from crossgraph.compiler.pipeline import Pipelines, passes_for
    cases = [inputs]
    if examples > 1:
        from crossgraph.compiler import strategies
        cases += strategies.draw(strategies.inputs(quantized, inputs), examples - 1, seed=seed)
    vocab = _language_model(float_graph, inputs)
    text = text_batches(vocab, *inputs[0].shape) if vocab else None
    pipelines = Pipelines(quantized)
    verdicts: dict[str, StepVerdict] = {}
    for name in failed:
        result = parity.targets[name]
        try:
            graph = pipelines.run(passes_for(name, None))[0]
            verdict = quantized_steps(float_graph, graph, name, cases, policy, text, measured.perplexity_quantized)
        except Exception as exc:  # the rule is a second opinion: failing to form one keeps the first
            result.error = f"{result.error}; {STEPS_RULE} could not judge: {type(exc).__name__}: {exc}"
            continue
        verdicts[name] = verdict
        tolerance_text = f"; under the float tolerance: {result.error}" if result.error else ""
        result.status = verdict.status
        result.error = verdict.message + tolerance_text
        if isinstance(getattr(result, "rules", None), dict):
            result.rules = {output: STEPS_RULE for output in (result.rules or dict.fromkeys(parity.output_names))}
        for case in result.cases:
            if case.status == "fail":
                case.status = verdict.status
                case.error = f"{verdict.message}; under the float tolerance: {case.error}"
                if isinstance(getattr(case, "rules", None), dict):
                    case.rules = {output: STEPS_RULE for output in (case.rules or dict.fromkeys(parity.output_names))}
    return verdicts


__all__ = ["Accuracy", "QuantReport", "SCHEMES", "accuracy", "check_quantized", "quantize", "text_batches"]
