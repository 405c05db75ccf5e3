"""Pty-chi as a second iterative anchor (issue 16): its LSQML on the scans of `bench_amortised.py`, same scorer (not a test).

Pty-chi is not a dependency of this package. Install it beside the venv without its dependencies (its one use of
torchvision, a Gaussian blur the options below never call, is replaced by a stub here, because PyPI's torchvision does
not load beside the pinned CPU torch):
    .venv/bin/python -m pip install --target ../ptychi_pkgs --no-deps ptychi pandas pytz tzdata python-dateutil
    PTYCHI_PATH=../ptychi_pkgs .venv/bin/python benchmarks/bench_ptychi.py [--epochs 200] [--every 20]
Each scan's intensities (diff3d²), its probe (fixed, as in `reconstruct.iterative_reference`) and its positions go to
LSQML (Gaussian noise model, batch 32, step size 1, object of ones); every `--every` epochs Pty-chi's own object patches
at the scan positions are stitched and scored with `evaluation.score_scan`, as the package's solver is. Time excludes
scoring.
"""
import argparse, os, sys, time, types
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

def _import_ptychi():
    "Pty-chi from PTYCHI_PATH, with a stub for torchvision.transforms.GaussianBlur if torchvision does not load."
    if os.environ.get('PTYCHI_PATH'): sys.path.insert(0, os.environ['PTYCHI_PATH'])
    try: import torchvision  # noqa: F401
    except Exception:
        class GaussianBlur:
            def __init__(self, *a, **k): raise NotImplementedError('torchvision stub: GaussianBlur is not available here')
        tv, tr = types.ModuleType('torchvision'), types.ModuleType('torchvision.transforms')
        tr.GaussianBlur = GaussianBlur; tv.transforms = tr
        sys.modules['torchvision'], sys.modules['torchvision.transforms'] = tv, tr
    import ptychi.api as api
    from ptychi.api.task import PtychographyTask
    from ptychi.utils import get_suggested_object_size
    return api, PtychographyTask, get_suggested_object_size

def lsqml(raw, epochs: int, every: int, batch_size: int = 32):
    "LSQML on one scan: [{'epoch', 'train_s', 'ssim_amp', 'ssim_phase'}] every `every` epochs."
    import torch, logging
    logging.getLogger().setLevel(logging.ERROR)
    from ptycho_torch_nb.stitching import reassemble_position
    from ptycho_torch_nb.evaluation import score_scan
    api, PtychographyTask, suggested = _import_ptychi()
    data = np.asarray(raw.diff3d, np.float32) ** 2
    probe = np.asarray(raw.probeGuess, np.complex64)
    pos_yx = np.column_stack([raw.ycoords, raw.xcoords]).astype(np.float32)
    pos_yx -= (pos_yx.max(0) + pos_yx.min(0)) / 2          # Pty-chi's positions are relative to the object's centre
    o = api.LSQMLOptions()
    o.data_options.data = data
    o.object_options.optimizable = True; o.object_options.optimizer = api.Optimizers.SGD; o.object_options.step_size = 1
    o.probe_options.optimizable = False
    o.probe_position_options.optimizable = False
    o.reconstructor_options.batch_size = batch_size
    o.reconstructor_options.noise_model = api.NoiseModels.GAUSSIAN
    o.reconstructor_options.num_epochs = every
    obj0 = torch.ones([1, *suggested(pos_yx, probe.shape, extra=20)], dtype=torch.complex64)
    task = PtychographyTask(o, diffraction_data=data, object_data=obj0, probe_data=probe[None, None],
                            probe_position_x_px=pos_yx[:, 1], probe_position_y_px=pos_yx[:, 0])
    pos = np.column_stack([raw.xcoords, raw.ycoords]).astype(np.float64)
    curve, spent, done = [], 0.0, 0
    while done < epochs:
        t0 = time.perf_counter(); task.run(n_epochs=every); spent += time.perf_counter() - t0; done += every
        obj = task.reconstructor.parameter_group.object
        with torch.no_grad():
            patches = obj.extract_patches(torch.as_tensor(pos_yx), probe.shape)[:, 0].cpu().numpy()
        img, w = (np.asarray(a) for a in reassemble_position(patches, pos, M=48, return_weights=True))
        curve.append(dict(epoch=done, train_s=spent, **score_scan(img, w, pos, raw.objectGuess, 48)))
    return curve

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=200); ap.add_argument('--every', type=int, default=20)
    ap.add_argument('--n', type=int, default=256); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--cases', default='', help='comma-separated case name prefixes (default: all)')
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'benchmarks'))
    import torch, warnings; torch.set_num_threads(a.threads); warnings.filterwarnings('ignore')
    from bench_amortised import cases
    want = [w for w in a.cases.split(',') if w]
    for name, raw in cases(a.n, a.seed):
        if want and not any(name.startswith(w) for w in want): continue
        curve = lsqml(raw, a.epochs, a.every)
        print(f"{name:38s} Pty-chi LSQML " + ' '.join(f"{r['epoch']}:{r['train_s']:.1f}s {r['ssim_amp']:.3f}/{r['ssim_phase']:.3f}" for r in curve), flush=True)
    return 0

if __name__ == '__main__': sys.exit(main())
