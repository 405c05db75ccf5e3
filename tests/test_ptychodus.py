"""ptychodus 1.7.0 as the real client of ptycho_torch_nb.ptychodus (installed by the `[ptychodus]` extra).

One tiny model (64 simulated positions, N=64, n_filters_scale=1, 2 epochs) is trained once through our TrainableReconstructor and
shared by the tests below: in-process reconstruction, ptychodus' HDF5 product writer/reader, its training NPZ
export read by our loader, ptychodus' SubprocessReconstructor (a spawned child running our entry point), and a
full ptychodus ModelCore with our reconstructor enabled. HOME points at a temporary folder because ptychodus
reads token files from it.
"""
import pickle, sys
from pathlib import Path
import numpy as np
import pytest

try: import ptychodus  # noqa: F401  (not skipped when missing: these tests are part of the acceptance suite)
except ImportError as e: raise ImportError("tests/test_ptychodus.py needs the [ptychodus] extra: pip install -e '.[ptychodus]'") from e
import ptycho_torch_nb.ptychodus as ptn
from ptychodus.api.reconstruct import ReconstructInput, TrainableReconstructor

EPOCHS = 2
TINY = dict(n_filters_scale=1, accelerator='cpu')   # narrow network: seconds per epoch on a CPU


class _ListQueue(list):
    "Stands in for the child's multiprocessing queue when an entry point is called in-process."
    def put(self, item): self.append(item)


@pytest.fixture(scope='module')
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        h = tmp_path_factory.mktemp('home')
        mp.setenv('HOME', str(h))
        yield h


@pytest.fixture(scope='module')
def trained(home, tmp_path_factory):
    "A reconstructor trained in-process on ptychodus-exported data: (reconstructor, reconstruct_input, truth, dirs)."
    root = tmp_path_factory.mktemp('ptychodus')
    ri, truth = ptn.simulate_reconstruct_input(n_positions=64, nphotons=1e6, seed=3, probe_modes=2, n_bad_pixels=4)
    rec = ptn.PtychoPINNTorchReconstructor(settings=ptn.ReconstructorSettings(nepochs=EPOCHS, batch_size=16, **TINY))
    (root / 'in').mkdir()
    rec.export_training_data(root / 'in' / 'train_data.npz', ri)
    outputs = list(rec.train(root / 'in', root / 'out'))
    return rec, ri, truth, root, outputs


def test_training_outputs(trained):
    rec, ri, truth, root, outputs = trained
    assert isinstance(rec, TrainableReconstructor)
    assert rec.is_model_loaded() and (root / 'out' / ptn.ARCHIVE_NAME).is_file()
    last = outputs[-1]
    assert [l.epoch for l in last.training_loss] == list(range(EPOCHS))
    assert all(np.isfinite(l.value) for l in last.training_loss)
    assert last.progress == 1 == rec.get_progress_goal()   # one output, when done (ptychodus names batch products by it)
    assert rec.get_model_file_extension() == '.h5.zip' and '*.h5.zip' in rec.get_model_file_filter()
    assert rec.get_training_data_file_filter() == 'NumPy Zipped Archive (*.npz)'
    assert ptn.archive_history(root / 'out')['train_loss'] == [l.value for l in last.training_loss]


def test_exported_npz_loads_with_our_loader(trained):
    "ptychodus' save_ptychopinn_training_data (intensities, probe mode stack) -> RawDataTorch.from_file -> amplitudes."
    from ptycho_torch_nb.raw_data import RawDataTorch
    rec, ri, truth, root, _ = trained
    npz = np.load(root / 'in' / 'train_data.npz')
    assert npz['probeGuess'].ndim == 3 and npz['diff3d'].dtype == np.uint32       # what ptychodus writes
    raw = RawDataTorch.from_file(root / 'in' / 'train_data.npz')
    ours = ptn.arrays_from_reconstruct_input(ri)
    np.testing.assert_allclose(raw.xcoords, ours['xcoords'])
    np.testing.assert_allclose(raw.ycoords, ours['ycoords'])
    np.testing.assert_allclose(raw.diff3d, ours['diff3d'], rtol=1e-5, atol=1e-3)   # same amplitudes either way
    np.testing.assert_allclose(raw.probeGuess, ours['probeGuess'])                 # mode 0 of the stack
    assert raw.probeGuess.shape == (64, 64)


