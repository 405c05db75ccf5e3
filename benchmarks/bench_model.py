"""Throughput of the PtychoPINN model on this machine (not a test).

Measures, for N=64, batch 16 (groups), gridsize 1 and 2, n_filters_scale 2, float32 on CPU:
  - training patterns/s (forward + Poisson loss + backward + Adam step, as `PtychoPINN_Lightning.training_step`),
  - inference patterns/s (`diffraction_to_obj` under `torch.inference_mode`),
  - conv FLOPs per pattern (counted from the layers), and the fraction of this machine's measured conv throughput
    (3×3 conv 64→64 on 64×64, batch 16, channels-last) that the model reaches.
Each rate is given on the wall clock and per CPU-second (process CPU time: robust when the machine is shared; with
`--threads 1` it is the single-core rate). The fraction of the conv ceiling is computed on the CPU-time clock.
A pattern is one diffraction image: a gridsize-2 group holds 4 (the network runs once per group).

Usage:  python benchmarks/bench_model.py [--threads T] [--steps S] [--gridsize 1 2] [--json out.json]
Reference figures on the same kind of machine (shared/reference/upstream_baseline.md, gridsize 1, batch 16):
training 13.0 patterns/s (TensorFlow), 14.3 (upstream torch); inference 49.7 (TensorFlow), 42.6 (upstream torch).
"""
import argparse, json, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch
from torch import nn
from ptycho_torch_nb import physics
from ptycho_torch_nb.model import PtychoPINN_Lightning

REFERENCE = {1: dict(train_tf=13.0, train_torch=14.3, infer_tf=49.7, infer_torch=42.6),
             2: dict(train_tf=51.3, train_torch=65.5, infer_tf=99.0, infer_torch=117.0)}


def conv_flops(module: nn.Module, x) -> int:
    "FLOPs (2·MAC) of every Conv2d in one forward pass of `module` on `x`."
    total = [0]
    def hook(m, inp, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    hs = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad(): module(x)
    for h in hs: h.remove()
    return total[0]


def timed(f, reps: int):
    "(wall seconds, process CPU seconds) per call of `f`, after two warm-up calls."
    for _ in range(2): f()
    w, c = time.perf_counter(), time.process_time()
    for _ in range(reps): f()
    return (time.perf_counter() - w) / reps, (time.process_time() - c) / reps


def machine_conv_gflops(reps: int = 10):
    "Measured (wall, CPU-time) GFLOP/s of a 3×3 conv 64→64 on 64×64, batch 16, channels-last, forward."
    conv = nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(16, 64, 64, 64).contiguous(memory_format=torch.channels_last)
    flops = 2 * 16 * 64 * 64 * 64 * 64 * 9
    with torch.inference_mode(): w, c = timed(lambda: conv(x), reps)
    return flops / w / 1e9, flops / c / 1e9


def bench(gridsize: int, steps: int, batch: int = 16, N: int = 64):
    C = gridsize ** 2
    s0 = physics.intensity_scale_closed_form(1e9, N)
    lm = PtychoPINN_Lightning(dict(N=N, gridsize=gridsize, n_filters_scale=2), intensity_scale=s0)
    X = torch.rand(batch, C, N, N) * 2
    pos = torch.randn(batch, C, 1, 2) * 3
    pos = pos - pos.mean(1, keepdim=True)
    batch_d = dict(X=X, coords_relative=pos)
    opt = lm.configure_optimizers()
    opt = opt['optimizer'] if isinstance(opt, dict) else opt
    def train_step():
        opt.zero_grad(set_to_none=True)
        lm.compute_losses(batch_d)['loss'].backward()
        opt.step()
    train_w, train_c = timed(train_step, steps)
    lm.eval()
    with torch.inference_mode(): infer_w, infer_c = timed(lambda: lm.diffraction_to_obj(X, pos), steps)
    fwd_flops_per_group = conv_flops(lm.model.generator, X[:1] * 1.0)
    return dict(gridsize=gridsize, batch_groups=batch, patterns_per_batch=batch * C,
                train_patterns_per_s=batch * C / train_w, infer_patterns_per_s=batch * C / infer_w,
                train_patterns_per_cpu_s=batch * C / train_c, infer_patterns_per_cpu_s=batch * C / infer_c,
                forward_gflop_per_pattern=fwd_flops_per_group / C / 1e9,
                train_gflop_per_pattern=3 * fwd_flops_per_group / C / 1e9)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--steps', type=int, default=5)
    ap.add_argument('--gridsize', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--json', default=None)
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    ceiling, ceiling_cpu = machine_conv_gflops()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; measured conv throughput {ceiling:.0f} GFLOP/s '
          f'wall, {ceiling_cpu:.0f} GFLOP per CPU-second')
    rows = []
    for g in a.gridsize:
        r = bench(g, a.steps)
        # fractions on the CPU-time clock (robust on a shared machine): model GFLOP per CPU-second / conv GFLOP per CPU-second
        r['train_fraction_of_conv_ceiling'] = r['train_patterns_per_cpu_s'] * r['train_gflop_per_pattern'] / ceiling_cpu
        r['infer_fraction_of_conv_ceiling'] = r['infer_patterns_per_cpu_s'] * r['forward_gflop_per_pattern'] / ceiling_cpu
        ref = REFERENCE.get(g, {})
        r['train_vs_best_reference'] = r['train_patterns_per_s'] / max(ref.get('train_tf', 0), ref.get('train_torch', 0))
        r['infer_vs_best_reference'] = r['infer_patterns_per_s'] / max(ref.get('infer_tf', 0), ref.get('infer_torch', 0))
        rows.append(r)
        print(f"gridsize {g}: training {r['train_patterns_per_s']:.1f} patterns/s "
              f"({r['train_vs_best_reference']:.2f}x best reference, {100 * r['train_fraction_of_conv_ceiling']:.0f}% of conv ceiling); "
              f"inference {r['infer_patterns_per_s']:.1f} patterns/s ({r['infer_vs_best_reference']:.2f}x, "
              f"{100 * r['infer_fraction_of_conv_ceiling']:.0f}%); per CPU-second: training {r['train_patterns_per_cpu_s']:.1f}, "
              f"inference {r['infer_patterns_per_cpu_s']:.1f}; {r['forward_gflop_per_pattern']:.2f} GFLOP/pattern forward")
    out = dict(conv_ceiling_gflops=ceiling, conv_ceiling_gflop_per_cpu_s=ceiling_cpu, threads=torch.get_num_threads(), results=rows)
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == '__main__':
    main()
