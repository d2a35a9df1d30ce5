"""Plain numpy pooling: the oracle every backend is tested against.

Written to be read, not to be fast: one Python loop over output positions, each window gathered
explicitly from the taps that land inside the input, the arithmetic done in float64.  Every rule
comes from :mod:`poolserve.spec`; the comments point at the rule they follow.
"""

from __future__ import annotations

import itertools

import numpy as np

from .spec import FLOAT_DTYPES, Geometry, PoolSpec, SpecError


def _channels_first(a: np.ndarray, layout: str) -> np.ndarray:
    """A view of ``a`` as (N, C, *spatial); writes through it reach ``a``."""
    return a if layout == "channels_first" else np.moveaxis(a, -1, 1)


def _windows(g: Geometry):
    """Yield (output position, per-axis taps inside the input, divisor with count_include_pad).

    Taps are listed in kernel scan order (row-major), so the first maximum met is the first in
    scan order.
    """
    for pos in itertools.product(*(range(o) for o in g.out_spatial)):
        inside, padded_count = [], 1
        for a, o in enumerate(pos):
            starts = [o * g.strides[a] - g.pads_begin[a] + j * g.dilations[a] for j in range(g.kernel[a])]
            inside.append([t for t in starts if 0 <= t < g.in_spatial[a]])
            # count_include_pad counts taps inside the padded input, never those past the end pad
            padded_count *= sum(1 for t in starts if -g.pads_begin[a] <= t < g.in_spatial[a] + g.pads_end[a])
        yield pos, inside, padded_count


def _gather(xc: np.ndarray, taps) -> np.ndarray:
    """The window's values as (N, C, T), T in scan order."""
    w = xc[(slice(None), slice(None)) + np.ix_(*taps)]
    return w.reshape(w.shape[0], w.shape[1], -1)


def forward(spec: PoolSpec, x: np.ndarray):
    """Pool ``x``; return ``(y, indices)`` where indices is None unless ``spec.return_indices``."""
    x = np.asarray(x)
    g = spec.resolve(x.shape, x.dtype.name)
    y = np.empty(g.output_shape, dtype=x.dtype)
    yc = _channels_first(y, spec.layout)
    xc = _channels_first(x, spec.layout)
    # flat offsets of every element in the input's own layout (the ONNX Indices convention)
    offsets = _channels_first(np.arange(x.size, dtype=np.int64).reshape(x.shape), spec.layout)
    ind = np.empty(g.output_shape, dtype=np.int64) if spec.return_indices else None
    indc = _channels_first(ind, spec.layout) if ind is not None else None

    # inf - inf and NaN inputs make NaN averages and norms: that is the rule, not a warning
    with np.errstate(invalid="ignore", over="ignore"):
        for pos, taps, padded_count in _windows(g):
            out = (slice(None), slice(None)) + pos
            w = _gather(xc, taps)
            if spec.mode == "max":
                # ties: first maximum in scan order (argmax returns the first); NaN: the first NaN wins
                pick = w.argmax(axis=-1)
                if x.dtype.kind == "f":
                    nan = np.isnan(w)
                    pick = np.where(nan.any(axis=-1), nan.argmax(axis=-1), pick)
                yc[out] = np.take_along_axis(w, pick[..., None], axis=-1)[..., 0]
                if indc is not None:
                    indc[out] = np.take_along_axis(_gather(offsets, taps), pick[..., None], axis=-1)[..., 0]
            elif spec.mode == "avg":
                divisor = padded_count if spec.count_include_pad else w.shape[-1]
                yc[out] = w.astype(np.float64).sum(axis=-1) / divisor
            else:  # lp: padded taps are zero and add nothing to the sum
                yc[out] = (np.abs(w.astype(np.float64)) ** spec.p).sum(axis=-1) ** (1.0 / spec.p)
    return y, ind


def backward(spec: PoolSpec, input_shape, grad_output: np.ndarray, *, x: np.ndarray | None = None,
             indices: np.ndarray | None = None) -> np.ndarray:
    """Gradient of the pooling with respect to its input, given the gradient of its output.

    max: the gradient goes to the recorded argmax (``indices``, or recomputed from ``x``),
         summed where windows overlap.
    avg: each window's gradient is spread evenly over its input taps, divided by the forward's
         divisor.
    lp:  d(||w||_p)/dw_i = sign(w_i) |w_i|^(p-1) / ||w||_p^(p-1), taken as 0 where w_i is 0
         (this keeps p < 1 finite) and where the whole window is 0.
    """
    grad_output = np.asarray(grad_output)
    if grad_output.dtype.name not in FLOAT_DTYPES:
        raise SpecError("grad_output.dtype", grad_output.dtype.name, f"must be one of {', '.join(FLOAT_DTYPES)}")
    g = spec.resolve(input_shape)
    if grad_output.shape != g.output_shape:
        raise SpecError("grad_output.shape", grad_output.shape, f"must equal the output shape {g.output_shape}")
    dx = np.zeros(g.input_shape, dtype=np.float64)

    if spec.mode == "max":
        if indices is None:
            if x is None:
                raise SpecError("indices", None, "max backward needs the forward indices or the input")
            _, indices = forward(spec.replace(return_indices=True), x)
        np.add.at(dx.reshape(-1), np.asarray(indices).reshape(-1), grad_output.astype(np.float64).reshape(-1))
        return dx.astype(grad_output.dtype)

    gc = _channels_first(grad_output.astype(np.float64), spec.layout)
    dxc = _channels_first(dx, spec.layout)
    if spec.mode == "lp":
        if x is None:
            raise SpecError("input", None, "lp backward needs the forward input")
        xc = _channels_first(np.asarray(x).astype(np.float64), spec.layout)
    for pos, taps, padded_count in _windows(g):
        gw = gc[(slice(None), slice(None)) + pos][..., None]  # (N, C, 1)
        if spec.mode == "avg":
            divisor = padded_count if spec.count_include_pad else np.prod([len(t) for t in taps])
            contrib = np.broadcast_to(gw / divisor, gw.shape[:2] + (int(np.prod([len(t) for t in taps])),))
        else:
            w = _gather(xc, taps)
            norm = (np.abs(w) ** spec.p).sum(axis=-1, keepdims=True) ** (1.0 / spec.p)
            with np.errstate(divide="ignore", invalid="ignore"):
                d = np.sign(w) * np.abs(w) ** (spec.p - 1) / norm ** (spec.p - 1)
            contrib = gw * np.where((norm > 0) & (w != 0), d, 0.0)
        index = (slice(None), slice(None)) + np.ix_(*taps)
        dxc[index] += contrib.reshape(dxc[index].shape)
    return dx.astype(grad_output.dtype)
