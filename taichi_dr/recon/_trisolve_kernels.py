"""Taichi kernels of the smooth steps' triangular solves (:mod:`taichi_dr.recon.large_steps`):
forward substitution with a unit lower triangular CSR matrix, back substitution with an upper one.

Why Taichi here: the refinement pass solves ``(I + λL) x = b`` twice a step (positions, then their
gradient), each time with a prefactorised matrix. A substitution is a sequential loop whose cost
is reading the factor once (~7 M non-zeros for ~70k vertices, ~80 MB with their column indices).
SuperLU's own solve (``dgstrs``, supernode by supernode with a BLAS call each) varies with the
vertex numbering: on the box-with-a-hole's refinement mesh (69k vertices) it took 35 ms as the
reconstruction numbers the vertices and 19 ms with them shuffled, for factors within 5 % of the
same size (we did not pin down why; the supernodes' sizes are the likely cause). One compiled loop
over CSR rows that carries all right-hand sides per row takes 19 ms either way. Against SuperLU on
refinement meshes saved from four runs: 1.8x on the box, 1.3-1.4x on the cow, 1.0-1.35x on the bunny,
0.86-1.13x on the rocker arm; 0.7-1.1x on synthetic meshes (``benchmarks/bench_smooth_solve.py``;
README, Benchmarks; docs/08 round 34).

Why serial: row ``i`` needs every earlier row its factor row names, so the loop over rows cannot be
split without level scheduling, and splitting the right-hand sides over threads makes each thread
read the whole factor again (measured: 2x slower on 2 cores). Serial loops only make sense on a CPU;
on a GPU arch :class:`~taichi_dr.recon.large_steps.SmoothParametrization` keeps SuperLU.
"""
import functools

import taichi as ti

__all__ = ["kernels"]


@functools.lru_cache(maxsize=None)
def kernels(C: int):
    """``(lower, upper)`` for ``C`` right-hand sides, all float64 / int32 ndarrays, in place on ``y [n, C]``.

    ``lower(indptr, indices, data, y)``: ``y ← L⁻¹ y`` for a unit lower triangular ``L`` in CSR with
    sorted columns (each row's diagonal, stored as 1, is its last entry and is not read).
    ``upper(indptr, indices, data, y)``: ``y ← U⁻¹ y`` for an upper triangular ``U`` in CSR with
    sorted columns (each row's diagonal is its first entry).
    """
    nd = ti.types.ndarray
    vec = ti.types.vector(C, ti.f64)

    @ti.func
    def row(y: ti.template(), i):
        return vec([y[i, c] for c in ti.static(range(C))])

    @ti.kernel
    def lower(indptr: nd(dtype=ti.i32, ndim=1), indices: nd(dtype=ti.i32, ndim=1),
              data: nd(dtype=ti.f64, ndim=1), y: nd(dtype=ti.f64, ndim=2)):
        ti.loop_config(serialize=True)  # row i reads rows j < i written by this loop
        for i in range(y.shape[0]):
            s = row(y, i)
            for k in range(indptr[i], indptr[i + 1] - 1):  # strictly below the diagonal
                s -= data[k] * row(y, indices[k])
            for c in ti.static(range(C)):
                y[i, c] = s[c]

    @ti.kernel
    def upper(indptr: nd(dtype=ti.i32, ndim=1), indices: nd(dtype=ti.i32, ndim=1),
              data: nd(dtype=ti.f64, ndim=1), y: nd(dtype=ti.f64, ndim=2)):
        n = y.shape[0]
        ti.loop_config(serialize=True)  # row i reads rows j > i written by this loop
        for r in range(n):
            i = n - 1 - r
            s = row(y, i)
            for k in range(indptr[i] + 1, indptr[i + 1]):  # strictly above the diagonal
                s -= data[k] * row(y, indices[k])
            s /= data[indptr[i]]
            for c in ti.static(range(C)):
                y[i, c] = s[c]

    return lower, upper
