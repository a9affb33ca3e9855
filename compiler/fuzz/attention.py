"""The attention op family: `F.scaled_dot_product_attention`, which capture keeps whole (one op every target
translates as a fused kernel), with its causal, boolean and additive masks, explicit scales and grouped heads.

Its output is a convex combination of the rows of `v`, so it stays in v's range; a boolean mask may hide every
key from a query, for which torch defines the output as zeros.
"""

from __future__ import annotations

from crossgraph.compiler.fuzz.builder import MAX_DIM, Builder, Out, Var, broadcast, is_float
from crossgraph.compiler.fuzz.program import BOOL, FLOAT


def attention(b: Builder) -> bool:
    q = b.pick(lambda v: is_float(v) and 2 <= v.rank <= 4)
    if q is None:
        return False
    *batch, length, embed = q.shape
    heads = batch[-1] if len(batch) >= 2 else 1
    kv_heads = b.choice([h for h in range(1, heads + 1) if heads % h == 0]) if heads > 1 and b.coin() else heads
    kv_batch = tuple(batch[:-1]) + (kv_heads,) if len(batch) >= 2 else tuple(batch)
    keys, value_dim = b.integer(1, MAX_DIM), b.integer(1, MAX_DIM)
    k = b.operand(kv_batch + (keys, embed))
    v = b.operand(kv_batch + (keys, value_dim))
    if k is None or v is None:
        return False
    args = [q.name, k.name, v.name]
    operands = [q, k, v]
    mask_kind = b.choice(["none", "causal", "bool", "float"])
    if mask_kind == "causal":
        args.append("is_causal=True")
    elif mask_kind != "none":
        mask = _mask(b, tuple(batch) + (length, keys), BOOL if mask_kind == "bool" else FLOAT)
        if mask is None:
            return False
        args.append(f"attn_mask={mask.name}")
        operands.append(mask)
    if b.coin():
        args.append(f"scale={b.choice([0.5, 0.25, 1.0])}")
    if kv_heads != heads:
        args.append("enable_gqa=True")
    return b.emit("attention", f"F.scaled_dot_product_attention({', '.join(args)})", operands,
                  [Out(tuple(batch) + (length, value_dim), FLOAT, min(v.lo, 0.0), max(v.hi, 0.0))])


def _mask(b: Builder, scores: tuple[int, ...], dtype: str) -> Var | None:
    """A mask of `dtype` that broadcasts to the score shape: one in scope or a new leaf of (L, S) or the full shape."""
    found = [m for m in b.vars if m.dtype == dtype and 2 <= m.rank <= len(scores)
             and broadcast(m.shape, scores) == scores]
    if found and b.coin():
        return b.choice(found)
    return b.leaf(scores[-2:] if b.coin() else scores, dtype, param=False)
