"""How per-pixel kernels split an image over threads, chosen per arch (one home for every per-pixel kernel).

On the CPU a parallel iteration handles a *row piece* of ``ROW_PIECE_CPU`` pixels: a per-pixel loop
would need (n, y, x) from a flat index, i.e. integer divisions per pixel (slow on CPUs), and
Taichi's CPU backend gives each thread at least 512 consecutive iterations, so a loop over the 512
rows of a 512² image would run on a single thread; row pieces cost one division each and keep every
core busy. Kernels that scatter gradients sum a run of pixels of one triangle in registers and
flush it with one set of atomic adds when the triangle changes, which row pieces make common.

On a GPU a thread per pixel is the right shape: 512² pixels give 262 144 threads instead of 4 096,
and neighbouring threads read neighbouring pixels (coalesced loads) instead of addresses 64 pixels
apart. The same kernels then run with a piece of 1 pixel: the maths is identical, the runs are one
pixel long.
"""
import taichi as ti

from taichi_dr.runtime import ensure_init

__all__ = ["ROW_PIECE_CPU", "row_piece", "segment", "batch_of"]

ROW_PIECE_CPU = 64  # pixels per parallel iteration of the per-pixel kernels on the CPU


def row_piece() -> int:
    """Pixels per parallel iteration for the arch in use (a compile-time constant of the kernels)."""
    return ROW_PIECE_CPU if ensure_init() == "cpu" else 1


@ti.func
def segment(it, nseg, H, W, seg: ti.template()):
    """Parallel iteration ``it`` -> (image n, row y, pixels [xa, xb)) of a ``seg``-pixel row piece;
    ``nseg = ceil(W / seg)`` pieces per row."""
    row = ti.raw_div(it, nseg)
    n = ti.raw_div(row, H)
    xa = (it - row * nseg) * seg
    return n, row - n * H, xa, ti.min(xa + seg, W)


@ti.func
def batch_of(p, hw, n_batch):
    """Image index of flat pixel ``p`` (``hw`` pixels per image) into a batch of ``n_batch`` (0 when
    one image is broadcast). A branch, not ``a if c else b``: Taichi evaluates both sides of the
    latter, and the integer division per pixel cost ~10 % of a per-pixel kernel."""
    n = 0
    if n_batch > 1:
        n = ti.raw_div(p, hw)
    return n
