"""Errors meant for people: each says what went wrong, where in the user's code, and what to do."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An exception's first non-blank message line (its type name when it has none): for one-line reports."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


class CrossgraphError(Exception):
    """Base of every crossgraph error."""


class InputError(CrossgraphError):
    """Bad input from the user (spec, model, shapes, options): the CLI exits 2 on these."""


class CaptureError(InputError):
    """torch.export could not capture the model; the message names the construct, the line and the fix."""


class UnsupportedOpError(InputError):
    """A target has no translation for an op; names the op, the target and the source line."""

    def __init__(self, op: str, target: str, where: str = "") -> None:
        self.op, self.target, self.where = op, target, where
        at = f" (produced at {where})" if where else ""
        super().__init__(f"target '{target}' has no translation for {op}{at}")
