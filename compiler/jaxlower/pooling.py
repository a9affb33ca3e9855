"""Spatial window ops: max/avg/adaptive pooling, upsampling, grid sampling and col2im, over N C *spatial tensors.

Windows are gathered with explicit index arithmetic (no padding of the input), which follows torch's output-size
and divisor rules exactly and keeps sizes symbolic where the graph's are.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from torch.ops import aten

from crossgraph.compiler.jaxlower.dtypes import cast, is_exact, opmath
from crossgraph.compiler.jaxlower.reductions import index_dtype
from crossgraph.compiler.jaxlower.registry import Unsupported, op
from crossgraph.compiler.jaxlower.symbolic import Size

Array = jax.Array


def _per_dim(values: Sequence[int] | int | None, spatial: int, default: Sequence[int] | None = None
             ) -> tuple[int, ...]:
    if values is None or (not isinstance(values, int) and len(values) == 0):
        return tuple(default) if default is not None else (1,) * spatial
    values = [values] if isinstance(values, int) else list(values)
    return tuple(values) * spatial if len(values) == 1 else tuple(values)


def pooled_size(size: Size, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> Size:
    """torch's pooling output size; with ceil_mode the last window must start inside the input or left padding."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out = out - 1
    return out


class Windows:
    """Every pooling window of x's last `spatial` dims: values [..., *out, *kernel] plus per-position masks."""

    def __init__(self, x: Array, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], ceil_mode: bool) -> None:
        spatial = len(kernel)
        lead = x.ndim - spatial
        self.sizes = x.shape[lead:]
        inside, in_padding, flat = [], [], []
        values = x
        for i, (size, k, s, p, d) in enumerate(zip(self.sizes, kernel, stride, padding, dilation)):
            out = pooled_size(size, k, s, p, d, ceil_mode)
            index = jnp.arange(out)[:, None] * s - p + jnp.arange(k)[None, :] * d  # [out, k]
            limit = cast(size, index.dtype)
            inside.append((index >= 0) & (index < limit))
            in_padding.append(index < limit + p)
            flat.append(jnp.clip(index, 0, limit - 1) * cast(math.prod(self.sizes[i + 1:]), index.dtype))
            values = jnp.take(values, jnp.clip(index, 0, limit - 1), axis=lead + 2 * i)
        order = list(range(lead)) + [lead + 2 * i for i in range(spatial)] + [lead + 2 * i + 1 for i in range(spatial)]
        self.values = jnp.transpose(values, order)
        self.spatial = spatial
        self.inside = self._outer(inside, jnp.logical_and)
        self.in_padding = self._outer(in_padding, jnp.logical_and)
        self.flat_index = self._outer(flat, jnp.add)

    def _outer(self, per_dim: list[Array], combine: Callable[[Array, Array], Array]) -> Array:
        """Combine per-dim [out_i, k_i] arrays into one [*out, *kernel] array."""
        n = self.spatial
        total = None
        for i, a in enumerate(per_dim):
            shape = [1] * (2 * n)
            shape[i], shape[n + i] = a.shape[0], a.shape[1]
            a = a.reshape(shape)
            total = a if total is None else combine(total, a)
        return total

    def reduce_axes(self) -> tuple[int, ...]:
        """The kernel dims of `values`."""
        return tuple(range(self.values.ndim - self.spatial, self.values.ndim))

    def flatten_kernel(self, a: Array) -> Array:
        """Merge the kernel dims of a [..., *out, *kernel] array into one trailing dim."""
        return a.reshape(a.shape[:a.ndim - self.spatial] + (-1,))


def _lowest(dtype: Any) -> Array:
    return jnp.array(-jnp.inf if not is_exact(dtype) else jnp.iinfo(dtype).min, dtype)


