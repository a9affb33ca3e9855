"""Structural op families: matmuls, reductions (and scans, sorts, top-k), normalizations and shape ops (views,
cat, split), each with the result's shape, interval, exactness and contiguity."""

from __future__ import annotations

import math

from hypothesis import strategies as st

from crossgraph.compiler.fuzz.builder import MAX_DIM, MAX_RANK, Builder, Out, Shape, draw_dim, is_float, numel, power
from crossgraph.compiler.fuzz.program import BOOL, FLOAT, INT


def matmul(b: Builder) -> bool:
    a = b.pick(lambda v: is_float(v) and v.rank >= 1)
    if a is None:
        return False
    k, n = a.shape[-1], b.integer(1, MAX_DIM)
    forms = ["vector", "matrix", "linear", "left"] + (["batched"] if a.rank >= 3 else [])
    form = b.choice(forms)
    if form == "linear":
        w = b.leaf((n, k), param=True)
        if w is None:
            return False
        bias = b.leaf((n,), param=True) if b.coin() else None
        expr = f"F.linear({a.name}, {w.name}{', ' + bias.name if bias else ''})"
        bound = k * a.bound * w.bound + (bias.bound if bias else 0.0)
        return b.emit("linear", expr, [a, w] + ([bias] if bias else []),
                      [Out(a.shape[:-1] + (n,), FLOAT, -bound, bound)])
    if form == "left":
        m = a.shape[-2] if a.rank >= 2 else k
        lhs = b.operand((n, m))
        if lhs is None:
            return False
        shape = a.shape[:-2] + (n, a.shape[-1]) if a.rank >= 2 else (n,)
        fn = "torch.mm" if a.rank == 2 and b.coin() else "torch.matmul"
        bound = m * a.bound * lhs.bound
        return b.emit(fn.split(".")[1], f"{fn}({lhs.name}, {a.name})", [lhs, a], [Out(shape, FLOAT, -bound, bound)])
    rhs_shape = {"vector": (k,), "matrix": (k, n), "batched": a.shape[:-2] + (k, n)}[form]
    rhs = b.operand(rhs_shape)
    if rhs is None:
        return False
    shape = a.shape[:-1] + (() if form == "vector" else (n,))
    if form == "batched" and a.rank == 3 and b.coin():
        fn = "torch.bmm"
    elif form == "matrix" and a.rank == 2 and b.coin():
        fn = "torch.mm"
    else:
        fn = "torch.matmul"
    bound = k * a.bound * rhs.bound
    return b.emit(fn.split(".")[1], f"{fn}({a.name}, {rhs.name})", [a, rhs], [Out(shape, FLOAT, -bound, bound)])


# ---- reductions and normalizations --------------------------------------------------------------------------
def reduce_dims(b: Builder) -> bool:
    v = b.pick(lambda v: v.rank >= 1)
    if v is None:
        return False
    names = {FLOAT: ["sum", "mean", "amax", "amin", "prod", "var"] + (["argmax", "argmin"] if v.exact else []),
             INT: ["sum", "amax", "amin", "argmax", "argmin", "prod"],
             BOOL: ["any", "all", "sum"]}[v.dtype]
    name = b.choice(names)
    keepdim = b.coin()
    if name in ("sum", "mean", "amax", "amin", "var") and v.rank >= 2 and b.coin():
        picked = sorted(set(b.draw(st.lists(st.integers(0, v.rank - 1), min_size=1, max_size=v.rank))))
        dims: tuple[int, ...] = tuple(d - v.rank if b.coin() else d for d in picked)
        dim_text = repr(dims)
    else:
        dims = (draw_dim(b, v.rank),)
        dim_text = str(dims[0])
    positive = {d % v.rank for d in dims}
    n = numel([v.shape[d] for d in positive])
    shape = tuple(1 if i in positive else s for i, s in enumerate(v.shape) if keepdim or i not in positive)
    dtype, exact = v.dtype, v.dtype != FLOAT
    if name == "sum":
        dtype = INT if v.dtype == BOOL else v.dtype
        lo, hi = n * min(v.lo, 0), n * max(v.hi, 0)
        if v.dtype != FLOAT and b.coin():  # an int or bool sum accumulated in float32
            return b.emit(name, f"torch.sum({v.name}, dim={dim_text}, keepdim={keepdim}, dtype=torch.float32)",
                          [v], [Out(shape, FLOAT, lo, hi, True)])
    elif name == "mean":
        lo, hi = v.lo, v.hi
    elif name in ("amax", "amin"):
        lo, hi, exact = v.lo, v.hi, v.exact or v.dtype != FLOAT
    elif name == "prod":
        lo, hi = (power(v.lo, n), power(v.hi, n)) if v.lo >= 0 else (-power(v.bound, n), power(v.bound, n))
    elif name == "var":
        correction = b.choice([0, 1]) if n >= 2 else 0
        lo, hi = 0.0, (v.hi - v.lo) ** 2
        return b.emit("var", f"torch.var({v.name}, dim={dim_text}, correction={correction}, keepdim={keepdim})",
                      [v], [Out(shape, FLOAT, lo, hi)])
    elif name in ("argmax", "argmin"):
        dtype, lo, hi, exact = INT, 0, v.shape[dims[0]] - 1, True
    else:
        lo, hi = 0, 1
    return b.emit(name, f"torch.{name}({v.name}, dim={dim_text}, keepdim={keepdim})", [v],
                  [Out(shape, dtype, lo, hi, exact)])


