"""SPEC loading: "path/to/file.py:factory" or "package.module:factory" -> (model, example_inputs).

The factory takes no arguments and returns (model, example_inputs): an nn.Module (Hugging Face included) or a
crossgraph FunctionalModel, and a tuple of tensors. Every way this can go wrong is an InputError in one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from crossgraph.graphs import FunctionalModel, InputError


def load(spec: str) -> tuple[Any, tuple[torch.Tensor, ...]]:
    """Import the SPEC's module, call its factory, validate what it returns."""
    location, sep, factory_name = spec.rpartition(":")
    if not sep or not location or not factory_name:
        raise InputError(f"SPEC '{spec}' must be 'path/to/file.py:factory' or 'package.module:factory'")
    module = _import(location, spec)
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise InputError(f"SPEC '{spec}': {location} has no '{factory_name}'")
    if not callable(factory):
        raise InputError(f"SPEC '{spec}': '{factory_name}' is a {type(factory).__name__}, not a factory function")
    try:
        result = factory()
    except Exception as exc:
        raise InputError(f"SPEC '{spec}': the factory raised {type(exc).__name__}: {exc}{_where(exc)}") from exc
    return _validate(spec, result)


def _import(location: str, spec: str) -> ModuleType:
    if location.endswith(".py") or os.sep in location or "/" in location:
        path = Path(location).resolve()
        if not path.is_file():
            raise InputError(f"SPEC '{spec}': no such file {location}")
        known = _package_module_for(path)
        if known:
            return _import_module(known, spec)
        name = f"crossgraph_spec_{abs(hash(str(path)))}"
        file_spec = importlib.util.spec_from_file_location(name, path)
        if file_spec is None or file_spec.loader is None:
            raise InputError(f"SPEC '{spec}': {location} is not a Python file")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = module
        try:
            file_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise InputError(f"SPEC '{spec}': importing {location} raised {type(exc).__name__}: {exc}"
                             f"{_where(exc)}") from exc
        return module
    return _import_module(location, spec)


def _import_module(name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise InputError(f"SPEC '{spec}': no module named '{name}'") from exc
        raise InputError(f"SPEC '{spec}': importing {name} failed: {exc}") from exc
    except Exception as exc:
        raise InputError(f"SPEC '{spec}': importing {name} raised {type(exc).__name__}: {exc}{_where(exc)}") from exc


def _package_module_for(path: Path) -> str | None:
    """A file inside an installed crossgraph package imports under its package name ("models/gpt2.py" ->
    "crossgraph.models.gpt2"), so its classes are the same objects the rest of crossgraph sees."""
    for package in ("crossgraph.models", "crossgraph.graphs", "crossgraph.passes", "crossgraph.compiler"):
        root = Path(list(importlib.import_module(package).__path__)[0]).resolve()
        if path.is_relative_to(root) and path.suffix == ".py":
            parts = path.relative_to(root).with_suffix("").parts
            return ".".join((package, *parts)).removesuffix(".__init__")
    return None


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _validate(spec: str, result: Any) -> tuple[Any, tuple[torch.Tensor, ...]]:
    if not isinstance(result, tuple) or len(result) != 2:
        raise InputError(f"SPEC '{spec}': the factory must return (model, example_inputs), got "
                         f"{type(result).__name__}")
    model, inputs = result
    if not isinstance(model, (torch.nn.Module, FunctionalModel)):
        raise InputError(f"SPEC '{spec}': the model is a {type(model).__name__}; expected an nn.Module or a "
                         "crossgraph FunctionalModel")
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    if not isinstance(inputs, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise InputError(f"SPEC '{spec}': example_inputs must be a tuple of tensors")
    return model, tuple(inputs)