def max_pool(x: Array, spatial: int, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
             dilation: Sequence[int], ceil_mode: bool) -> tuple[Array, Array]:
    """Max over each window and the flat spatial index of its first maximum (a NaN counts as the maximum)."""
    kernel = _per_dim(kernel_size, spatial)
    w = Windows(x, kernel, _per_dim(stride, spatial, kernel), _per_dim(padding, spatial, (0,) * spatial),
                _per_dim(dilation, spatial), ceil_mode)
    values = w.flatten_kernel(jnp.where(w.inside, w.values, _lowest(x.dtype)))
    best = jnp.argmax(values, axis=-1)
    flat = jnp.broadcast_to(w.flatten_kernel(w.flat_index), values.shape)
    index = jnp.take_along_axis(flat, best[..., None], axis=-1)[..., 0]
    return jnp.max(values, axis=-1), index.astype(index_dtype())


@op(aten.max_pool2d_with_indices.default)
def max_pool2d_with_indices(x: Array, kernel_size: Sequence[int], stride: Sequence[int] = (),
                            padding: Sequence[int] = (0,), dilation: Sequence[int] = (1,),
                            ceil_mode: bool = False) -> tuple[Array, Array]:
    """2-d max pooling with the flat (h * W + w) index of each maximum."""
    return max_pool(x, 2, kernel_size, stride, padding, dilation, ceil_mode)