def _check_product(product, ri, losses):
    obj_in = ri.product.object_
    assert product.object_.get_array().shape == (1,) + obj_in.get_layer(0).shape
    assert np.iscomplexobj(product.object_.get_array())
    assert product.object_.get_pixel_geometry() == obj_in.get_pixel_geometry()
    assert product.object_.get_center() == obj_in.get_center()
    assert list(product.object_.layer_spacing_m) == []
    np.testing.assert_array_equal(product.probe_positions.get_indexes(), ri.product.probe_positions.get_indexes())
    np.testing.assert_allclose(product.probe_positions.get_coordinates_x_m(), ri.product.probe_positions.get_coordinates_x_m())
    np.testing.assert_allclose(product.probe_positions.get_coordinates_y_m(), ri.product.probe_positions.get_coordinates_y_m())
    np.testing.assert_allclose(product.probes.get_array(), ri.product.probes.get_array())
    assert product.probes.get_pixel_geometry() == ri.product.probes.get_pixel_geometry()
    assert product.metadata == ri.product.metadata
    assert [(l.epoch, l.value) for l in product.losses] == [(l.epoch, l.value) for l in losses]


def test_reconstruct_in_process_and_hdf5_roundtrip(trained, tmp_path):
    "Our product survives ptychodus' own HDF5 product writer and reader (plugin registry 'HDF5')."
    from ptychodus.api.plugins import PluginRegistry
    rec, ri, truth, root, outputs = trained
    out = list(rec.reconstruct(ri))
    assert len(out) == 1 and out[0].progress == rec.get_progress_goal()
    product = out[0].product
    _check_product(product, ri, outputs[-1].training_loss)
    registry = PluginRegistry.load_plugins()
    path = tmp_path / 'product.h5'
    registry.product_file_writers.get_strategy_by_name('HDF5').write(path, product)
    back = registry.product_file_readers.get_strategy_by_name('HDF5').read(path)
    _check_product(back, ri, outputs[-1].training_loss)
    np.testing.assert_array_equal(back.object_.get_array(), product.object_.get_array())
    assert back.object_.get_array().dtype == product.object_.get_array().dtype
    assert back.object_.get_geometry() == product.object_.get_geometry()
    # a saved model reopens and gives the same object
    rec.save_model(tmp_path / 'model.h5.zip')
    rec2 = ptn.PtychoPINNTorchReconstructor(settings=rec.settings)
    assert not rec2.is_model_loaded()
    rec2.load_model_from_file(tmp_path / 'model.h5.zip')
    np.testing.assert_allclose(list(rec2.reconstruct(ri))[0].product.object_.get_array(), product.object_.get_array(), atol=1e-5)


def test_errors_surface_clearly(trained, tmp_path):
    rec, ri, truth, root, _ = trained
    fresh = ptn.PtychoPINNTorchReconstructor()
    refusing = ptn.PtychoPINNTorchReconstructor(settings=ptn.ReconstructorSettings(pretrained='none'))   # no pretrained route
    with pytest.raises(RuntimeError, match="no model loaded.*'none'"): list(refusing.reconstruct(ri))
    named = ptn.PtychoPINNTorchReconstructor(settings=ptn.ReconstructorSettings(pretrained=str(tmp_path / 'nowhere')))
    with pytest.raises(FileNotFoundError, match='nowhere'): list(named.reconstruct(ri))
    with pytest.raises(RuntimeError, match='no model has been loaded or trained'): fresh.save_model(tmp_path / 'x.h5.zip')
    with pytest.raises(FileNotFoundError, match='model archive not found'): fresh.load_model_from_file(tmp_path / 'none.h5.zip')
    (tmp_path / 'bad.h5.zip').write_bytes(b'not a zip')
    with pytest.raises(ValueError, match='not a valid zip'): fresh.load_model_from_file(tmp_path / 'bad.h5.zip')
    with pytest.raises(FileNotFoundError, match='no training data'): list(fresh.train(tmp_path, tmp_path / 'o'))
    with pytest.raises(ValueError, match='trained on 64x64'): ptn.reconstruct_scan(_raw32(ri), root / 'out')


def test_reconstruct_scan_gates_the_config_it_builds(trained, monkeypatch):
    "The InferenceConfig built from an archive's parameters passes the one gate: neighbor_count=0 is refused before grouping."
    rec, ri, truth, root, _ = trained
    load = ptn.load_model
    monkeypatch.setattr(ptn, 'load_model', lambda p: (lambda m, params: (m, {**params, 'neighbor_count': 0}))(*load(p)))
    with pytest.raises(ValueError, match=r'InferenceConfig\.neighbor_count=0 is invalid: allowed a value > 0'):
        ptn.reconstruct_scan(ptn.raw_data_from_reconstruct_input(ri), root / 'out')


