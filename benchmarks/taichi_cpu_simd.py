"""Does Taichi's CPU backend vectorise a per-pixel loop? Counts SIMD values in the optimised LLVM IR.

The CPU targets of the shading kernels (docs/04) assume SIMD-rate arithmetic. This script compiles
the simplest element-wise kernel, ``y[i] = 2·x[i] + √x[i]``, with Taichi's optimised-IR dump and
counts LLVM vector types (``<8 x float>``...) in it. With Taichi 1.7.4 on x86-64 the answer is
zero: the loop body is unrolled ×4 but every operation is scalar, so a per-pixel shading kernel
runs at scalar rate, while torch's element-wise ops use AVX2. Run:

    python benchmarks/taichi_cpu_simd.py
"""
import os
import re
import subprocess
import sys
import tempfile

KERNEL = '''
import os
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "ON")
import taichi as ti
ti.init(arch=ti.cpu, print_kernel_llvm_ir_optimized=True, offline_cache=False)
x = ti.ndarray(ti.f32, 1 << 16)
y = ti.ndarray(ti.f32, 1 << 16)

@ti.kernel
def axpy_sqrt(x: ti.types.ndarray(), y: ti.types.ndarray()):
    for i in range(x.shape[0]):
        y[i] = x[i] * 2.0 + ti.sqrt(x[i])

axpy_sqrt(x, y)
'''


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "kernel.py")  # Taichi needs the kernel's source in a file
        with open(src, "w") as fh:
            fh.write(KERNEL)
        r = subprocess.run([sys.executable, src], cwd=d, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-2000:])
            return 1
        ir = "".join(open(os.path.join(d, f)).read() for f in sorted(os.listdir(d)) if f.endswith(".ll"))
    if not ir:
        print("no optimised IR was written (Taichi version without print_kernel_llvm_ir_optimized?)")
        return 1
    vec = re.findall(r"<\d+ x (?:float|double)>", ir)  # float vectors (an <4 x i32> constant sets up the launch)
    scalar_sqrt = len(re.findall(r"@llvm\.sqrt\.f32\(float", ir))
    print(f"optimised IR of y = 2x + sqrt(x): {len(vec)} float SIMD values, {scalar_sqrt} scalar sqrt calls"
          f" -> {'vectorised' if vec else 'scalar code'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
