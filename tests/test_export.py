"""Issue 17: `export.export_generator` and `ptycho-torch-export`: TorchScript, torch.export (and ONNX where onnxruntime
installs) reproduce the eager generator within 1e-5 relative, and run in a process that cannot import ptycho_torch_nb."""
import importlib.util, json, subprocess, sys
import numpy as np
import pytest
import torch

from ptycho_torch_nb import export as E
from ptycho_torch_nb.streaming import pattern_generator

N = 64
HAS_ONNX = bool(importlib.util.find_spec('onnx') and importlib.util.find_spec('onnxruntime'))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='optional extra: pip install onnx onnxruntime')

def single_scan_model(n_filters_scale=1, **options):
    "An untrained model with the default single-scan options (`config.ScanOptions`), narrow by default."
    from ptycho_torch_nb.config import ScanOptions
    from ptycho_torch_nb.model import PtychoPINN_Lightning
    o = ScanOptions(**options)
    return PtychoPINN_Lightning(dict(N=N, gridsize=o.gridsize, n_filters_scale=n_filters_scale, pad_object=o.pad_object),
                                merge_weight=o.merge_weight, generator_mode=o.generator_mode, backprop_input=o.backprop_input)

def _model(backprop_input=True, gridsize_one_plain=False):
    torch.manual_seed(1)
    if gridsize_one_plain:
        from ptycho_torch_nb.model import PtychoPINN_Lightning
        return PtychoPINN_Lightning(dict(N=N, gridsize=1, n_filters_scale=1), intensity_scale=3.0)
    return single_scan_model(backprop_input=backprop_input)

@pytest.fixture(scope='module')
def archive(tmp_path_factory):
    torch.set_num_threads(1)
    from ptycho_torch_nb.persistence import save_torch_bundle
    m = _model()
    return save_torch_bundle({'autoencoder': m, 'diffraction_to_obj': m}, tmp_path_factory.mktemp('arch') / 'wts.h5')

@pytest.fixture(scope='module')
def eager(archive, tmp_path_factory):
    "Eager outputs of the archived generator on a batch it was not traced with, saved for the fresh processes."
    gen = pattern_generator(archive)
    X = torch.rand(7, 1, N, N, generator=torch.Generator().manual_seed(5)) * 3
    with torch.no_grad(): a, p = gen(X)
    path = tmp_path_factory.mktemp('eager') / 'eager.npz'
    np.savez(path, X=X.numpy(), amp=a.numpy(), phase=p.numpy())
    return path

# A fresh interpreter in which importing ptycho_torch_nb fails outright.
BLOCK = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'ptycho_torch_nb': raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""

def _fresh(code: str, cwd):
    out = subprocess.run([sys.executable, '-c', BLOCK + code], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])

def _rel(a, b): return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())

# How a user without this package loads each torch format (the ptycho_meta.json extra file filled in `extra`)
TORCH_LOADERS = {'torchscript': ("gen.pt", "torch.jit.load({path!r}, _extra_files=extra)"),
                 'pt2': ("gen.pt2", "torch.export.load({path!r}, extra_files=extra).module()")}

@pytest.mark.parametrize('fmt', list(TORCH_LOADERS))
def test_torch_formats_match_eager_in_a_process_without_the_package(archive, eager, tmp_path, fmt):
    "TorchScript and the torch.export program, loaded by torch alone, on the 7-pattern batch and on a batch of one."
    name, load = TORCH_LOADERS[fmt]
    res = E.export_generator(archive, tmp_path / name, format=fmt)
    assert res['format'] == fmt and res['N'] == N
    got = _fresh(f"""
import json, numpy as np, torch
extra = {{'ptycho_meta.json': ''}}
m = {load.format(path=str(tmp_path / name))}
d = np.load({str(eager)!r})
X = torch.from_numpy(d['X'])
with torch.no_grad(): a, p = m(X); a1, p1 = m(X[:1])
rel = lambda x, y: float(np.abs(x - y).max() / np.abs(y).max())
print(json.dumps(dict(amp=rel(a.numpy(), d['amp']), phase=rel(p.numpy(), d['phase']), one=rel(p1.numpy(), d['phase'][:1]),
                      meta=json.loads(extra['ptycho_meta.json']), imported='ptycho_torch_nb' in sys.modules)))
""", tmp_path)
    assert max(got['amp'], got['phase'], got['one']) <= 1e-5, got
    assert not got['imported'] and got['meta']['format'] == fmt and got['meta']['N'] == N and 'normalisation' in got['meta']