def full_reduce(b: Builder) -> bool:
    v = b.pick(lambda v: v.dtype == FLOAT)
    if v is None:
        return False
    name = b.choice(["sum", "mean", "amax", "amin"])
    n = numel(v.shape)
    lo, hi = (n * min(v.lo, 0), n * max(v.hi, 0)) if name == "sum" else (v.lo, v.hi)
    return b.emit(name, f"torch.{name}({v.name})", [v], [Out((), FLOAT, lo, hi, name in ("amax", "amin") and v.exact)])


def scan_or_sort(b: Builder) -> bool:
    """cumsum, sort and topk values, max/min over a dim (indices only of exact values), logsumexp."""
    v = b.pick(lambda v: v.rank >= 1 and v.dtype in (FLOAT, INT))
    if v is None:
        return False
    d = draw_dim(b, v.rank)
    n = v.shape[d]
    names = ["cumsum", "sort", "topk", "max", "min"] + (["logsumexp"] if v.dtype == FLOAT else [])
    name = b.choice(names)
    if name == "cumsum":
        return b.emit("cumsum", f"torch.cumsum({v.name}, dim={d})", [v],
                      [Out(v.shape, v.dtype, n * min(v.lo, 0), n * max(v.hi, 0), v.dtype == INT)])
    if name == "sort":
        return b.emit("sort", f"torch.sort({v.name}, dim={d}, descending={b.coin()}).values", [v],
                      [Out(v.shape, v.dtype, v.lo, v.hi, v.exact)])
    if name == "topk":
        k = b.integer(1, n)
        shape = v.shape[:d % v.rank] + (k,) + v.shape[d % v.rank + 1:]
        return b.emit("topk", f"torch.topk({v.name}, {k}, dim={d}, largest={b.coin()}).values", [v],
                      [Out(shape, v.dtype, v.lo, v.hi, v.exact)])
    keepdim = b.coin()
    shape = tuple(1 if i == d % v.rank else s for i, s in enumerate(v.shape) if keepdim or i != d % v.rank)
    if name == "logsumexp":
        return b.emit("logsumexp", f"torch.logsumexp({v.name}, dim={d}, keepdim={keepdim})", [v],
                      [Out(shape, FLOAT, v.lo, v.hi + math.log(n))])
    field = "indices" if (v.exact or v.dtype == INT) and b.coin() else "values"
    out = Out(shape, INT, 0, n - 1, True) if field == "indices" else Out(shape, v.dtype, v.lo, v.hi, v.exact)
    return b.emit(f"{name}.{field}", f"torch.{name}({v.name}, dim={d}, keepdim={keepdim}).{field}", [v], [out])


def softmax(b: Builder) -> bool:
    v = b.pick(lambda v: is_float(v) and v.rank >= 1)
    if v is None:
        return False
    d = draw_dim(b, v.rank)
    name = b.choice(["softmax", "log_softmax"])
    fn = b.choice([f"torch.{name}", f"F.{name}"])
    if name == "softmax":
        lo, hi = 0.0, 1.0
    else:
        lo, hi = -(v.hi - v.lo) - math.log(v.shape[d]), 0.0
    return b.emit(name, f"{fn}({v.name}, dim={d})", [v], [Out(v.shape, FLOAT, lo, hi, False, v.contiguous)])


