"""Issue 16, the default route: `ptycho-torch-reconstruct` with no route flag images a scan the shipped pretrained
network fits with that network and the solver; training flags ask for training; a scan it does not fit, or a damaged
shipped model, is said so. The ptychodus reconstructor with no model loaded takes the same route.
"""
import contextlib, io, json, shutil
import numpy as np
import pytest

from ptycho_torch_nb import cli
from ptycho_torch_nb.route import choose_route, shipped_model
from ptycho_torch_nb.simulation import simulated_scan


@pytest.fixture(scope='module')
def scan_files(tmp_path_factory):
    "Run1084 scans: one the shipped model fits (N=64), one it does not (N=128), one no model of the package can (N=32)."
    d = tmp_path_factory.mktemp('route')
    simulated_scan(n=24, seed=2).to_file(d / 'n64.npz')
    simulated_scan(n=16, N=128, seed=2).to_file(d / 'n128.npz')
    simulated_scan(n=16, N=32, seed=2).to_file(d / 'n32.npz')
    return d / 'n64.npz', d / 'n128.npz', d / 'n32.npz'


def run(*argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.reconstruct_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_the_default_route_is_the_pretrained_network_and_the_solver(scan_files, tmp_path):
    code, out, err = run(scan_files[0], '--output_dir', tmp_path / 'd', '--quiet')
    assert code == 0, err
    summary = json.loads((tmp_path / 'd' / 'reconstruct.json').read_text())
    assert summary['route'] == 'polish' and 'shipped pretrained model' in summary['route_reason'], summary
    assert summary['epochs'] == 200 and summary['pretrained'] == 'shipped'
    net = json.loads((tmp_path / 'd' / 'network' / 'reconstruct.json').read_text())
    assert net['route'] == 'zero-shot'
    assert not (tmp_path / 'd' / 'wts.h5.zip').exists()          # nothing trained
    # the solver improved on the network's image of this scan (live: both scored against the truth here)
    assert summary['metrics']['ssim_phase'] > net['metrics']['ssim_phase'] + 0.05, (summary['metrics'], net['metrics'])
    assert 'route pretrained' in out


@pytest.mark.parametrize('argv, needle', [
    (['--route', 'pretrained', '--time_budget', '5'], '--time_budget'),
    (['--route', 'train', '--pretrained', 'data/pretrained_N64'], 'route train'),
    (['--polish', '0', '--polish_probe'], '--polish EPOCHS'),
    (['--route', 'fastest'], 'fastest'),
])
def test_conflicting_routes_are_refused(scan_files, tmp_path, argv, needle):
    code, out, err = run(scan_files[0], '--output_dir', tmp_path / 'x', *argv)
    assert code == 2 and needle in err and err.count('\n') == 1, err
    assert not (tmp_path / 'x').exists()


def test_a_scan_the_shipped_model_does_not_fit(scan_files, tmp_path):
    code, out, err = run(scan_files[1], '--output_dir', tmp_path / 'x', '--route', 'pretrained')
    assert code == 2 and 'is for N=64; pretrain one for N=128' in err and err.count('\n') == 1, err
    from ptycho_torch_nb.raw_data import RawDataTorch
    route, model, why = choose_route(RawDataTorch.from_file(scan_files[1]))
    assert (route, model) == ('train', None) and 'training on the scan instead' in why


@pytest.mark.parametrize('argv', [[], ['--route', 'pretrained'], ['--route', 'train'], ['--time_budget', '5']])
def test_a_pattern_size_no_model_has_is_refused_saying_what_to_do(scan_files, tmp_path, argv):
    code, out, err = run(scan_files[2], '--output_dir', tmp_path / 'x', *argv)
    assert code == 2 and 'N=32' in err and 'pad or resample the patterns' in err and err.count('\n') == 1, err
    assert 'pretrain one' not in err and not (tmp_path / 'x').exists()


def test_no_shipped_model_or_a_damaged_one(scan_files, tmp_path, monkeypatch):
    from ptycho_torch_nb.raw_data import RawDataTorch
    scan = RawDataTorch.from_file(scan_files[0])
    monkeypatch.setenv('PTYCHO_TORCH_NB_DATA', str(tmp_path))                  # an installation without it
    assert shipped_model() is None
    route, _, why = choose_route(scan)
    assert route == 'train' and 'no shipped pretrained model' in why
    from ptycho_torch_nb.core import repo_root
    shutil.copytree(repo_root() / 'data' / 'pretrained_N64', tmp_path / 'pretrained_N64')
    archive = tmp_path / 'pretrained_N64' / 'wts.h5.zip'
    data = bytearray(archive.read_bytes()); data[len(data) // 2] ^= 0xFF; archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match='SHA-256'): choose_route(scan)       # repaired, not routed around


def test_ptychodus_with_no_model_loaded_takes_the_pretrained_route():
    pytest.importorskip('ptychodus')
    from ptycho_torch_nb import ptychodus as P
    ri, truth = P.simulate_reconstruct_input(n_positions=32, nphotons=1e6, seed=4)
    class Queue(list):
        put = list.append
    q = Queue()
    P.run_reconstruct(P.ReconstructPayload(None, ri, P.ReconstructorSettings(polish_epochs=5)), q)
    import pickle
    tag, blob = q[0]
    product = pickle.loads(blob).product
    assert tag == 'output' and product.object_.get_array().shape == (1,) + ri.product.object_.get_layer(0).shape
    assert np.isfinite(product.object_.get_array()).all()
    with pytest.raises(RuntimeError, match="no model loaded.*'none'"):
        list(P.PtychoPINNTorchReconstructor(settings=P.ReconstructorSettings(pretrained='none')).reconstruct(ri))
