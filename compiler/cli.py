"""The `crossgraph` command line (contract in DESIGN.md): exit 0 every target that ran is within tolerance
(with --strict: and none was skipped), 1 a parity failure or a target that crashed, 2 bad input (spec,
capture, unsupported op, option, output path; a fuzz run in which no program ran on any target), 130 interrupted
by SIGINT, 143 by SIGTERM (one line, no traceback, no partial file or directory left behind)."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from crossgraph import passes
from crossgraph.compiler import benchmark
from crossgraph.compiler import spec as spec_loader
from crossgraph.compiler.artifact import refuse_nonempty, write_atomically
from crossgraph.compiler.export import auto_dynamic_shapes, export
from crossgraph.compiler.lower import LOWERINGS
from crossgraph.compiler.parity import check
from crossgraph.compiler.pipeline import DEFAULTS as DEFAULT_PIPELINES
from crossgraph.compiler.pipeline import Pipelines, passes_for
from crossgraph.compiler.quantization import SCHEMES, check_quantized
from crossgraph.compiler.sharded_check import ENGINES as SHARDED_ENGINES
from crossgraph.compiler.sharded_check import check_sharded, plans_for
from crossgraph.compiler.targets import TARGETS
from crossgraph.compiler.tolerance import TolerancePolicy
from crossgraph.graphs import InputError, Mesh, bounds, capture
from crossgraph.graphs.capture import input_names
from crossgraph.passes.shard_plans import PLANS, parse_override, plan_rules
from crossgraph.passes.sharding import shard, weight_shardings

EXIT_OK, EXIT_PARITY, EXIT_INPUT = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM
_PASSES_HELP = ("comma-separated pass or pipeline names run before every target (default: each target's own "
                "pipeline; 'none' for no passes); `crossgraph passes` lists them")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors are bad input too: exit 2
        self.print_usage(sys.stderr)
        print(f"crossgraph: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crossgraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("check", help="check a model's numerical parity on each target")
    c.add_argument("spec", metavar="SPEC", help="path/to/file.py:factory or package.module:factory")
    c.add_argument("--targets", default=None,
                   help=f"comma-separated, from {','.join(TARGETS)} (default: all)")
    c.add_argument("--passes", default=None, help=_PASSES_HELP)
    _strict_option(c)
    c.add_argument("--json", dest="json_path", metavar="PATH", help="write the JSON report here")
    c.add_argument("--junit", dest="junit_path", metavar="PATH", help="write a JUnit XML report here")
    c.add_argument("--seed", type=int, default=0, help="seed torch before calling the factory (default 0)")
    _tolerance_options(c)
    c.add_argument("--examples", type=int, default=1, metavar="N",
                   help="run N input sets per target: the example inputs, then N-1 drawn from the graph's "
                        "shapes, dtypes and dynamic ranges (default 1)")
    c.add_argument("--dynamic", action="store_true",
                   help="capture with every input dimension dynamic, so drawn examples vary shapes too")
    _max_option(c)
    c.add_argument("--markdown", dest="markdown_path", metavar="PATH",
                   help="write a Markdown summary (for a pull-request comment) here")
    c.add_argument("--mesh", default=None, metavar="AXES",
                   help="run the sharded parity check on this device mesh instead (e.g. data=2,model=4): each "
                        f"plan on the engines {','.join(SHARDED_ENGINES)} (as --targets), forward and training "
                        "step, against the unsharded run")
    c.add_argument("--plan", default=None, help="with --mesh: comma-separated plans (default: every plan the mesh "
                                                f"allows, from {','.join(PLANS)})")
    c.add_argument("--bisect-passes", action="store_true",
                   help="for a target that fails after its passes, find the first pass after which it fails")
    e = sub.add_parser("export", help="write each target's model file and manifest.json")
    e.add_argument("spec", metavar="SPEC", help="path/to/file.py:factory or package.module:factory")
    e.add_argument("--to", required=True, help=f"comma-separated, from {','.join(LOWERINGS)}")
    e.add_argument("--out", required=True, metavar="DIR", help="directory for the files (created if missing)")
    e.add_argument("--passes", default=None, help=_PASSES_HELP)
    e.add_argument("--dynamic", action="store_true",
                   help="let every input dimension vary (torch.export keeps static what the model fixes)")
    _max_option(e)
    e.add_argument("--force", action="store_true",
                   help="replace a non-empty --out whole (without it, a non-empty --out is refused: exit 2)")
    v = sub.add_parser("verify", help="check an export: every file's size and sha256 against manifest.json, "
                                      "a load in its own runtime, and a run on the stored reference sample")
    v.add_argument("directory", metavar="DIR", help="a directory written by `crossgraph export`")
    b = sub.add_parser("bench", help="time a model on each target and on the tools a user would pick instead")
    b.add_argument("spec", metavar="SPEC", help="path/to/file.py:factory or package.module:factory")
    b.add_argument("--targets", default=None, help=f"comma-separated, from {','.join(benchmark.TARGETS)} "
                   f"(default: {','.join(benchmark.DEFAULT_TARGETS)})")
    b.add_argument("--peers", default=None, help=f"comma-separated, from {','.join(benchmark.PEERS)} "
                   "(default: all; 'none' for none)")
    b.add_argument("--json", dest="json_path", metavar="PATH",
                   help="write the results here, with the Markdown table (.md) and chart (.png) beside it")
    b.add_argument("--out", metavar="DIR", help="write DIR/<machine>-<date>.json (and .md, .png)")
    b.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8); dim 0 of "
                   "every input is the batch")
    b.add_argument("--threads", type=int, default=None,
                   help="CPU threads for every runtime (default: every CPU this process may use)")
    b.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    b.add_argument("--runs", type=int, default=10, help="at least this many timed calls (default 10)")
    b.add_argument("--min-seconds", type=float, default=1.0,
                   help="and at least this many seconds of them, up to 20x --runs (default 1.0)")
    b.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up, 3 timed calls, a small matmul peak")
    b.add_argument("--passes", default=None, help=_PASSES_HELP)
    b.add_argument("--seed", type=int, default=0, help="seed torch before calling the factory (default 0)")
    r = sub.add_parser("reduce", help="shrink a failing target's graph to a minimal repro script")
    r.add_argument("spec", metavar="SPEC", help="path/to/file.py:factory or package.module:factory")
    r.add_argument("--target", required=True, help=f"the failing target, one of {','.join(LOWERINGS)}")
    r.add_argument("-o", "--output", required=True, metavar="PATH", help="where to write the repro script")
    r.add_argument("--passes", default=None, help=_PASSES_HELP)
    r.add_argument("--seed", type=int, default=0, help="seed torch before calling the factory (default 0)")
    r.add_argument("--max-steps", type=int, default=20,
                   help="at most this many candidate subgraphs lowered and tried (default 20)")
    _tolerance_options(r)
    f = sub.add_parser("fuzz", help="run random valid core-ATen graphs through the CPU targets against eager")
    f.add_argument("--seconds", type=float, required=True, help="how long to fuzz")
    f.add_argument("--targets", default="onnx,jax", help="comma-separated lowered targets (default onnx,jax)")
    f.add_argument("--seed", type=int, default=0, help="seed for drawing programs (default 0)")
    f.add_argument("--max-examples", type=int, default=None, help="stop after this many programs")
    f.add_argument("--json", dest="json_path", metavar="PATH", help="write the findings here")
    q = sub.add_parser("quantize", help="quantize a model, check each target against the quantized graph, "
                                        "and report its accuracy against the float model")
    q.add_argument("spec", metavar="SPEC", help="path/to/file.py:factory or package.module:factory")
    q.add_argument("--scheme", required=True, choices=list(SCHEMES), metavar="SCHEME",
                   help="; ".join(f"{s.name}: {s.description}" for s in SCHEMES.values()))
    q.add_argument("--targets", default="onnx,jax,inductor",
                   help="comma-separated targets checked against the quantized graph (default onnx,jax,inductor)")
    q.add_argument("--group-size", type=int, default=None,
                   help="int8/int4: weights quantized in groups of this many along K (0: per output channel)")
    q.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None,
                   help="int8/int4: symmetric weights (no zero points), or not")
    q.add_argument("--observer", default="minmax", help="static: minmax or histogram (default minmax)")
    q.add_argument("--examples", type=int, default=1, metavar="N",
                   help="accuracy and parity over N input sets: the example inputs, then N-1 drawn (default 1)")
    q.add_argument("--seed", type=int, default=0, help="seed torch before calling the factory (default 0)")
    q.add_argument("--json", dest="json_path", metavar="PATH", help="write the report here")
    q.add_argument("--out", metavar="DIR", help="also write each target's quantized model file here")
    q.add_argument("--force", action="store_true", help="replace a non-empty --out whole")
    _strict_option(q)
    _tolerance_options(q)
    sh = sub.add_parser("shard", help="annotate a model with a sharding plan; print the plan, the collectives "
                        "it implies and the memory per device")
    sh.add_argument("spec", metavar="SPEC", help="path/to/file.py:factory or package.module:factory")
    sh.add_argument("--plan", required=True, help=f"one of {', '.join(PLANS)}")
    sh.add_argument("--mesh", required=True, help="named mesh axes and sizes, e.g. data=2,model=4")
    sh.add_argument("--override", action="append", default=[], metavar="PATTERN=SPEC",
                    help="split parameters matching PATTERN (fnmatch) as SPEC, one entry per dimension: a mesh "
                         "axis, None, or axes joined by + (e.g. 'h.*.mlp.c_fc.weight=model,None'); repeatable")
    sh.add_argument("--seed", type=int, default=0, help="seed torch before calling the factory (default 0)")
    sh.add_argument("--json", dest="json_path", metavar="PATH", help="write the plan and report here")
    ps = sub.add_parser("passes", help="list every pass with its one-line description, one per line")
    ps.add_argument("--pipelines", action="store_true",
                    help="list the named pipelines instead, with the targets that run them by default")
    return parser


def _max_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max", dest="max_sizes", action="append", default=[], metavar="NAME.DIM=N",
                        help="with --dynamic: input NAME's dimension DIM takes at most N (e.g. input_ids.1=64; "
                             "repeatable). Without it a dimension is bounded only by the model itself (a position "
                             "table's rows) and by torch.export's guards")


def _strict_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 unless every requested target ran and passed: a skipped target (e.g. "
                             "tensorrt without CUDA) fails the check too (default: a skipped target does not)")


def _tolerance_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance for every output")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance for every output")
    parser.add_argument("--tol", action="append", default=[], metavar="RULE",
                        help="[TARGET:][FAMILY:]DTYPE=ATOL,RTOL, e.g. onnx:float32=2e-5,2e-4 (repeatable; "
                             "over pyproject.toml's [tool.crossgraph.parity])")
    parser.add_argument("--config", metavar="PYPROJECT", default=None,
                        help="read [tool.crossgraph.parity] from this file (default: the nearest pyproject.toml)")


def _policy(args: argparse.Namespace) -> TolerancePolicy:
    """pyproject.toml's policy, then --tol rules, then --atol/--rtol for every output."""
    try:
        return TolerancePolicy.from_pyproject(args.config).with_rules(args.tol).with_override(args.atol, args.rtol)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt, so the same unwinding (temporary
    files and directories removed on the way out) serves both."""


def main(argv: Sequence[str] | None = None) -> int:
    received: list[int] = []
    previous = _handle_signals(received)
    try:
        return _main(argv, received)
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM anywhere: one line, no traceback
        return _interrupted(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _main(argv: Sequence[str] | None, received: list[int]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2) and --help (exit 0) end here
        return int(exc.code or 0)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch-internal noise
    try:
        _preflight(args)
        return _COMMANDS[args.command](args)
    except InputError as exc:
        print(f"crossgraph: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:  # a full disk, a file-size limit, a path made unreadable or unwritable during the run
        if received:
            return _interrupted(received[0])
        print(f"crossgraph: error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
              file=sys.stderr)
        return EXIT_INPUT
    except Exception as exc:  # a crossgraph bug: say so in one line, full traceback only on request
        if received:  # a library turned the interrupt into its own exception
            return _interrupted(received[0])
        if os.environ.get("CROSSGRAPH_DEBUG"):
            raise
        print(f"crossgraph: internal error: {type(exc).__name__}: {exc} (set CROSSGRAPH_DEBUG=1 for the "
              "traceback, and please report it)", file=sys.stderr)
        return EXIT_PARITY


def _handle_signals(received: list[int]) -> dict[int, Any]:
    """SIGINT -> KeyboardInterrupt, SIGTERM -> Terminated, raised in the main thread; after the first signal
    both are ignored, so the unwinding that removes temporary files is not cut short. Returns the handlers
    to restore (none off the main thread, where Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    return previous


def _interrupted(signum: int) -> int:
    name = signal.Signals(signum).name
    print(f"crossgraph: interrupted by {name}; no partial output was left behind", file=sys.stderr)
    return 128 + int(signum)


_FILE_OPTIONS = (("--json", "json_path"), ("--junit", "junit_path"), ("--markdown", "markdown_path"),
                 ("-o", "output"))


def _preflight(args: argparse.Namespace) -> None:
    """Options and output paths that cannot work fail here, in seconds, before any model is built: a
    non-finite --atol/--rtol; a report whose directory is missing, not a directory or not
    writable, or that names a directory; an --out that is a file, not creatable, or (export, quantize)
    non-empty without --force."""
    for option in ("atol", "rtol"):
        value = getattr(args, option, None)
        if value is not None and not math.isfinite(value):  # a negative one: the policy says so
            raise InputError(f"--{option} must be a finite number, got {value}")
    creates_parents = args.command == "bench"  # bench writes its results (and .md, .png) creating directories
    for option, attr in _FILE_OPTIONS:
        if getattr(args, attr, None):
            _check_file_output(option, Path(getattr(args, attr)), creates_parents)
    if getattr(args, "out", None):
        out = Path(os.path.abspath(args.out))
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {args.out} is a file; give a directory")
        inside = args.command == "bench"  # bench writes into --out; export builds a sibling and renames it
        _check_writable("--out", out if inside else out.parent, args.out, creates=True)
        if not inside:
            refuse_nonempty(out, getattr(args, "force", False))


def _check_file_output(option: str, path: Path, creates_parents: bool) -> None:
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory; give a file path")
    _check_writable(option, Path(os.path.abspath(path)).parent, str(path), creates=creates_parents)


def _check_writable(option: str, directory: Path, given: str, *, creates: bool) -> None:
    """InputError unless a file can be created in `directory` (or, with `creates`, in its nearest existing
    ancestor, which must be a directory): probed with a real temporary file, which permission bits alone
    do not tell (read-only file systems, root)."""
    probe = directory
    while creates and not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.exists():
        raise InputError(f"{option} {given}: directory {directory} does not exist")
    if not probe.is_dir():
        raise InputError(f"{option} {given}: {probe} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".crossgraph-probe-", dir=probe)
    except OSError as exc:
        raise InputError(f"{option} {given}: cannot write in {probe} ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(name)


def _checked_model(args: argparse.Namespace) -> tuple[TolerancePolicy, Any, tuple[torch.Tensor, ...],
                                                      dict[str, Any]]:
    """What check and quantize start from: the tolerance policy, then, with --examples valid and torch seeded,
    the factory's model, positional and keyword example inputs."""
    policy = _policy(args)
    if args.examples < 1:
        raise InputError(f"--examples must be at least 1, got {args.examples}")
    torch.manual_seed(args.seed)
    model, inputs, kwargs = spec_loader.load(args.spec)
    return policy, model, inputs, kwargs


def _dynamic(args: argparse.Namespace, model: Any, inputs: tuple[torch.Tensor, ...], kwargs: dict[str, Any]) -> Any:
    """`--dynamic`'s shapes for every tensor input, positional then keyword (as capture orders them), capped by
    `--max`."""
    caps = bounds.max_sizes(args.max_sizes)
    if not args.dynamic:
        if caps:
            raise InputError("--max bounds dynamic dimensions: add --dynamic")
        return None
    return auto_dynamic_shapes((*inputs, *(v for v in kwargs.values() if v is not None)),
                               input_names(model, len(inputs), kwargs), caps)


def _check(args: argparse.Namespace) -> int:
    if args.mesh is not None:
        return _check_sharded(args)
    if args.plan is not None:
        raise InputError("--plan needs --mesh")
    policy, model, inputs, kwargs = _checked_model(args)
    report = check(model, inputs, args.targets, policy=policy, spec=args.spec, passes=args.passes,
                   dynamic_shapes=_dynamic(args, model, inputs, kwargs), examples=args.examples, seed=args.seed,
                   bisect=args.bisect_passes, kwargs=kwargs)
    report.strict = args.strict
    print(f"crossgraph check {args.spec}: {len(report.output_names)} output(s), "
          f"captured in {report.capture_seconds:.2f}s" + (f", {args.examples} examples" if args.examples > 1
                                                             else ""))
    print(report.table())
    if args.json_path:
        report.write_json(args.json_path)
    if args.junit_path:
        report.write_junit(args.junit_path)
    if args.markdown_path:
        report.write_markdown(args.markdown_path)
    return report.exit_code


def _check_sharded(args: argparse.Namespace) -> int:
    mesh = Mesh.parse(args.mesh)
    engines = _names(args.targets, SHARDED_ENGINES)
    plans = _names(args.plan, plans_for(mesh))
    if args.passes is not None or args.dynamic or args.max_sizes or args.bisect_passes or args.examples != 1:
        raise InputError("--mesh runs each plan's own preparation passes on the example inputs: drop --passes, "
                         "--dynamic, --bisect-passes and --examples")
    policy, model, inputs, kwargs = _checked_model(args)
    report = check_sharded(model, inputs, mesh, plans=plans, engines=engines, policy=policy, spec=args.spec,
                           kwargs=kwargs)
    report.parity.strict = args.strict
    print(f"crossgraph check {args.spec} --mesh {mesh}: plans {', '.join(report.predicted)}, captured and "
          f"sharded in {report.parity.capture_seconds:.2f}s")
    print(report.table())
    if args.json_path:
        write_atomically(args.json_path, json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n")
    if args.junit_path:
        report.parity.write_junit(args.junit_path)
    if args.markdown_path:
        report.parity.write_markdown(args.markdown_path)
    return report.exit_code


def _export(args: argparse.Namespace) -> int:
    targets = [t.strip() for t in args.to.split(",") if t.strip()]
    unknown = [t for t in targets if t not in LOWERINGS]
    if unknown or not targets:  # before the model is built
        raise InputError(f"cannot export to {unknown or 'no targets'}; targets: {', '.join(LOWERINGS)}")
    model, inputs, kwargs = spec_loader.load(args.spec)
    graph = capture(model, inputs, _dynamic(args, model, inputs, kwargs), kwargs=kwargs)
    manifest = export(graph, targets, args.out, spec=args.spec, passes=args.passes,
                      sample=graph.flatten(inputs, kwargs), force=args.force)
    for target, entry in manifest["artifacts"].items():
        print(f"{target:9s} {Path(args.out) / entry['file']}  ({entry['bytes']:,} bytes, sha256 "
              f"{entry['sha256'][:12]})")
    if "reference_sample" in manifest:
        print(f"sample    {Path(args.out) / manifest['reference_sample']['file']}  (inputs and eager outputs "
              "for `crossgraph verify`)")
    print(f"manifest  {Path(args.out) / 'manifest.json'}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 when every file of the export passes, 1 naming the file and check that failed, 2 when DIR is
    not an export."""
    from crossgraph.compiler.verify import verify

    report = verify(args.directory)
    print(report.text())
    for failed in report.failed:
        print(f"crossgraph verify: {failed.file}: {failed.check} failed: {failed.detail}", file=sys.stderr)
    return report.exit_code


def _names(value: str | None, default: Sequence[str]) -> tuple[str, ...]:
    if value is None:
        return tuple(default)
    return () if value.strip() == "none" else tuple(n.strip() for n in value.split(",") if n.strip())


def _bench(args: argparse.Namespace) -> int:
    try:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
        runs = benchmark.QUICK_RUNS if args.quick else benchmark.Runs(
            warmup=args.warmup, runs=args.runs, min_seconds=args.min_seconds, max_runs=20 * max(args.runs, 1))
    except ValueError as exc:
        raise InputError(f"bad bench settings: {exc}") from exc
    threads = args.threads or len(benchmark.schedulable_cpus())
    benchmark.pin_threads(threads)  # before jax and ONNX Runtime size their thread pools
    settings = benchmark.Settings(targets=_names(args.targets, benchmark.DEFAULT_TARGETS),
                                  peers=_names(args.peers, benchmark.PEERS), batch_sizes=batch_sizes, runs=runs,
                                  threads=threads, quick=args.quick, passes=args.passes)
    settings.runtimes()  # bad names fail before the model is built
    torch.manual_seed(args.seed)
    model, inputs, kwargs = spec_loader.load(args.spec)
    results = benchmark.bench(model, inputs, settings, spec=args.spec, kwargs=kwargs)
    print(benchmark.markdown(results))
    paths = []
    if args.json_path:
        paths += benchmark.write(results, args.json_path)
    if args.out:
        paths += benchmark.write(results, Path(args.out) / f"{benchmark.results_stem(results['machine'])}.json")
    for path in paths:
        print(f"wrote {path}")
    failed = [f"{name} at batch {batch}" for batch, data in results["batches"].items()
              for name, e in data["runtimes"].items()
              if e["status"] == "error" or (e["status"] == "ok" and e["parity"]["status"] != "pass")]
    if failed:
        print(f"crossgraph bench: errors or parity failures: {', '.join(failed)}", file=sys.stderr)
        return EXIT_PARITY
    return EXIT_OK


def _quantize(args: argparse.Namespace) -> int:
    """Exit 0 when every target that ran (with --strict: every target) matches the quantized graph and its
    outputs are finite, 1 otherwise."""
    policy, model, inputs, kwargs = _checked_model(args)
    report = check_quantized(model, inputs, args.scheme, args.targets, policy=policy, spec=args.spec,
                             examples=args.examples, seed=args.seed, observer=args.observer,
                             group_size=args.group_size, symmetric=args.symmetric, kwargs=kwargs)
    report.parity.strict = args.strict
    print(f"crossgraph quantize {args.spec} --scheme {args.scheme}: {report.quantized_nodes} node(s) quantized "
          f"in {report.quantize_seconds:.2f}s")
    print(report.accuracy.text())
    print(report.parity.table())
    if report.steps:  # targets re-judged by the quantized-steps rule: which rule passed or failed them
        print(report.steps_text())
    if args.json_path:
        write_atomically(args.json_path, json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n")
    if args.out:
        manifest = export(report.graph, [t for t in report.parity.targets if t in LOWERINGS], args.out,
                          spec=args.spec, force=args.force)
        for target, entry in manifest["artifacts"].items():
            print(f"{target:9s} {Path(args.out) / entry['file']}  ({entry['bytes']:,} bytes)")
    return report.exit_code


def _shard(args: argparse.Namespace) -> int:
    """Print each weight's split, the implied collectives and the memory per device; exit 0 (2 for bad input,
    an uneven split included)."""
    mesh = Mesh.parse(args.mesh)
    overrides = dict(parse_override(o) for o in args.override)
    plan_rules(args.plan)  # an unknown plan fails before the model is built
    torch.manual_seed(args.seed)
    model, inputs, kwargs = spec_loader.load(args.spec)
    graph, report = shard(capture(model, inputs, kwargs=kwargs), args.plan, mesh, overrides)
    weights = weight_shardings(graph)
    tensors = {**graph.exported.state_dict, **graph.exported.constants}
    print(f"crossgraph shard {args.spec} --plan {args.plan} --mesh {mesh}")
    width = max(len(n) for n in weights)
    for name, sharding in weights.items():
        print(f"  {name:<{width}}  {str(list(tensors[name].shape)):<14} {sharding.layout()}")
    print(report.format())
    if args.json_path:
        data = {"spec": args.spec, "plan": args.plan, **report.to_json(),
                "weights": {n: {"shape": list(tensors[n].shape), "spec": s.layout(), "source": s.source}
                            for n, s in weights.items()}}
        write_atomically(args.json_path, json.dumps(data, indent=2) + "\n")
    return EXIT_OK


def _passes(args: argparse.Namespace) -> int:
    """The contract's listing, `name  description` per line, so scripts can read it; pipelines on request."""
    if not args.pipelines:
        width = max(len(name) for name, _ in passes.available())
        for name, description in passes.available():
            print(f"{name:{width}s}  {description}")
        return EXIT_OK
    for name, names in passes.PIPELINES.items():
        targets = [t for t, pipeline in DEFAULT_PIPELINES.items() if pipeline == name]
        used = f"  (default for {', '.join(targets)})" if targets else ""
        print(f"{name}: {' -> '.join(names)}{used}")
    return EXIT_OK


def _reduce(args: argparse.Namespace) -> int:
    """Exit 1 with a repro written when the target fails (the failure exit code), 0 when it passes."""
    from crossgraph.compiler import reduce as reducer

    policy = _policy(args)
    torch.manual_seed(args.seed)
    if args.target not in LOWERINGS:
        raise InputError(f"unknown target '{args.target}' for reduce; known: {', '.join(LOWERINGS)}")
    model, inputs, kwargs = spec_loader.load(args.spec)
    captured = capture(model, inputs, kwargs=kwargs)
    inputs = captured.flatten(inputs, kwargs)
    graph = Pipelines(captured).run(passes_for(args.target, args.passes))[0]
    try:
        result = reducer.reduce(graph, args.target, inputs, policy, max_steps=args.max_steps)
    except reducer.NothingToReduce as exc:
        print(f"crossgraph reduce: nothing to reduce: {exc}")
        return EXIT_OK
    path = result.write_script(args.output)
    print(result.message)
    print(f"wrote {path} ({result.remaining_nodes} of {result.original_nodes} ops); run it with: python {path}")
    return EXIT_PARITY


def _fuzz(args: argparse.Namespace) -> int:
    from crossgraph.compiler import fuzz

    if args.seconds <= 0:
        raise InputError(f"--seconds must be positive, got {args.seconds}")
    if args.max_examples is not None and args.max_examples < 1:
        raise InputError(f"--max-examples must be at least 1, got {args.max_examples}")
    report = fuzz.fuzz(args.seconds, targets=_names(args.targets, ()), seed=args.seed,
                       max_examples=args.max_examples)
    if report.exit_code == EXIT_INPUT:  # nothing ran: say so in one line, with the targets that can run here
        raise InputError(report.nothing_ran_message(fuzz.runnable_targets()))
    print(report.summary())
    if args.json_path:
        write_atomically(args.json_path, json.dumps(report.to_json(), indent=2) + "\n")
    return report.exit_code


_COMMANDS = {"check": _check, "export": _export, "verify": _verify, "bench": _bench, "reduce": _reduce, "fuzz": _fuzz,
             "quantize": _quantize, "shard": _shard, "passes": _passes}


if __name__ == "__main__":
    sys.exit(main())
