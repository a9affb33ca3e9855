"""crossgraph.graphs: capture models with torch.export into Graphs that carry names, provenance, annotations."""

from crossgraph.graphs import dialect  # noqa: F401  (registers the crossgraph:: ops, which saved graphs may hold)
from crossgraph.graphs.annotations import Annotation
from crossgraph.graphs.capture import capture
from crossgraph.graphs.errors import CaptureError, CrossgraphError, InputError, UnsupportedOpError
from crossgraph.graphs.functional import FunctionalModel, ParamTree, flatten_tree, map_tree, unflatten_tree
from crossgraph.graphs.graph import Graph
from crossgraph.graphs.provenance import Provenance
from crossgraph.graphs.sharding import Mesh, Sharding, UnevenShardError

__all__ = ["Annotation", "CaptureError", "CrossgraphError", "FunctionalModel", "Graph", "InputError", "Mesh",
           "ParamTree", "Provenance", "Sharding", "UnevenShardError", "UnsupportedOpError", "capture",
           "flatten_tree", "map_tree", "unflatten_tree"]