def _raw32(ri):
    from ptycho_torch_nb.raw_data import RawDataTorch
    a = ptn.arrays_from_reconstruct_input(ri)
    return RawDataTorch.from_coords_without_pc(a['xcoords'], a['ycoords'], a['diff3d'][:, :32, :32], a['probeGuess'][:32, :32])


def test_failed_retrain_keeps_the_loaded_model(trained, tmp_path, monkeypatch):
    "Train into a folder that holds a model: if training fails, that model is still there, whole and loadable."
    import shutil
    from ptycho_torch_nb import backend
    rec, ri, truth, root, _ = trained
    out = tmp_path / 'out'; shutil.copytree(root / 'out', out)
    before = (out / ptn.ARCHIVE_NAME).read_bytes()
    def boom(*a, **k): raise RuntimeError('CUDA out of memory (simulated)')
    monkeypatch.setattr(backend, 'run_cdi_example_with_backend', boom)
    with pytest.raises(RuntimeError, match='simulated'): ptn.train_model(root / 'in', out, ptn.ReconstructorSettings(nepochs=1, **TINY))
    assert (out / ptn.ARCHIVE_NAME).read_bytes() == before
    assert ptn.load_model(out)[0] is not None


def test_train_entry_point_and_payloads(trained, tmp_path):
    "run_train called as ptychodus' child would call it: tagged results on the queue; payloads pickle."
    rec, ri, truth, root, _ = trained
    payload = ptn.TrainPayload(root / 'in', tmp_path / 'out', ptn.ReconstructorSettings(nepochs=1, **TINY))
    queue = _ListQueue()
    ptn.run_train(pickle.loads(pickle.dumps(payload)), queue)
    assert [t for t, _ in queue] == ['train_output', 'model_saved']
    train_output = pickle.loads(queue[0][1])
    assert len(train_output.training_loss) == 1 and train_output.progress == 1
    assert Path(queue[1][1]) == tmp_path / 'out' / ptn.ARCHIVE_NAME and Path(queue[1][1]).is_file()
    rp = ptn.ReconstructPayload(root / 'out' / ptn.ARCHIVE_NAME, ri, rec.settings)
    queue = _ListQueue()
    ptn.run_reconstruct(pickle.loads(pickle.dumps(rp)), queue)
    assert [t for t, _ in queue] == ['output']
    assert pickle.loads(queue[0][1]).product.object_.get_array().shape[0] == 1


def test_subprocess_reconstructor(trained):
    """ptychodus' SubprocessReconstructor wired to our entry points: parent-side checks, and an error in the spawned
    child arriving as ptychodus' ChildError. (A successful spawned reconstruction, compared with the in-process one,
    is `test_batch_mode_main`, where ptychodus itself drives this same reconstructor.)"""
    from ptychodus.model.processing._subprocess_protocol import ChildError
    rec, ri, truth, root, outputs = trained
    sub = ptn.build_subprocess_reconstructor('Unsupervised', ptn.ReconstructorSettings(nepochs=EPOCHS, **TINY))
    assert isinstance(sub, TrainableReconstructor) and sub.name == 'Unsupervised' and sub.get_progress_goal() == 1
    assert not sub.is_model_loaded()
    payload = ptn._ReconstructPayloadBuilder(lambda: ptn.ReconstructorSettings(pretrained='none'))(ri, None)
    assert payload.model_path is None                              # no model: the child takes the pretrained route, or says why
    with pytest.raises(RuntimeError, match="no model loaded.*'none'"): ptn.run_reconstruct(payload, None)
    sub.load_model_from_file(root / 'missing.h5.zip')           # recorded only; the child finds it missing
    with pytest.raises(ChildError) as e: list(sub.reconstruct(ri))
    assert e.value.child_exception_type == 'FileNotFoundError' and 'missing.h5.zip' in e.value.child_traceback
    assert isinstance(e.value.child_exception, FileNotFoundError)
    sub.load_model_from_file(root / 'out' / ptn.ARCHIVE_NAME)
    sub.save_model(root / 'copy.h5.zip')                         # parent-side copy callback
    assert (root / 'copy.h5.zip').read_bytes() == (root / 'out' / ptn.ARCHIVE_NAME).read_bytes()


