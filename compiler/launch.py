"""Run one picklable function in W local CPU processes joined in a gloo process group, torchrun-style.

`launch(fn, world_size, *args)` pickles (fn, args) to a file, starts `python -m crossgraph.compiler.launch` W times
with torchrun's environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK), and returns every rank's
result in rank order. Fresh interpreters, not fork: a forked torch (its thread pools, its locks) is unsafe, and
the children import only torch and what `fn` needs. A rank that raises or dies ends the launch at once (the other
ranks would wait on it in their next collective) with a `RankError` naming it; `timeout` bounds a hung one.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from crossgraph.graphs import CrossgraphError, InputError

_POLL_S = 0.02
_GRACE_S = 2.0  # how long the other ranks of a failed launch get to record their own errors
_TAIL = 2000  # characters of a dead rank's output quoted in the error


class RankError(CrossgraphError):
    """A launched rank raised, died or timed out; `rank` is None when the whole launch timed out."""

    def __init__(self, message: str, rank: int | None) -> None:
        super().__init__(message)
        self.rank = rank


def launch(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0) -> list[Any]:
    """`fn(*args)` on ranks 0..world_size-1 of a fresh gloo process group; the ranks' return values in rank order.

    `fn`, `args` and the results must pickle (fn by reference: a module-level function). Each rank runs one
    intra-op thread, so W ranks share the machine's cores instead of oversubscribing them W times over.
    """
    if world_size < 1:
        raise InputError(f"a launch needs at least one process, not {world_size}")
    with tempfile.TemporaryDirectory(prefix="crossgraph-launch-") as tmp:
        work = Path(tmp)
        (work / "task.pkl").write_bytes(pickle.dumps((sys.path, pickle.dumps((fn, args)), timeout)))
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
               "WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1"}
        procs = []
        try:
            for rank in range(world_size):
                with open(work / f"rank-{rank}.log", "wb") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "crossgraph.compiler.launch", str(work)],
                        env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
            _wait(procs, work, timeout)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return [pickle.loads((work / f"rank-{rank}.pkl").read_bytes())[1] for rank in range(world_size)]


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it), for rank 0's rendezvous store."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(procs: list[subprocess.Popen], work: Path, timeout: float) -> None:
    """Until every rank exits 0; a failed rank, or the deadline, raises RankError."""
    deadline = time.monotonic() + timeout
    while True:
        codes = [proc.poll() for proc in procs]
        if any(code not in (None, 0) for code in codes):
            raise _failure(procs, work)
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            running = [str(rank) for rank, code in enumerate(codes) if code is None]
            raise RankError(f"launch of {len(procs)} processes timed out after {timeout:g} s with rank(s) "
                            f"{', '.join(running)} still running (a collective waiting on a peer?)", None)
        time.sleep(_POLL_S)


def _failure(procs: list[subprocess.Popen], work: Path) -> RankError:
    """The error of the rank that failed first. When one rank raises, its peers soon fail too ("Connection closed
    by peer"), so the ranks get a moment to finish failing, and the earliest recorded exception is the cause; a
    rank that died without recording one (killed, crashed) is named with its output's tail."""
    grace = time.monotonic() + _GRACE_S
    while time.monotonic() < grace and any(proc.poll() is None for proc in procs):
        time.sleep(_POLL_S)
    world_size, errors = len(procs), []
    for rank, proc in enumerate(procs):
        result = work / f"rank-{rank}.pkl"
        if proc.poll() not in (None, 0) and result.exists():
            _, (when, kind, message, trace) = pickle.loads(result.read_bytes())
            errors.append((when, rank, f"{kind}: {message}\n\n{trace}"))
    if errors:
        _, rank, text = min(errors)
        return RankError(f"rank {rank} of {world_size} failed: {text}", rank)
    rank, code = next((r, p.returncode) for r, p in enumerate(procs) if p.returncode not in (None, 0))
    log = (work / f"rank-{rank}.log").read_text(errors="replace")[-_TAIL:]
    return RankError(f"rank {rank} of {world_size} died with exit code {code}; its output ends:\n{log}", rank)


def _child(work: Path) -> int:
    """One rank: join the gloo group, run the task, write ("ok", result) or ("error", ...) to rank-N.pkl."""
    rank = int(os.environ["RANK"])
    path, task, timeout = pickle.loads((work / "task.pkl").read_bytes())
    sys.path[:] = path  # the parent's: `fn` and its arguments unpickle from the modules it imported them from
    torch.set_num_threads(1)
    try:
        fn, args = pickle.loads(task)
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))
        outcome = ("ok", fn(*args))
    except BaseException as exc:  # reported to the parent, whatever it is
        outcome = ("error", (time.time(), type(exc).__name__, str(exc), traceback.format_exc()))
    (work / f"rank-{rank}.pkl").write_bytes(pickle.dumps(outcome))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0 if outcome[0] == "ok" else 1


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
