"""Issue 15: how fast hostile archives are refused (real zip bombs, not patched headers), and what the gate costs.
Run: python benchmarks/bench_reliability.py   (writes nothing outside a temporary folder)."""
import atexit, io, shutil, tempfile, time, zipfile
from pathlib import Path
import torch
from ptycho_torch_nb import params
from ptycho_torch_nb.config import ModelConfig, TrainingConfig, validate_run
from ptycho_torch_nb.model import PtychoPINN_Lightning
from ptycho_torch_nb.persistence import save_torch_bundle, load_torch_bundle

def rewrite(good: Path, out: Path, member: str, writer):
    "Copy `good` to `out`, with `member` written by `writer(zf, name)` instead of copied."
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename == member: writer(dst, member)
            else: dst.writestr(info.filename, src.read(info.filename))
    return out

def zeros_member(size: int):
    "A writer that streams `size` zero bytes into a deflated member (the file stays ~size/1000)."
    def w(zf, name):
        info = zipfile.ZipInfo(name); info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, 'w', force_zip64=True) as f:
            chunk = bytes(2**24)
            for _ in range(size // len(chunk)): f.write(chunk)
    return w

PEAK = ("import resource, sys\nfrom ptycho_torch_nb import params\nfrom ptycho_torch_nb.persistence import load_torch_bundle\n"
        "try:\n    with params.temporary_cfg(): load_torch_bundle(sys.argv[1])\nexcept ValueError: pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")

def peak_mb(path) -> float:
    "Peak RSS (MB) of a fresh process that loads (or refuses) the archive at `path`."
    import subprocess, sys
    return int(subprocess.run([sys.executable, '-c', PEAK, str(path)], capture_output=True, text=True, check=True).stdout) / 1024

def timed_refusal(path):
    t0 = time.perf_counter()
    try:
        with params.temporary_cfg(): load_torch_bundle(path)
        return time.perf_counter() - t0, 'LOADED'
    except ValueError as e: return time.perf_counter() - t0, str(e)[:150]

if __name__ == '__main__':
    d = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, d, True)
    cfg = TrainingConfig(model=ModelConfig(N=64, gridsize=1, n_filters_scale=2), backend='pytorch')
    m = PtychoPINN_Lightning(model_config=dict(N=64, gridsize=1, n_filters_scale=2))
    with params.temporary_cfg(): good = save_torch_bundle({'autoencoder': m, 'diffraction_to_obj': m}, d / 'wts.h5', cfg)
    t0 = time.perf_counter()
    with params.temporary_cfg(): load_torch_bundle(good)
    print(f"good archive {good.stat().st_size / 1e6:.1f} MB: loads in {time.perf_counter() - t0:.2f} s")
    for member in ('manifest.json', 'diffraction_to_obj/model.ckpt'):
        bomb = rewrite(good, d / 'bomb.zip', member, zeros_member(2**31))
        dt, msg = timed_refusal(bomb)
        print(f"{member} inflating to 2 GiB ({bomb.stat().st_size / 1e6:.1f} MB file): refused in {dt:.3f} s: {msg}")
    ck = torch.load(io.BytesIO(zipfile.ZipFile(good).read('diffraction_to_obj/model.ckpt')), weights_only=True)
    ck['hyper_parameters']['model_config']['n_filters_scale'] = 1000
    b = io.BytesIO(); torch.save(ck, b)
    huge = rewrite(good, d / 'huge.zip', 'diffraction_to_obj/model.ckpt', lambda zf, n: zf.writestr(n, b.getvalue()))
    dt, msg = timed_refusal(huge)
    print(f"hyper-parameters n_filters_scale=1000: refused in {dt:.3f} s: {msg}")
    print(f"  peak RSS of a fresh process refusing it: {peak_mb(huge):.0f} MB; loading the good archive: {peak_mb(good):.0f} MB")
    t0 = time.perf_counter()
    for _ in range(1000): validate_run(cfg, seed=1, M=20)
    print(f"validate_run: {(time.perf_counter() - t0):.3f} ms per call (1000 calls)")
    shutil.rmtree(d)
