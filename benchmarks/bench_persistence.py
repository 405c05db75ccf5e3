"""Save/load speed and archive size of the N=64 model (`make bench`; or `python benchmarks/bench_persistence.py`).

Targets (issue 6): saving and loading the N=64 model each take under a second on CPU, and `wts.h5.zip` is
within 10% of the raw weights' size. Prints one line per configuration, with the times of a plain `torch.save` /
`torch.load(weights_only=True)` of the same weights in the same process as the reference, and their ratios. Exits
non-zero only if the archive outgrows its size target (a timing depends on the machine, so it is printed, not judged).
Timings exclude the one-off imports (torch, lightning) and are the median of `--repeats` runs.
"""
import argparse, statistics, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from ptycho_torch_nb import params as legacy
from ptycho_torch_nb.config import ModelConfig, TrainingConfig, update_legacy_dict
from ptycho_torch_nb.core import data_path
from ptycho_torch_nb.model import PtychoPINN_Lightning
from ptycho_torch_nb.persistence import save_torch_bundle, load_inference_bundle_torch


def bench(gridsize: int, repeats: int, out: Path) -> dict:
    probe = torch.as_tensor(np.load(data_path())['probeGuess'])
    config = TrainingConfig(model=ModelConfig(N=64, gridsize=gridsize), nphotons=1e9, output_dir=out)
    torch.manual_seed(0)
    model = PtychoPINN_Lightning.from_configs(config.model, config, probe=probe).eval()
    raw = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    saves, loads, plain_saves, plain_loads = [], [], [], []
    with legacy.temporary_cfg():
        update_legacy_dict(legacy.cfg, config)
        for _ in range(repeats):
            t0 = time.perf_counter()
            path = save_torch_bundle({'autoencoder': model, 'diffraction_to_obj': model}, out / 'wts.h5', config)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            models, _ = load_inference_bundle_torch(out)
            loads.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); torch.save(model.state_dict(), out / 'plain.pt'); plain_saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); torch.load(out / 'plain.pt', weights_only=True); plain_loads.append(time.perf_counter() - t0)
    loaded = models['diffraction_to_obj'].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items()), 'weights changed in the round trip'
    return dict(gridsize=gridsize, save_s=statistics.median(saves), load_s=statistics.median(loads),
                plain_save_s=statistics.median(plain_saves), plain_load_s=statistics.median(plain_loads),
                archive_bytes=path.stat().st_size, raw_bytes=raw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    args = ap.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    ok = True
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, median of {args.repeats} runs")
    for gs in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            r = bench(gs, args.repeats, Path(d))
        ratio = r['archive_bytes'] / r['raw_bytes']
        ok &= ratio <= 1.10
        print(f"N=64 gridsize={gs}: save {r['save_s']:.3f} s ({r['save_s'] / r['plain_save_s']:.1f}x torch.save), "
              f"load {r['load_s']:.3f} s ({r['load_s'] / r['plain_load_s']:.1f}x torch.load) [target: each < 1 s], "
              f"archive {r['archive_bytes'] / 1e6:.2f} MB / raw weights {r['raw_bytes'] / 1e6:.2f} MB = {ratio:.4f} "
              f"[{'ok' if ratio <= 1.10 else 'MISSED'}: target <= 1.10]")
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
