"""The README's benchmark: GPT-2 small, sequence 128, batch 1 and 8, every CPU target against its peers.

    python bench/run.py            # writes bench/results/<machine>-<date>.{json,md,png} and updates README.md
    python bench/run.py --quick    # the same on GPT-2 tiny with few runs (a smoke test; README left alone)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crossgraph.compiler import benchmark, cli

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import ROOT, update_readme  # noqa: E402  (the script beside this one)

SPEC = "models/gpt2.py:small"
TARGETS = "eager,inductor,onnx,jax"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="GPT-2 tiny, few runs, README untouched")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the spec is recorded as written, relative to the repository
    spec = "models/gpt2.py:tiny" if args.quick else SPEC
    out = (args.out / "quick" if args.quick else args.out).resolve()
    machine = benchmark.machine.describe(len(benchmark.schedulable_cpus()))
    results = out / f"{benchmark.results_stem(machine)}.json"
    code = cli.main(["bench", spec, "--targets", TARGETS, "--json", str(results)] + (["--quick"] if args.quick else []))
    if code != 0 or args.quick:
        return code
    update_readme(ROOT / "README.md", results, "python bench/run.py")
    print(f"updated {ROOT / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
