"""crossgraph.passes: verified Graph -> Graph rewrites, registered by name, run by a PassManager.

Importing this package registers every pass (`available()` lists them; `crossgraph passes` prints them).
"""

from crossgraph.passes.errors import PassError
from crossgraph.passes.registry import Pass, available, register, resolve
from crossgraph.passes.manager import PassManager, PassRecord, PassRun
from crossgraph.passes.rewrite import replace_pattern, trace_pattern
from crossgraph.passes import noop_removal, cse, constant_folding, dead_code  # noqa: F401  (registration)
from crossgraph.passes import (fold_lora, fuse_attention, fuse_qkv, fuse_bias_gelu, fuse_add_layer_norm,  # noqa: F401
                               fuse_rms_norm, fuse_rotary, quantize, cast_precision)
from crossgraph.passes import split_qkv  # noqa: F401  (registration: sharding)
from crossgraph.passes.calibration import Calibration, calibrate
from crossgraph.passes.pipelines import CLEANUP, PIPELINES, expand

__all__ = ["CLEANUP", "Calibration", "PIPELINES", "Pass", "PassError", "PassManager", "PassRecord", "PassRun",
           "available", "calibrate", "expand", "register", "replace_pattern", "resolve", "trace_pattern"]
