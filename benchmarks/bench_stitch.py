"""Time `ptycho_torch_nb.stitching.reassemble_position` for 512 and 100,000 patches (N=64, M=20), and
`phase_synchronize` on simulated scans (the true patches, each group given a random constant phase).

Reference (upstream_baseline.md, 2 CPU threads, warm): 0.15-0.73 s for 512 patches (TF and upstream torch).
Usage: python benchmarks/bench_stitch.py [--device cpu|cuda] [--threads 2] [--repeats 3] [--sizes 512 100000]
       [--sync 256 4096]
Prints one line per size: median wall time, patches/s, canvas size; then one line per scan size for the
synchronisation: median wall time, patches, pairs compared, and the synchronised stitch's phase SSIM.
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
    ap.add_argument('--sync', type=int, nargs='*', default=[256, 4096], help='scan sizes for phase_synchronize (none: skip)')
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
    for n in a.sync: bench_sync(n, a.repeats)

def bench_sync(n: int, repeats: int):
    "Median time of `phase_synchronize` on a simulated n-position scan's true patches with scrambled group phases."
    from scipy.spatial import cKDTree
    from ptycho_torch_nb.simulation import simulated_scan
    from ptycho_torch_nb.data_container import inference_container, scan_nphotons
    from ptycho_torch_nb.evaluation import score_scan
    from ptycho_torch_nb.stitching import patch_positions, phase_synchronize, stitch_scan
    raw = simulated_scan(n=n, seed=1)
    c = inference_container(raw, 64, 2, scan_nphotons(raw))
    rng = np.random.default_rng(0)
    p = c.Y.numpy() * np.exp(1j * rng.uniform(-np.pi, np.pi, (len(c), 1, 1, 1))).astype(np.complex64)
    pos = patch_positions(c)
    phase_synchronize(p[:8], pos[:8])                                   # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); out = phase_synchronize(p, pos); times.append(time.perf_counter() - t0)
    img, w, xy = stitch_scan(out, c, sync_phase=False)
    pairs = len(cKDTree(np.asarray(pos, np.float64).reshape(-1, 2)).query_pairs(52))
    print(f"phase_synchronize, scan of {n:>5} positions: {statistics.median(times):6.3f} s median of {repeats} "
          f"({p.shape[0] * p.shape[1]} patches, {pairs} pairs compared), synchronised phase SSIM "
          f"{score_scan(img, w, xy, raw.objectGuess)['ssim_phase']:.3f}")

if __name__ == '__main__':
    main()
