"""Issue 16: pretraining throughput of the chosen generator with the physics loss, against a plain CNN of the same
layers trained in the same run (not a test; prints ratios).

- ours: `pretrain.pretrain` itself (Lightning, the corpus sampler, the single-scan model: pattern-wise generator with the
  back-propagated first guess, merge, probe, far field, Poisson loss) for --steps optimiser steps, in the precision
  `training.resolve_precision('auto')` chooses here and, for comparison, in 32-true. Patterns/s = steps x groups x
  patterns per group / the clock's training seconds (corpus simulation and the first step's set-up excluded);
- plain: the same convolution layers (every `Conv3x3` replaced by a plain `nn.Conv2d` with the same weights, float32,
  default memory layout) trained with Adam on an MSE loss against fixed targets, in a bare loop, on batches of the same
  number of patterns.
The machine's speed drifts, so the measurements alternate (plain, ours, plain, ours, ...) for --rounds rounds and the
ratio of each round is printed; the acceptance bar is ours / plain >= 1.1 (issue 16).

Usage: python benchmarks/bench_pretrain_throughput.py [--steps 12] [--rounds 2] [--threads 2] [--json out.json]
"""
import argparse, atexit, copy, json, shutil, tempfile, time
from pathlib import Path
import numpy as np

def plain_copy(net):
    "The CNN with each `Conv3x3` replaced by an `nn.Conv2d` holding the same weights (no channels-last, no 1-channel trick)."
    import torch
    from ptycho_torch_nb.model import Conv3x3
    plain = copy.deepcopy(net)
    for mod in list(plain.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, Conv3x3):
                c = torch.nn.Conv2d(child.in_channels, child.out_channels, 3, padding=1)
                c.load_state_dict(child.state_dict())
                setattr(mod, name, c)
    return plain

def plain_rate(net, patterns: int, in_channels: int, steps: int, N: int = 64, device: str = 'cpu', bf16: bool = False) -> float:
    "Training patterns/s of the plain CNN (float32, or under bf16 autocast; Adam, MSE on amplitude and phase), `patterns` per step, on `device`."
    import torch
    torch.manual_seed(0)
    x = torch.rand(patterns, in_channels, N, N, device=device)
    ta, tp = torch.rand(patterns, 1, N, N, device=device), torch.rand(patterns, 1, N, N, device=device) - 0.5
    sync = torch.cuda.synchronize if str(device).startswith('cuda') else (lambda: None)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(str(device).split(':')[0], dtype=torch.bfloat16, enabled=bf16): a, p = net(x)
        loss = torch.nn.functional.mse_loss(a.float(), ta) + torch.nn.functional.mse_loss(p.float(), tp)
        loss.backward(); opt.step()
    step(); sync()   # set-up (allocations, oneDNN primitives, kernels) excluded, as the clock excludes ours
    t = time.perf_counter()
    for _ in range(steps): step()
    sync()
    return steps * patterns / (time.perf_counter() - t)

def ours_rate(steps: int, precision: str, batch_size: int, workdir: Path, n_scans: int = 16) -> dict:
    "Training patterns/s of `pretrain` (`n_scans` corpus scans of max(64, batch_size) positions: one scan fills a batch) and the precision it ran in."
    from ptycho_torch_nb.pretrain import pretrain
    out = Path(tempfile.mkdtemp(dir=workdir))
    r = pretrain(out, n_scans=n_scans, n=max(64, batch_size), steps=steps + 1, batch_size=batch_size, precision=precision, progress=False,
                 overwrite=True, checkpoint_every=10 ** 6, command='bench_pretrain_throughput')
    c, card = r['clock'], r['card']
    C = int(r['model'].model.gridsize) ** 2
    return dict(patterns_per_s=c.steps * batch_size * C / c.train_s, precision=card['training']['precision'],
                steps=c.steps, train_s=c.train_s, patterns_per_step=batch_size * C, model=r['model'])

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=12)
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--batch_size', type=int, default=16, help='groups per step (pretrain default)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--json', type=Path, default=None)
    a = ap.parse_args()
    import torch
    from ptycho_torch_nb.core import quiet_libraries
    from ptycho_torch_nb.training import resolve_precision
    quiet_libraries(False)   # Lightning's info lines off, as in the CLIs
    torch.set_num_threads(a.threads)
    chosen = resolve_precision('auto', 'cpu')
    print(f"torch {torch.__version__}, {a.threads} CPU threads; precision chosen here: {chosen}; GPU: not measured", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix='bench_pretrain_'))
    atexit.register(shutil.rmtree, workdir, True)
    rows = []
    for r in range(a.rounds):
        precisions = [chosen] + (['32-true'] if chosen != '32-true' else [])
        ours = {p: ours_rate(a.steps, p, a.batch_size, workdir) for p in precisions}
        gen = ours[chosen]['model'].model.generator
        net = plain_copy(gen.net)
        plain = plain_rate(net, ours[chosen]['patterns_per_step'], int(gen.in_channels), a.steps)
        row = dict(plain=plain, **{f'ours_{p}': o['patterns_per_s'] for p, o in ours.items()})
        rows.append(row)
        print(f"round {r + 1}: plain CNN {plain:.1f} patterns/s; " + '; '.join(
              f"ours {p} {o['patterns_per_s']:.1f} patterns/s ({o['patterns_per_s'] / plain:.2f}x)" for p, o in ours.items()), flush=True)
    med = {k: float(np.median([row[k] for row in rows])) for k in rows[0]}
    print(f"median: plain {med['plain']:.1f} patterns/s; ours ({chosen}) {med[f'ours_{chosen}']:.1f} = "
          f"{med[f'ours_{chosen}'] / med['plain']:.2f}x the plain CNN (target >= 1.1)"
          + (f"; ours 32-true {med['ours_32-true']:.1f} = {med['ours_32-true'] / med['plain']:.2f}x" if 'ours_32-true' in med and chosen != '32-true' else ''))
    if a.json: a.json.write_text(json.dumps(dict(chosen=chosen, rounds=rows, median=med), indent=1))

if __name__ == '__main__':
    main()
