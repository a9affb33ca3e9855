"""Pass bisection: when a target fails after its pass pipeline, find the first pass after which it fails.

The graph after the first k passes is lowered and judged on the failing inputs; a binary search over k finds
the smallest failing prefix, so n passes cost about log2(n) + 1 lowerings. With no passes at all failing too,
the lowering itself is at fault and no pass is named. A pipeline whose failures come and go along the prefix
is reported at one transition point, not all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from crossgraph.compiler.judge import judge
from crossgraph.compiler.pipeline import Pipelines
from crossgraph.compiler.subject import Subject
from crossgraph.compiler.targets import Target
from crossgraph.compiler.tolerance import TolerancePolicy


def bisect_passes(target: Target, subject: Subject, passes: Sequence[str], inputs: Sequence[torch.Tensor],
                  reference: Sequence[np.ndarray], policy: TolerancePolicy,
                  pipelines: Pipelines | None = None) -> dict[str, Any]:
    """The first of `passes` after which `target` fails on `inputs`, as a JSON-able dict with every prefix
    tried (`tried`: number of passes run -> "pass" | "fail" | "error: ...")."""
    passes = tuple(passes)
    pipelines = pipelines or Pipelines(subject.graph)
    tried: dict[int, str] = {}

    def fails(k: int) -> bool:
        try:
            graph = pipelines.run(passes[:k])[0]
            outputs = target.run(dataclasses.replace(subject, graph=graph), inputs)
        except Exception as exc:  # a prefix that cannot lower or run counts as failing, with its reason kept
            tried[k] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return True
        tried[k] = "pass" if judge(target.name, graph, reference, outputs, policy).ok else "fail"
        return tried[k] != "pass"

    result: dict[str, Any] = {"target": target.name, "passes": list(passes), "first_bad_pass": None,
                              "index": None, "tried": tried}
    if not fails(len(passes)):
        result["message"] = f"{target.name} passes after all {len(passes)} passes on these inputs"
        return result
    if fails(0):
        result["message"] = (f"{target.name} fails with no passes at all: the lowering, not a pass, "
                             "breaks parity")
        return result
    good, bad = 0, len(passes)
    while bad - good > 1:
        mid = (good + bad) // 2
        if fails(mid):
            bad = mid
        else:
            good = mid
    result.update(first_bad_pass=passes[bad - 1], index=bad - 1,
                  message=f"{target.name} passes after {bad - 1} pass(es) and fails once '{passes[bad - 1]}' "
                          f"has run (pass {bad} of {len(passes)})")
    return result