def _amplitude_ssim(a, b, mask):
    from skimage.metrics import structural_similarity
    rows, cols = np.where(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    a, b = np.abs(a[box]).astype(np.float64), np.abs(b[box]).astype(np.float64)
    return structural_similarity(a, b, data_range=float(b.max() - b.min()))


def test_ssim_parity_with_direct_workflow(trained):
    "Same data (ptychodus' exported NPZ), same weights: ptychodus-driven vs direct workflow, amplitude SSIM within 0.05."
    from ptycho_torch_nb.backend import load_inference_bundle_with_backend
    from ptycho_torch_nb.config import InferenceConfig, ModelConfig
    from ptycho_torch_nb.raw_data import RawDataTorch
    from ptycho_torch_nb.stitching import reassemble_position
    from ptycho_torch_nb.workflow import reassemble_cdi_image_torch
    rec, ri, truth, root, _ = trained
    pty = list(rec.reconstruct(ri))[0].product.object_
    cfg = InferenceConfig(model=ModelConfig(N=64, gridsize=1), model_path=root / 'out', test_data_file=root / 'in' / 'train_data.npz',
                          n_groups=64, subsample_seed=rec.settings.seed, backend='pytorch')
    model, params = load_inference_bundle_with_backend(root / 'out', cfg)
    raw = RawDataTorch.from_file(root / 'in' / 'train_data.npz')
    anchor = ptn.grid_anchor(np.column_stack([raw.xcoords, raw.ycoords]))   # the reconstructor's canvas anchor
    _, _, res = reassemble_cdi_image_torch(raw, cfg, model, M=20, anchor=anchor)
    _, w = reassemble_position(res['obj_tensor_full'], res['global_offsets'], M=20, return_weights=True, anchor=anchor)
    direct = ptn.object_from_stitched(res['stitched_obj'], w, res['global_offsets'], ri.product.object_, 20, anchor)
    coverage = ptn.object_from_stitched(np.ones_like(w, np.complex64) * (w > 0), w, res['global_offsets'],
                                        ptn.Object(np.zeros_like(ri.product.object_.get_layer(0)), ri.product.object_.get_pixel_geometry(),
                                                   ri.product.object_.get_center()), 20, anchor).get_layer(0).real
    mask = coverage > 0.999
    gt = truth.object_.get_layer(0)
    s_pty, s_direct = _amplitude_ssim(pty.get_layer(0), gt, mask), _amplitude_ssim(direct.get_layer(0), gt, mask)
    s_between = _amplitude_ssim(pty.get_layer(0), direct.get_layer(0), mask)
    print(f'amplitude SSIM vs truth: ptychodus-driven {s_pty:.4f}, direct workflow {s_direct:.4f}; between them {s_between:.4f}')
    assert abs(s_pty - s_direct) <= 0.05
    assert s_between >= 0.95


def test_enable_checks_version(monkeypatch):
    monkeypatch.setattr(ptn, 'ptychodus_version', lambda: '1.2.1')
    with pytest.raises(RuntimeError, match='ptychodus 1.2.1 is not supported'): ptn.enable(object())
    monkeypatch.setattr(ptn, 'ptychodus_version', lambda: '1.7.0')
    with pytest.raises(RuntimeError, match='does not have the structure'): ptn.enable(object())
    with pytest.raises(ValueError, match='slot='): ptn.enable(object(), slot='elsewhere')


def test_model_core_enable(home):
    "enable() on a real ptychodus ModelCore: algorithm keys, both slots, one entry per key, settings read from ptychodus."
    from ptychodus.model import ModelCore
    key = 'ptychopinn-torch-nb_unsupervised'
    with ModelCore() as core:
        processing = core.processing_core.processing_api
        assert key not in set(processing.available_reconstructors())
        assert ptn.enable(core) == [key]
        assert ptn.enable(core) == [key]                                   # enabling twice replaces, never duplicates
        assert ptn.enable(core, slot='ptychopinn-torch', subprocess=False) == ['ptychopinn-torch_unsupervised']
        keys = list(processing.available_reconstructors())
        assert keys.count(key) == 1 and keys.count('ptychopinn-torch_unsupervised') == 1
        table = core.processing_core.algorithm_parameter._reconstructor_map
        assert isinstance(table['ptychopinn-torch_unsupervised'], ptn.PtychoPINNTorchReconstructor)
        # with no fixed settings, epochs come from ptychodus' own PtychoPINN-Torch training settings, per call
        core.ptychopinn_torch_reconstructor_library.training_settings.epochs.set_value(3)
        assert table[key]._build_train_payload('in', 'out').settings.nepochs == 3
        assert processing.get_model_file_extension(algorithm=key) == '.h5.zip'
        assert processing.get_training_data_file_filter(algorithm=key) == 'NumPy Zipped Archive (*.npz)'


def test_batch_mode_main(trained, tmp_path, monkeypatch):
    """`python -m ptycho_torch_nb.ptychodus --batch reconstruct -i IN -o OUT` (run in-process through main()):
    install() enables us in ptychodus' ModelCore, settings.ini selects our algorithm, IN/model.h5.zip is loaded,
    ptychodus pairs patterns to positions and spawns our child, and writes the product with its HDF5 writer."""
    from ptychodus.api.assemble import AssembledDiffractionData
    from ptychodus.api.geometry import PixelGeometry
    from ptychodus.api.io import save_diffraction_data, save_product, load_product
    from ptychodus.model import core as core_module
    rec, ri, truth, root, outputs = trained
    monkeypatch.setattr(core_module.ModelCore, '__init__', core_module.ModelCore.__init__)   # undo install() afterwards
    monkeypatch.setattr(ptn, '_INSTALLED', False)
    inp, out = tmp_path / 'in', tmp_path / 'out'
    inp.mkdir()
    save_diffraction_data(inp / 'diffraction.h5', AssembledDiffractionData(
        ri.product.probe_positions.get_indexes().astype(int), ri.diffraction_patterns, PixelGeometry(75e-6, 75e-6), ri.bad_pixels))
    save_product(inp / 'product.h5', ri.product)
    (inp / 'settings.ini').write_text('[Processing]\nAlgorithm = ptychopinn-torch-nb_unsupervised\n')
    rec.save_model(inp / 'model.h5.zip')
    monkeypatch.setattr(sys, 'argv', ['ptychodus', '--batch', 'reconstruct', '-i', str(inp), '-o', str(out)])
    assert ptn.main() == 0
    written = sorted(out.glob('product*.h5'))
    assert [w.name for w in written] == ['product.000001.h5'], f'expected one product file in {out}, found {written}'   # as ptychodus' own slots
    product = load_product(written[0])
    expected = list(rec.reconstruct(ri))[0].product
    assert product.object_.get_geometry() == ri.product.object_.get_geometry()
    np.testing.assert_array_equal(product.probe_positions.get_indexes(), ri.product.probe_positions.get_indexes())
    np.testing.assert_allclose(product.object_.get_array(), expected.object_.get_array(), atol=1e-4)
    assert [(l.epoch, l.value) for l in product.losses] == [(l.epoch, l.value) for l in outputs[-1].training_loss]


def test_output_losses_are_this_models_only(trained, tmp_path):
    "An input product's losses (an earlier run's, maybe another algorithm's) never pass for this reconstruction's."
    from ptychodus.api.product import Product, LossValue
    from ptychodus.api.reconstruct import ReconstructInput
    rec, ri, truth, root, outputs = trained
    p = ri.product
    earlier = ReconstructInput(ri.diffraction_patterns, ri.bad_pixels,
                               Product(p.metadata, p.probe_positions, p.probes, p.object_, [LossValue(0, 9.0), LossValue(1, 8.0)]))
    assert ptn.output_product(earlier, p.object_).losses == []
    out = ptn.reconstruct_product(earlier, root / 'out', rec.settings)
    assert [l.value for l in out.losses] == [l.value for l in outputs[-1].training_loss]


def test_a_training_checkpoint_is_refused_by_name(tmp_path):
    "Lightning's .ckpt files sit beside the archive in a run folder: opening one says which file to open instead."
    (tmp_path / 'epoch=0-step=2.ckpt').write_bytes(b'PK')
    with pytest.raises(ValueError, match=r"Lightning training checkpoint.*wts\.h5\.zip"):
        ptn.PtychoPINNTorchReconstructor().load_model_from_file(tmp_path / 'epoch=0-step=2.ckpt')


def test_background_subtracted_and_fully_masked_input(caplog):
    "Negative intensities (background subtracted) are read as 0 and said so; a mask of every pixel is refused by name."
    ri, _ = ptn.simulate_reconstruct_input(n_positions=16, nphotons=1e6, seed=3)
    shifted = ReconstructInput(ri.diffraction_patterns - 3.0, ri.bad_pixels, ri.product)
    with caplog.at_level('WARNING'): a = ptn.arrays_from_reconstruct_input(shifted)
    assert a['diff3d'].min() == 0 and 'negative intensities (background subtracted?) read as 0' in caplog.text, caplog.text
    masked = ReconstructInput(ri.diffraction_patterns, np.ones(ri.diffraction_patterns.shape[1:], bool), ri.product)
    with pytest.raises(ValueError, match='bad_pixels marks every pixel bad'): ptn.arrays_from_reconstruct_input(masked)
