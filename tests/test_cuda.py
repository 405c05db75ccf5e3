"""Checks that only a CUDA machine can run (skipped without one; `benchmarks/gpu_check.py` runs them on a lent GPU).

Each guards a way a GPU run used to fail or fall back to the CPU unseen: inference after `fit` (Lightning leaves the
model on the CPU), an archive loaded onto the GPU (its unsaved buffers), the smoothing's backward in deterministic mode,
export of a model on the GPU, a stream fed GPU tensors, and training through the workflow with its deterministic default.
"""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

from ptycho_torch_nb.simulation import simulated_scan

TINY = dict(n_filters_scale=1, batch_size=4)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    from ptycho_torch_nb import reconstruct as R
    out = tmp_path_factory.mktemp('cuda') / 'run'
    res = R.reconstruct_scan(simulated_scan(n=16, seed=3), nepochs=1, output_dir=out, progress=False, **TINY)   # 'auto': the GPU
    return out, res


def test_inference_after_fit_runs_on_the_gpu(trained):
    _, res = trained
    assert {p.device.type for p in res['model'].parameters()} == {'cuda'}
    assert np.isfinite(res['stitched_obj']).all()


def test_archive_loads_whole_onto_the_gpu(trained):
    from ptycho_torch_nb.persistence import load_torch_bundle
    out, _ = trained
    models, _ = load_torch_bundle(out / 'wts.h5.zip', map_location='cuda', restore_params=False)
    m = next(iter(models.values()))
    assert {t.device.type for t in [*m.parameters(), *m.buffers()]} == {'cuda'}
    X = torch.rand(2, 1, 64, 64, device='cuda')
    with torch.no_grad(): amp, phase = m.model.generate(X)
    assert amp.is_cuda and torch.isfinite(amp).all()


def test_smoothing_backward_in_deterministic_mode():
    from ptycho_torch_nb.physics import smooth_complex
    z = torch.randn(3, 16, 16, dtype=torch.complex64, device='cuda', requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try: smooth_complex(z, 0.8).abs().sum().backward()
    finally: torch.use_deterministic_algorithms(False)
    assert z.grad is not None and torch.isfinite(torch.view_as_real(z.grad)).all()


def test_export_of_a_gpu_model(trained, tmp_path):
    from ptycho_torch_nb.export import export_generator
    _, res = trained
    r = export_generator(res['model'], tmp_path / 'g.pt')
    assert r['max_rel_diff'] <= 1e-5 and {p.device.type for p in res['model'].parameters()} == {'cuda'}


def test_stream_takes_gpu_tensors(trained):
    from ptycho_torch_nb.streaming import StreamingReconstructor
    out, _ = trained
    s = StreamingReconstructor(out, device='cuda', compile=False)
    scan = simulated_scan(n=8, seed=4)
    a = torch.as_tensor(np.asarray(scan.diff3d, np.float32), device='cuda')
    p = s.patches(a)
    assert p.shape == (8, 64, 64) and np.isfinite(np.asarray(p)).all()


def test_workflow_training_with_its_deterministic_default(tmp_path):
    "The train CLI's path: `train_cdi_model_torch` under the execution config's default deterministic=True, then inference."
    from ptycho_torch_nb import workflow as W, training as T
    from ptycho_torch_nb.config import TrainingConfig, ModelConfig
    train, test = W.simulate_run1084(16, 8, seed=3)
    cfg = TrainingConfig(model=ModelConfig(N=64, gridsize=1, n_filters_scale=1), n_groups=16, nepochs=1, batch_size=4,
                         output_dir=tmp_path, backend='pytorch')
    ec = T.default_execution_config(accelerator='cuda', logger_backend=None, enable_checkpointing=False)
    assert ec.deterministic is True
    res = W.train_cdi_model_torch(train, None, cfg, ec, seed=0)
    amp, phase, rec = W.reassemble_cdi_image_torch(test, cfg, res['model_instance'], execution_config=ec)
    assert np.isfinite(amp).all() and next(res['model_instance'].parameters()).is_cuda
