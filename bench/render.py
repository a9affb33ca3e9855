"""Re-render a results file's Markdown table and PNG chart, and put them in the README's performance section.

    python bench/render.py bench/results/<machine>-<date>.json [--readme README.md]

`write_results` is how the other bench scripts (quantization.py, quant_accuracy.py) store their results.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from crossgraph.compiler import benchmark

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_results(out: Path, prefix: str, results: dict[str, Any], text: str) -> Path:
    """`results` as out/<prefix>-<machine>-<date>.json and `text` (its Markdown) beside it as .md; the stem."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{prefix}-{benchmark.results_stem(results['machine'])}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text + "\n")
    return stem


def update_readme(readme: Path, results_path: Path, command: str) -> None:
    """Replace the README's text between the bench markers with the table, the chart and the command."""
    results = benchmark.load(results_path)
    chart = results_path.with_suffix(".png").resolve().relative_to(readme.resolve().parent)
    table = benchmark.markdown(results, chart=chart.as_posix())
    section = (f"{BEGIN}\nReproduce with `{command}` (results: "
               f"[{results_path.name}]({results_path.resolve().relative_to(readme.resolve().parent).as_posix()})).\n\n"
               f"{table}\n{END}")
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} section")
    readme.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a results .json written by crossgraph bench")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--command", default="python bench/run.py", help="the command shown as the reproducer")
    args = parser.parse_args(argv)
    results = benchmark.load(args.results)
    for path in benchmark.write(results, args.results):
        print(f"wrote {path}")
    update_readme(args.readme, args.results, args.command)
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
