"""Time `ptycho_torch_nb.stitching.reassemble_position` for 512 and 100,000 patches (N=64, M=20).

Reference (upstream_baseline.md, 2 CPU threads, warm): 0.15-0.73 s for 512 patches (TF and upstream torch).
Usage: python benchmarks/bench_stitch.py [--device cpu|cuda] [--threads 2] [--repeats 3] [--sizes 512 100000]
Prints one line per size: median wall time, patches/s, canvas size, peak extra memory estimate.
"""
import argparse, statistics, time
import numpy as np
import torch
from ptycho_torch_nb.stitching import reassemble_position

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--sizes', type=int, nargs='+', default=[512, 100_000])
    ap.add_argument('--N', type=int, default=64)
    ap.add_argument('--M', type=int, default=20)
    ap.add_argument('--chunk-size', type=int, default=4096)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, N={a.N}, M={a.M}, "
          f"chunk_size={a.chunk_size}")
    rng = np.random.default_rng(0)
    for n in a.sizes:
        side = max(1.0, np.sqrt(n) * 2.0)                     # ~4 patches per 2x2 px: dense, like a real scan
        pos = torch.as_tensor(rng.uniform(0, side, size=(n, 2)), device=dev)
        patches = torch.randn(n, a.N, a.N, dtype=torch.complex64, device=dev)
        def run():
            out = reassemble_position(patches, pos, M=a.M, chunk_size=a.chunk_size)
            if dev.type == 'cuda': torch.cuda.synchronize()
            return out
        out = run()                                            # warm-up
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"n={n:>7}: {med:8.3f} s median of {a.repeats} (min {min(times):.3f}), "
              f"{n / med:,.0f} patches/s, canvas {tuple(out.shape)}"
              + ("   [reference 0.15-0.73 s]" if n == 512 else ""))

if __name__ == '__main__':
    main()
