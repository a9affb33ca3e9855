"""The pass registry: listing, resolving by name, and the errors people see for unknown names."""

import pytest

from crossgraph.graphs import Graph, InputError
from crossgraph.passes import CLEANUP, available, register, resolve
from crossgraph.passes.registry import as_pass


def test_available_lists_cleanup_passes_in_registration_order_with_descriptions() -> None:
    listed = available()
    names = [name for name, _ in listed]
    assert names[:len(CLEANUP)] == list(CLEANUP)
    assert all(description and "\n" not in description for _, description in listed)


def test_resolve_takes_a_list_or_a_comma_separated_string() -> None:
    assert [p.name for p in resolve(["cse", "dead_code"])] == ["cse", "dead_code"]
    assert [p.name for p in resolve(" dead_code, cse ,")] == ["dead_code", "cse"]
    assert resolve("") == []


def test_unknown_pass_names_are_input_errors_listing_known_passes() -> None:
    with pytest.raises(InputError) as info:
        resolve("cse,fuse_everything,dce")
    text = str(info.value)
    assert "'fuse_everything'" in text and "'dce'" in text and "'cse'," not in text
    assert all(name in text.split("known passes:")[1] for name in CLEANUP)


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("cse", "another cse")(lambda graph: graph)
    assert [name for name, _ in available()].count("cse") == 1


def test_plain_functions_become_passes_named_after_them() -> None:
    def halve_nothing(graph: Graph) -> Graph:
        """Returns the graph as it is.

        More text that is not the description."""
        return graph

    p = as_pass(halve_nothing)
    assert (p.name, p.description) == ("halve_nothing", "Returns the graph as it is.")
    assert as_pass(p) is p
