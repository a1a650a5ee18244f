"""Taichi kernels of the hash-grid encoding (:class:`~taichi_dr.recon.material.HashGridEncoding`):
forward lookup and its hand-written adjoint.

Why Taichi here: the encoding is 8 gathers per level per point. In torch that is one
``index_select`` of ``[P·L·8, F]`` plus ~10 full-size int64/float temporaries, and a backward
``index_add`` of the same size — 1.8 s for 37k points, 12 levels, on 2 CPU cores. Fused into one
loop over (point, level) it is tens of milliseconds. The torch implementation stays as the
reference the tests compare against (``HashGridEncoding.forward_reference``).

Why a hand-written adjoint: the table addresses depend on the data (hash), which Taichi's
reverse-mode autodiff does not handle; the op is linear in the table, so the adjoint is the
transposed gather: every tap adds ``w·g`` to its table row (atomic adds: rows are shared by many
points, and hashed rows by colliding corners). Positions get no gradient (see ``material.py``).
"""
import functools

import taichi as ti

__all__ = ["kernels"]


@functools.lru_cache(maxsize=None)
def kernels(real, F: int, serial_bwd: bool = False):
    """``(fwd, bwd)`` for Taichi float type ``real`` and ``F`` features per level.

    Both loop over (point p, level l); ``meta[l] = (R_l, table size, row offset, dense)``.
    ``fwd(x [P, 3], table [S, F], meta [L, 4], out [P, L·F])``;
    ``bwd(x, g_out [P, L·F], meta, g_table [S, F])`` accumulates into ``g_table`` (zeroed by the caller);
    ``serial_bwd`` (the CPU's choice) runs it on one thread, a GPU keeps the parallel loop and its atomics.
    """
    nd = ti.types.ndarray
    SERIAL_BWD = serial_bwd
    meta_t = ti.types.vector(4, ti.i32)

    @ti.func
    def tap(x: ti.template(), meta: ti.template(), p, l, c):
        """Row index and trilinear weight of corner ``c`` (bit k = +1 along axis k) of the cell of x_p at level l."""
        m = meta[l]
        R = m[0]
        w = ti.cast(1.0, real)
        ic = ti.Vector([0, 0, 0], ti.i32)
        for k in ti.static(range(3)):
            pos = ti.min(ti.max(x[p, k], ti.cast(0.0, real)), ti.cast(1.0, real)) * ti.cast(R, real)
            cell = ti.min(ti.cast(ti.floor(pos), ti.i32), R - 1)
            f = pos - ti.cast(cell, real)
            bit = (c >> k) & 1
            ic[k] = cell + bit
            w *= f if bit == 1 else ti.cast(1.0, real) - f
        idx = 0
        if m[3] == 1:  # dense: every corner of the level has its own row
            idx = ic[0] + (R + 1) * (ic[1] + (R + 1) * ic[2])
        else:  # spatial hash (uint32 arithmetic wraps, as in tiny-cuda-nn); sizes are powers of two
            h = ti.cast(ic[0], ti.u32) ^ (ti.cast(ic[1], ti.u32) * ti.u32(2654435761)) \
                ^ (ti.cast(ic[2], ti.u32) * ti.u32(805459861))
            idx = ti.cast(h & ti.cast(m[1] - 1, ti.u32), ti.i32)
        return m[2] + idx, w

    @ti.kernel
    def fwd(x: nd(dtype=real, ndim=2), table: nd(dtype=real, ndim=2), meta: nd(dtype=meta_t, ndim=1),
            out: nd(dtype=real, ndim=2)):
        for l, p in ti.ndrange(meta.shape[0], x.shape[0]):
            acc = ti.Vector([0.0] * F, real)
            for c in ti.static(range(8)):
                row, w = tap(x, meta, p, l, c)
                for f in ti.static(range(F)):
                    acc[f] += w * table[row, f]
            for f in ti.static(range(F)):
                out[p, l * F + f] = acc[f]

    @ti.kernel
    def bwd(x: nd(dtype=real, ndim=2), g_out: nd(dtype=real, ndim=2), meta: nd(dtype=meta_t, ndim=1),
            g_table: nd(dtype=real, ndim=2)):
        # CPU: one thread: rows are shared by many taps, and the contended atomic float adds of a
        # parallel loop cost more than the whole serial loop with plain adds
        ti.loop_config(serialize=SERIAL_BWD)
        for l, p in ti.ndrange(meta.shape[0], x.shape[0]):
            for c in ti.static(range(8)):
                row, w = tap(x, meta, p, l, c)
                for f in ti.static(range(F)):
                    if ti.static(SERIAL_BWD):  # plain adds: a CPU atomic float add is a compare-and-swap loop
                        g_table[row, f] = g_table[row, f] + w * g_out[p, l * F + f]
                    else:
                        ti.atomic_add(g_table[row, f], w * g_out[p, l * F + f])

    return fwd, bwd