def layer_norm(b: Builder) -> bool:
    v = b.pick(lambda v: is_float(v) and v.rank >= 1)
    if v is None:
        return False
    normalized = v.shape[v.rank - b.integer(1, min(2, v.rank)):]
    weight = b.leaf(normalized, param=True) if b.coin() else None
    bias = b.leaf(normalized, param=True) if b.coin() else None
    eps = b.choice([1e-2, 1e-1])
    args = "".join(f", {k}={p.name}" for k, p in (("weight", weight), ("bias", bias)) if p is not None)
    bound = math.sqrt(numel(normalized)) * (weight.bound if weight else 1.0) + (bias.bound if bias else 0.0)
    return b.emit("layer_norm", f"F.layer_norm({v.name}, {normalized!r}{args}, eps={eps})",
                  [v] + [p for p in (weight, bias) if p is not None],
                  [Out(v.shape, FLOAT, -bound, bound, False, v.contiguous)])


# ---- shapes -------------------------------------------------------------------------------------------------
def _factor_shape(b: Builder, n: int) -> Shape:
    """A random shape of rank 1..4 with `n` elements."""
    primes, m, p = [], n, 2
    while m > 1:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    rank = b.integer(1, MAX_RANK)
    dims = [1] * rank
    for prime in primes:
        dims[b.integer(0, rank - 1)] *= prime
    return tuple(dims)


def reshape(b: Builder) -> bool:
    v = b.pick(lambda v: True)
    if v is None:
        return False
    shape = () if numel(v.shape) == 1 and b.integer(0, 3) == 0 else _factor_shape(b, numel(v.shape))
    text = list(map(str, shape))
    if text and b.coin():
        text[b.integer(0, len(text) - 1)] = "-1"
    use_view = v.contiguous and b.coin()
    if not use_view and shape and v.rank >= 2 and b.coin() and b.coin():
        start = b.integer(0, v.rank - 2)
        end = b.integer(start + 1, v.rank - 1)
        flat = v.shape[:start] + (numel(v.shape[start:end + 1]),) + v.shape[end + 1:]
        return b.emit("flatten", f"torch.flatten({v.name}, {start}, {end})", [v],
                      [Out(flat, v.dtype, v.lo, v.hi, v.exact, v.contiguous)])
    method = "view" if use_view else "reshape"
    args = ", ".join(text) if text else "()"
    return b.emit(method, f"{v.name}.{method}({args})", [v], [Out(shape, v.dtype, v.lo, v.hi, v.exact, v.contiguous)])


def permute(b: Builder) -> bool:
    v = b.pick(lambda v: v.rank >= 2)
    if v is None:
        return False
    if b.coin():
        d0, d1 = draw_dim(b, v.rank), draw_dim(b, v.rank)
        shape = list(v.shape)
        shape[d0], shape[d1] = shape[d1], shape[d0]
        return b.emit("transpose", f"torch.transpose({v.name}, {d0}, {d1})", [v],
                      [Out(tuple(shape), v.dtype, v.lo, v.hi, v.exact, False)])
    perm = b.draw(st.permutations(range(v.rank)))
    return b.emit("permute", f"{v.name}.permute{tuple(perm)!r}", [v],
                  [Out(tuple(v.shape[p] for p in perm), v.dtype, v.lo, v.hi, v.exact, False)])


def unsqueeze_squeeze(b: Builder) -> bool:
    v = b.pick(lambda v: True)
    if v is None:
        return False
    ones = [i for i, s in enumerate(v.shape) if s == 1]
    if ones and b.coin():
        d = b.choice(ones)
        d = d - v.rank if b.coin() else d
        shape = v.shape[:d % v.rank] + v.shape[d % v.rank + 1:]
        return b.emit("squeeze", f"torch.squeeze({v.name}, {d})", [v],
                      [Out(shape, v.dtype, v.lo, v.hi, v.exact, v.contiguous)])
    d = b.integer(-(v.rank + 1), v.rank)
    at = d % (v.rank + 1)
    return b.emit("unsqueeze", f"torch.unsqueeze({v.name}, {d})", [v],
                  [Out(v.shape[:at] + (1,) + v.shape[at:], v.dtype, v.lo, v.hi, v.exact, v.contiguous)])