@needs_onnx
def test_onnx_matches_eager_in_a_process_without_the_package(archive, eager, tmp_path):
    E.export_generator(archive, tmp_path / 'gen.onnx', format='onnx')
    got = _fresh(f"""
import json, numpy as np, onnxruntime as ort
s = ort.InferenceSession({str(tmp_path / 'gen.onnx')!r}, providers=['CPUExecutionProvider'])
d = np.load({str(eager)!r})
a, p = s.run(None, {{'X': d['X']}})
meta = s.get_modelmeta().custom_metadata_map
rel = lambda x, y: float(np.abs(x - y).max() / np.abs(y).max())
print(json.dumps(dict(amp=rel(a, d['amp']), phase=rel(p, d['phase']), N=meta.get('N'), imported='ptycho_torch_nb' in sys.modules)))
""", tmp_path)
    assert got['amp'] <= 1e-5 and got['phase'] <= 1e-5, got
    assert not got['imported'] and got['N'] == str(N)

@pytest.mark.parametrize('fmt', ['torchscript', 'pt2', pytest.param('onnx', marks=needs_onnx)])
@pytest.mark.parametrize('kind', ['no_backprop', 'gridsize1_plain'])
def test_other_generators_export(tmp_path, fmt, kind):
    "The exported file, loaded back, gives the model's own patches (`generate_patches`, not the export's wrapper)."
    m = _model(backprop_input=False) if kind == 'no_backprop' else _model(gridsize_one_plain=True)
    path = E.export_generator(m, tmp_path / f'g.{fmt}', format=fmt)['path']
    X = torch.rand(5, 1, N, N, generator=torch.Generator().manual_seed(7)) * 3
    with torch.no_grad(): amp, phase, _ = m.eval().model.generate_patches(X)
    if fmt == 'onnx':
        import onnxruntime as ort
        a, p = ort.InferenceSession(str(path), providers=['CPUExecutionProvider']).run(None, {'X': X.numpy()})
    else:
        loaded = torch.jit.load(str(path)) if fmt == 'torchscript' else torch.export.load(str(path)).module()
        with torch.no_grad(): a, p = (t.numpy() for t in loaded(X))
    assert _rel(a, amp[:, 0].numpy()) <= 1e-5 and _rel(p, phase[:, 0].numpy()) <= 1e-5

def test_the_check_catches_a_wrong_export(archive, tmp_path, monkeypatch):
    "An exported file that differs from eager is refused and not left behind."
    real = E._run_exported
    monkeypatch.setattr(E, '_run_exported', lambda *a: tuple(x * 1.001 for x in real(*a)))
    with pytest.raises(ValueError, match='differs from the eager one'):
        E.export_generator(archive, tmp_path / 'bad.pt')
    assert not (tmp_path / 'bad.pt').exists() and not list(tmp_path.glob('.*tmp'))

def test_refusals(archive, tmp_path):
    (tmp_path / 'x.pt').write_bytes(b'old')
    with pytest.raises(FileExistsError, match='exists'): E.export_generator(archive, tmp_path / 'x.pt')
    assert (tmp_path / 'x.pt').read_bytes() == b'old'
    with pytest.raises(ValueError, match='not one of'): E.export_generator(archive, tmp_path / 'x.tfl', format='tflite')
    with pytest.raises(ValueError, match='export needs a pattern-wise'):   # the export's own need, not streaming's
        E.export_generator(single_scan_model(generator_mode='group', merge_weight='centre', backprop_input=False), tmp_path / 'g.pt')

def test_cli_export(archive, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, '-m', 'ptycho_torch_nb.cli', 'export', *map(str, a)],
                                    capture_output=True, text=True, timeout=300)
    out = run(archive, tmp_path / 'g.pt')
    assert out.returncode == 0 and (tmp_path / 'g.pt').is_file(), out.stderr
    again = run(archive, tmp_path / 'g.pt')
    assert again.returncode == 2 and 'exists' in again.stderr and len(again.stderr.strip().splitlines()) == 1
    pt2 = run(archive.parent, tmp_path / 'h.pt2', '--format', 'pt2')   # the folder works too, and pt2
    assert pt2.returncode == 0 and 'pt2' not in pt2.stderr, pt2.stderr   # no torch warning about the temporary file's name
    assert (tmp_path / 'h.pt2').is_file()