@op(aten.max_pool3d_with_indices.default)
def max_pool3d_with_indices(x: Array, kernel_size: Sequence[int], stride: Sequence[int] = (),
                            padding: Sequence[int] = (0,), dilation: Sequence[int] = (1,),
                            ceil_mode: bool = False) -> tuple[Array, Array]:
    """3-d max pooling with the flat index of each maximum."""
    return max_pool(x, 3, kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool(x: Array, spatial: int, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
             ceil_mode: bool, count_include_pad: bool, divisor_override: int | None) -> Array:
    """Mean of each window; the divisor counts padding (not ceil-mode overhang) when count_include_pad."""
    kernel = _per_dim(kernel_size, spatial)
    w = Windows(x, kernel, _per_dim(stride, spatial, kernel), _per_dim(padding, spatial, (0,) * spatial),
                (1,) * spatial, ceil_mode)
    work = opmath(x.dtype)
    total = jnp.sum(jnp.where(w.inside, w.values.astype(work), 0), axis=w.reduce_axes())
    if divisor_override:
        divisor = jnp.asarray(divisor_override, work)
    else:
        counted = w.in_padding if count_include_pad else w.inside
        divisor = jnp.sum(counted, axis=tuple(range(spatial, 2 * spatial))).astype(work)
    out = total / divisor
    return (jnp.trunc(out) if is_exact(x.dtype) else out).astype(x.dtype)


@op(aten.avg_pool2d.default)
def avg_pool2d(x: Array, kernel_size: Sequence[int], stride: Sequence[int] = (), padding: Sequence[int] = (0,),
               ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None) -> Array:
    """2-d average pooling."""
    return avg_pool(x, 2, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


@op(aten.avg_pool3d.default)
def avg_pool3d(x: Array, kernel_size: Sequence[int], stride: Sequence[int] = (), padding: Sequence[int] = (0,),
               ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None) -> Array:
    """3-d average pooling."""
    return avg_pool(x, 3, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _adaptive_bins(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's adaptive bins: [floor(i * size / out), ceil((i + 1) * size / out)) for each output i."""
    i = np.arange(out)
    return (i * size) // out, -((-(i + 1) * size) // out)


def _adaptive_mask(size: int, out: int) -> np.ndarray:
    start, end = _adaptive_bins(size, out)
    pos = np.arange(size)
    return (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])  # [out, size]


def adaptive_avg_pool(x: Array, output_size: Sequence[int]) -> Array:
    """Mean over adaptive bins, one spatial dim at a time (a bin-averaging matrix per dim)."""
    spatial = len(output_size)
    work = opmath(x.dtype)
    out = x.astype(work)
    for i, n in enumerate(output_size):
        ax = x.ndim - spatial + i
        mask = _adaptive_mask(x.shape[ax], n)
        weights = jnp.asarray(mask / mask.sum(axis=1, keepdims=True), work)
        out = jnp.moveaxis(jnp.tensordot(out, weights, axes=[[ax], [1]], precision=lax.Precision.HIGHEST), -1, ax)
    return out.astype(x.dtype)


@op(aten._adaptive_avg_pool2d.default)
def adaptive_avg_pool2d(x: Array, output_size: Sequence[int]) -> Array:
    """2-d adaptive average pooling to `output_size`."""
    return adaptive_avg_pool(x, output_size)


@op(aten._adaptive_avg_pool3d.default)
def adaptive_avg_pool3d(x: Array, output_size: Sequence[int]) -> Array:
    """3-d adaptive average pooling to `output_size`."""
    return adaptive_avg_pool(x, output_size)


def adaptive_max_pool(x: Array, output_size: Sequence[int]) -> tuple[Array, Array]:
    """Max over adaptive bins and the flat spatial index of the first maximum in row-major order."""
    spatial = len(output_size)
    lead = x.ndim - spatial
    sizes = x.shape[lead:]
    values, index = x, jnp.zeros(x.shape, index_dtype())
    for i in reversed(range(spatial)):  # last dim first: the first maximum in row-major order survives
        ax = lead + i
        mask = jnp.asarray(_adaptive_mask(sizes[i], output_size[i]))  # [out, size]
        moved = jnp.moveaxis(values, ax, -1)[..., None, :]
        masked = jnp.where(mask, moved, _lowest(x.dtype))
        best = jnp.argmax(masked, axis=-1)
        values = jnp.moveaxis(jnp.max(masked, axis=-1), -1, ax)
        picked = jnp.take_along_axis(jnp.moveaxis(index, ax, -1), best, axis=-1)
        position = best.astype(index_dtype()) * math.prod(sizes[i + 1:])
        index = jnp.moveaxis(picked + position, -1, ax)
    return values, index


@op(aten.adaptive_max_pool2d.default)
def adaptive_max_pool2d(x: Array, output_size: Sequence[int]) -> tuple[Array, Array]:
    """2-d adaptive max pooling to `output_size`, with flat indices."""
    return adaptive_max_pool(x, output_size)


@op(aten.adaptive_max_pool3d.default)
def adaptive_max_pool3d(x: Array, output_size: Sequence[int]) -> tuple[Array, Array]:
    """3-d adaptive max pooling to `output_size`, with flat indices."""
    return adaptive_max_pool(x, output_size)


# ---- resampling -------------------------------------------------------------------------------------------------
def _output_sizes(x: Array, spatial: int, output_size: Sequence[int] | None,
                  scale_factors: Sequence[float] | None) -> tuple[list[int], list[float | None]]:
    sizes = x.shape[x.ndim - spatial:]
    if output_size:
        return list(output_size), list(scale_factors) if scale_factors else [None] * spatial
    return [math.floor(n * s) for n, s in zip(sizes, scale_factors)], list(scale_factors)


def _scale(size: int, out: int, scale: float | None, align_corners: bool = False) -> float:
    """torch's area_pixel_compute_scale."""
    if align_corners:
        return (size - 1) / (out - 1) if out > 1 else 0.0
    return 1.0 / scale if scale else size / out


def _nearest(exact: bool) -> Callable[..., Array]:
    def resample(x: Array, output_size: Sequence[int] | None, scale_factors: Sequence[float] | None,
                 spatial: int) -> Array:
        outs, scales = _output_sizes(x, spatial, output_size, scale_factors)
        for i, (out, scale) in enumerate(zip(outs, scales)):
            ax = x.ndim - spatial + i
            size = x.shape[ax]
            s = np.float32(_scale(size, out, scale))
            dst = np.arange(out, dtype=np.float32)
            src = np.floor((dst + np.float32(0.5)) * s) if exact else np.floor(dst * s)
            x = jnp.take(x, np.minimum(src.astype(np.int64), size - 1), axis=ax)
        return x
    return resample


def _linear_taps(size: int, out: int, scale: float | None, align_corners: bool) -> tuple[np.ndarray, ...]:
    """Source indices and weights of linear interpolation along one dim (torch's area_pixel source index)."""
    s = np.float32(_scale(size, out, scale, align_corners))
    dst = np.arange(out, dtype=np.float32)
    src = dst * s if align_corners else np.maximum((dst + np.float32(0.5)) * s - np.float32(0.5), 0)
    lo = np.minimum(np.floor(src).astype(np.int64), size - 1)
    hi = np.minimum(lo + 1, size - 1)
    frac = (src - lo).astype(np.float32)
    return lo, hi, frac


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Keys cubic convolution weights (A = -0.75) of the four taps around a fractional position t."""
    a = -0.75

    def near(d: np.ndarray) -> np.ndarray:
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _interpolate(cubic: bool) -> Callable[..., Array]:
    def resample(x: Array, output_size: Sequence[int] | None, align_corners: bool,
                 scale_factors: Sequence[float] | None, spatial: int) -> Array:
        outs, scales = _output_sizes(x, spatial, output_size, scale_factors)
        work = opmath(x.dtype)
        y = x.astype(work)
        for i, (out, scale) in enumerate(zip(outs, scales)):
            ax = y.ndim - spatial + i
            size = y.shape[ax]
            shape = [1] * y.ndim
            shape[ax] = out
            if cubic:
                s = np.float32(_scale(size, out, scale, align_corners))
                dst = np.arange(out, dtype=np.float32)
                src = dst * s if align_corners else (dst + np.float32(0.5)) * s - np.float32(0.5)
                base = np.floor(src).astype(np.int64)
                weights = _cubic_weights((src - base).astype(np.float32))
                y = sum(jnp.take(y, np.clip(base - 1 + j, 0, size - 1), axis=ax)
                        * jnp.asarray(w, work).reshape(shape) for j, w in enumerate(weights))
            else:
                lo, hi, frac = _linear_taps(size, out, scale, align_corners)
                f = jnp.asarray(frac, work).reshape(shape)
                y = jnp.take(y, lo, axis=ax) * (1 - f) + jnp.take(y, hi, axis=ax) * f
        return y.astype(x.dtype)
    return resample


_NEAREST, _NEAREST_EXACT, _LINEAR, _CUBIC = _nearest(False), _nearest(True), _interpolate(False), _interpolate(True)


def _register_resampling() -> None:
    """upsample_* in both overloads: `.vec` (output_size or scale_factors), which capture keeps whole, and
    `.default` (sizes plus scales), which make_fx produces."""
    for spatial, name in ((1, "1d"), (2, "2d"), (3, "3d")):
        for packet_name, resample in ((f"upsample_nearest{name}", _NEAREST),
                                      (f"_upsample_nearest_exact{name}", _NEAREST_EXACT)):
            packet = getattr(aten, packet_name)

            def vec(x: Array, output_size: Any, scale_factors: Any, resample: Any = resample,
                    spatial: int = spatial) -> Array:
                return resample(x, output_size, scale_factors, spatial)

            def sized(x: Array, output_size: Any, *scales: Any, resample: Any = resample,
                      spatial: int = spatial) -> Array:
                return resample(x, output_size, [s for s in scales if s is not None] or None, spatial)

            if resample is _NEAREST:  # capture keeps upsample_nearest*.vec whole; nearest-exact it decomposes
                op(packet.vec)(vec)
            op(packet.default)(sized)
        linear = {1: "upsample_linear1d", 2: "upsample_bilinear2d", 3: "upsample_trilinear3d"}[spatial]
        kinds = [(linear, _LINEAR)] + ([("upsample_bicubic2d", _CUBIC)] if spatial == 2 else [])
        for packet_name, resample in kinds:
            packet = getattr(aten, packet_name)

            def vec_ac(x: Array, output_size: Any, align_corners: bool, scale_factors: Any,
                       resample: Any = resample, spatial: int = spatial) -> Array:
                return resample(x, output_size, align_corners, scale_factors, spatial)

            def sized_ac(x: Array, output_size: Any, align_corners: bool, *scales: Any, resample: Any = resample,
                         spatial: int = spatial) -> Array:
                return resample(x, output_size, align_corners, [s for s in scales if s is not None] or None, spatial)

            op(packet.vec)(vec_ac)
            op(packet.default)(sized_ac)


_register_resampling()


def _unnormalize(coord: Array, size: int, align_corners: bool) -> Array:
    """Grid coordinates in [-1, 1] to pixel positions."""
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _reflect(coord: Array, low: float, high: float) -> Array:
    """Reflect coordinates into [low, high] (twice the bounds, as torch's reflect_coordinates takes them)."""
    if low == high:
        return jnp.zeros_like(coord)
    lo, span = low / 2, (high - low) / 2
    c = jnp.abs(coord - lo)
    extra = jnp.fmod(c, span)
    flips = jnp.floor(c / span)
    return jnp.where(jnp.fmod(flips, 2) == 0, extra + lo, span - extra + lo)


def _source_position(coord: Array, size: int, padding_mode: int, align_corners: bool) -> Array:
    pos = _unnormalize(coord, size, align_corners)
    if padding_mode == 2:  # reflection
        pos = _reflect(pos, 0, 2 * (size - 1)) if align_corners else _reflect(pos, -1, 2 * size - 1)
    if padding_mode in (1, 2):  # border (and reflection, clipped afterwards)
        pos = jnp.clip(pos, 0, size - 1)
    return pos


@op(aten.grid_sampler_2d.default)
def grid_sampler_2d(x: Array, grid: Array, interpolation_mode: int, padding_mode: int,
                    align_corners: bool) -> Array:
    """Sample x [N, C, H, W] at grid [N, Ho, Wo, 2] (x, y in [-1, 1]): bilinear (0) or nearest (1); zero (0),
    border (1) or reflection (2) padding."""
    if interpolation_mode not in (0, 1):
        raise Unsupported("bicubic grid sampling")
    work = opmath(x.dtype)
    n, c, h, w = x.shape
    gx = _source_position(grid[..., 0].astype(work), w, padding_mode, align_corners)
    gy = _source_position(grid[..., 1].astype(work), h, padding_mode, align_corners)
    batch = jnp.arange(n)[:, None, None]

    def tap(iy: Array, ix: Array) -> Array:
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        vals = x.astype(work)[batch, :, jnp.clip(iy, 0, h - 1), jnp.clip(ix, 0, w - 1)]  # [N, Ho, Wo, C]
        return jnp.where(inside[..., None], vals, 0)

    if interpolation_mode == 1:
        out = tap(jnp.round(gy).astype(jnp.int32), jnp.round(gx).astype(jnp.int32))
    else:
        x0, y0 = jnp.floor(gx), jnp.floor(gy)
        fx, fy = (gx - x0)[..., None], (gy - y0)[..., None]
        x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
        out = (tap(y0, x0) * (1 - fx) * (1 - fy) + tap(y0, x0 + 1) * fx * (1 - fy)
               + tap(y0 + 1, x0) * (1 - fx) * fy + tap(y0 + 1, x0 + 1) * fx * fy)
    return jnp.moveaxis(out, -1, 1).astype(x.dtype)


@op(aten.col2im.default)
def col2im(x: Array, output_size: Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int],
           padding: Sequence[int], stride: Sequence[int]) -> Array:
    """Sum sliding-window columns [N, C*kh*kw, L] back into an image [N, C, H, W] (the inverse layout of unfold)."""
    unbatched = x.ndim == 2
    if unbatched:
        x = x[None]
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = (_per_dim(v, 2) for v in (kernel_size, dilation, padding, stride))
    h, w = output_size
    bh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    bw = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    n, c = x.shape[0], x.shape[1] // (kh * kw)
    cols = x.reshape(n, c, kh, kw, bh, bw)
    rows = (np.arange(kh)[:, None, None, None] * dh + np.arange(bh)[None, None, :, None] * sh)
    columns = (np.arange(kw)[None, :, None, None] * dw + np.arange(bw)[None, None, None, :] * sw)
    rows, columns = np.broadcast_arrays(rows, columns)
    work = opmath(x.dtype)
    out = jnp.zeros((n, c, h + 2 * ph, w + 2 * pw), work).at[:, :, rows, columns].add(cols.astype(work))
    out = out[:, :, ph:ph + h, pw:pw + w].astype(x.dtype)
    return out[0] if unbatched else out
