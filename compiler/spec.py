"""SPEC loading: "path/to/file.py:factory" or "package.module:factory" -> (model, args, kwargs).

The factory takes no arguments and returns `(model, args)`, `(model, kwargs)` or `(model, args, kwargs)`: model
is an nn.Module (Hugging Face included) or a crossgraph FunctionalModel; args a tuple of tensors (a bare tensor
is a 1-tuple); kwargs a dict from input name to tensor or None ("not passed"), the model's keyword inputs. Every
way this can go wrong is an InputError in one line that says what to return instead.
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


def load(spec: str) -> tuple[Any, tuple[torch.Tensor, ...], dict[str, torch.Tensor | None]]:
    """Import the SPEC's module, call its factory, validate what it returns: (model, args, kwargs)."""
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


_FORMS = ("return (model, args), (model, kwargs) or (model, args, kwargs): args a tuple of tensors, kwargs a "
          "dict from input name to tensor or None")


def _validate(spec: str, result: Any) -> tuple[Any, tuple[torch.Tensor, ...], dict[str, torch.Tensor | None]]:
    def bad(what: str) -> InputError:
        return InputError(f"SPEC '{spec}': {what}; the factory must {_FORMS}")

    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise bad(f"the factory returned {_kind(result)}")
    model, *rest = result
    if not isinstance(model, (torch.nn.Module, FunctionalModel)):
        raise InputError(f"SPEC '{spec}': the model is a {type(model).__name__}; expected an nn.Module or a "
                         "crossgraph FunctionalModel")
    if len(rest) == 1 and isinstance(rest[0], dict):
        rest = [(), rest[0]]
    args, kwargs = (rest + [{}])[:2]
    args = (args,) if isinstance(args, torch.Tensor) else args
    if not isinstance(args, tuple):
        raise bad(f"args is {_kind(args)}, not a tuple")
    if not all(isinstance(t, torch.Tensor) for t in args):
        first = next(t for t in args if not isinstance(t, torch.Tensor))
        raise bad(f"args holds {_kind(first)}")
    if not isinstance(kwargs, dict):
        raise bad(f"kwargs is {_kind(kwargs)}, not a dict")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise bad(f"kwargs has the key {key!r}, not an input name")
        if value is not None and not isinstance(value, torch.Tensor):
            raise bad(f"kwargs['{key}'] is {_kind(value)}")
    return model, args, dict(kwargs)


def _kind(x: Any) -> str:
    """'a list', 'a dict', 'an int': what a value is, for a message."""
    name = type(x).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"