def expand(b: Builder) -> bool:
    v = b.pick(lambda v: 1 in v.shape or v.rank < MAX_RANK)
    if v is None:
        return False
    lead = [b.integer(1, MAX_DIM) for _ in range(b.integer(0, MAX_RANK - v.rank))]
    sizes = [b.integer(1, MAX_DIM) if s == 1 else s for s in v.shape]
    text = [str(s) for s in lead] + [str(s) if s != old or not b.coin() else "-1" for s, old in zip(sizes, v.shape)]
    if not text:
        return False
    return b.emit("expand", f"{v.name}.expand({', '.join(text)})", [v],
                  [Out(tuple(lead + sizes), v.dtype, v.lo, v.hi, v.exact, False)])


def slice_or_select(b: Builder) -> bool:
    v = b.pick(lambda v: v.rank >= 1 and max(v.shape) >= 2)
    if v is None:
        return False
    d = b.choice([i for i, s in enumerate(v.shape) if s >= 2])
    size = v.shape[d]
    prefix = ":, " * d
    if b.integer(0, 3) == 0:
        i = b.integer(-size, size - 1)
        shape = v.shape[:d] + v.shape[d + 1:]
        return b.emit("select", f"torch.select({v.name}, {d}, {i})", [v],
                      [Out(shape, v.dtype, v.lo, v.hi, v.exact, v.contiguous and d == 0)])
    start = b.integer(-size, size - 1)
    stop = b.choice([None, b.integer(-size, size)])
    step = b.choice([1, 1, 2, 3])
    length = len(range(size)[slice(start, stop, step)])
    if length == 0:
        return False
    text = f"{start}:{'' if stop is None else stop}{'' if step == 1 else f':{step}'}"
    shape = v.shape[:d] + (length,) + v.shape[d + 1:]
    return b.emit("slice", f"{v.name}[{prefix}{text}]", [v],
                  [Out(shape, v.dtype, v.lo, v.hi, v.exact, v.contiguous and d == 0 and step == 1)])


def cat(b: Builder) -> bool:
    v = b.pick(lambda v: v.rank >= 1)
    if v is None:
        return False
    d = draw_dim(b, v.rank)
    parts = [v]
    for _ in range(b.integer(1, 2)):
        same = [u for u in b.vars if u.dtype == v.dtype and u.rank == v.rank
                and all(x == y for i, (x, y) in enumerate(zip(u.shape, v.shape)) if i != d % v.rank)]
        other = b.choice(same) if same and b.coin() else None
        if other is None:
            shape = v.shape[:d % v.rank] + (b.integer(1, MAX_DIM),) + v.shape[d % v.rank + 1:]
            other = b.leaf(shape, v.dtype)
        if other is None:
            return False
        parts.append(other)
    parts = b.draw(st.permutations(parts))
    shape = v.shape[:d % v.rank] + (sum(p.shape[d % v.rank] for p in parts),) + v.shape[d % v.rank + 1:]
    return b.emit("cat", f"torch.cat([{', '.join(p.name for p in parts)}], dim={d})", parts,
                  [Out(shape, v.dtype, min(p.lo for p in parts), max(p.hi for p in parts),
                       all(p.exact for p in parts), all(p.contiguous for p in parts))])


def split(b: Builder) -> bool:
    v = b.pick(lambda v: v.rank >= 1 and max(v.shape) >= 2)
    if v is None:
        return False
    d = b.choice([i for i, s in enumerate(v.shape) if s >= 2])
    size = v.shape[d]
    form = b.choice(["sizes", "size", "chunk"])
    if form == "sizes":
        first = b.integer(1, size - 1)
        pieces = [first, size - first]
        expr = f"torch.split({v.name}, {pieces}, dim={d})"
    else:
        count = b.integer(2, min(3, size))
        step = -(-size // count) if form == "chunk" else b.integer(max(1, -(-size // 3)), size - 1)
        pieces = [min(step, size - i) for i in range(0, size, step)]
        expr = f"torch.chunk({v.name}, {count}, dim={d})" if form == "chunk" else \
            f"torch.split({v.name}, {step}, dim={d})"
    outs = [Out(v.shape[:d] + (p,) + v.shape[d + 1:], v.dtype, v.lo, v.hi, v.exact, v.contiguous and d == 0)
            for p in pieces]
    return b.emit(form if form == "chunk" else "split", expr, [v], outs)


