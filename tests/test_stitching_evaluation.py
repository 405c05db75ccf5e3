"""Checks of `ptycho_torch_nb.stitching` and `ptycho_torch_nb.evaluation` that do not belong in the notebooks:
argument validation (errors name the argument and its shape), import hygiene, headless plotting, and the
deliberate deviations from the reference."""
import subprocess, sys
import numpy as np
import pytest
import torch

from ptycho_torch_nb.stitching import reassemble_position, stitch_geometry, object_region, amplitude_phase
from ptycho_torch_nb import evaluation as ev


def _patches(n=6, N=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, N, N)) + 1j * rng.normal(size=(n, N, N))).astype(np.complex64)


# ---------------------------------------------------------------- stitching: validation
@pytest.mark.parametrize('shape', [(6, 16, 15), (6, 16), (2, 3, 16, 15), (6, 16, 16, 2)])
def test_bad_patch_shapes_name_argument_and_shape(shape):
    with pytest.raises(ValueError, match=rf"obj_patches has shape \({shape[0]}, "):
        reassemble_position(np.zeros(shape, np.complex64), np.zeros((6, 2)), M=8)


@pytest.mark.parametrize('shape', [(6, 3), (6,), (6, 1, 3, 1), (6, 2, 1, 1)])
def test_bad_position_shapes_name_argument_and_shape(shape):
    with pytest.raises(ValueError, match=r"global_offsets has shape"):
        reassemble_position(_patches(), np.zeros(shape), M=8)


def test_position_count_mismatch():
    with pytest.raises(ValueError, match=r"global_offsets gives 5 positions for 6 patches"):
        reassemble_position(_patches(), np.zeros((5, 2)), M=8)


def test_group_offsets_without_coords_relative_hint():
    p = _patches(8).reshape(2, 4, 16, 16)
    with pytest.raises(ValueError, match='pass coords_relative'):
        reassemble_position(p, np.zeros((2, 1, 1, 2)), M=8)


def test_coords_relative_shape_checked():
    p = _patches(8).reshape(2, 4, 16, 16)
    with pytest.raises(ValueError, match=r"coords_relative has shape \(2, 4, 2\)"):
        reassemble_position(p, np.zeros((2, 1, 1, 2)), coords_relative=np.zeros((2, 4, 2)), M=8)
    with pytest.raises(ValueError, match=r"global_offsets has shape \(3, 1, 1, 2\)"):
        reassemble_position(p, np.zeros((3, 1, 1, 2)), coords_relative=np.zeros((2, 4, 1, 2)), M=8)


@pytest.mark.parametrize('M,msg', [(7, 'M=7'), (0, 'M=0'), (18, 'M=18 is larger than the patch size N=16')])
def test_bad_M(M, msg):
    with pytest.raises(ValueError, match=msg):
        reassemble_position(_patches(), np.zeros((6, 2)), M=M)


def test_bad_chunk_size_empty_and_nan():
    with pytest.raises(ValueError, match='chunk_size=0'):
        reassemble_position(_patches(), np.zeros((6, 2)), M=8, chunk_size=0)
    with pytest.raises(ValueError, match='empty'):
        reassemble_position(np.zeros((0, 16, 16), np.complex64), np.zeros((0, 2)), M=8)
    pos = np.zeros((6, 2)); pos[2, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        reassemble_position(_patches(), pos, M=8)


def test_odd_M_is_rejected_not_silently_shrunk():
    """Deviation: the reference crops rows [N//2 - M//2, N//2 + M//2), i.e. M-1 pixels for odd M, while sizing the
    canvas from M; we refuse odd M instead of returning a canvas one pixel off its documented size."""
    with pytest.raises(ValueError, match='even'):
        stitch_geometry(np.zeros((2, 2)), M=9)


# ---------------------------------------------------------------- stitching: behaviour
def test_single_patch_at_integer_position_is_its_crop():
    p = _patches(1, 16)
    img, w = reassemble_position(p, np.array([[5.0, -3.0]]), M=8, return_weights=True)
    assert img.shape == (8, 8) and w.shape == (8, 8)          # pad 0: canvas = M
    np.testing.assert_allclose(img, p[0, 4:12, 4:12], atol=1e-6)
    np.testing.assert_allclose(w, 1.0, atol=1e-6)


def test_torch_in_torch_out_and_layouts_agree():
    p = _patches(6)
    pos = np.random.default_rng(1).uniform(0, 9, (6, 2))
    ref = reassemble_position(p, pos, M=8)
    t = reassemble_position(torch.from_numpy(p), torch.from_numpy(pos), M=8)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.complex64
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-6)
    tf_layout = reassemble_position(p[..., None], pos.reshape(6, 1, 2, 1), M=8)      # reference layout
    np.testing.assert_allclose(tf_layout, ref, atol=1e-6)
    per_pattern = reassemble_position(p.reshape(3, 2, 16, 16), pos.reshape(3, 2, 1, 2), M=8)
    np.testing.assert_allclose(per_pattern, ref, atol=1e-6)


def test_real_patches_are_promoted_and_amplitude_phase_helper():
    img = reassemble_position(np.ones((3, 8, 8), np.float32), np.array([[0., 0.], [1., 0.], [0., 1.]]), M=4)
    assert img.dtype == np.complex64
    a, ph = amplitude_phase(img)
    assert a.dtype == np.float32 and ph.dtype == np.float32
    assert np.allclose(ph, 0)


def test_object_region_fills_outside_and_rejects_bad_shape():
    geo = stitch_geometry(np.array([[2.0, 2.0], [6.0, 2.0]]), M=4)
    obj = np.arange(100, dtype=np.float32).reshape(10, 10)
    reg = object_region(obj, geo, fill=-1)
    assert reg.shape == (geo.size, geo.size)
    r, c = geo.object_to_canvas(4.0, 2.0)                    # mean position -> canvas centre
    assert (r, c) == (geo.size / 2, geo.size / 2)
    assert reg[int(r), int(c)] == obj[2, 4]
    assert (reg == -1).any()                                  # part of the canvas lies outside the object
    with pytest.raises(ValueError, match=r"obj has shape \(2, 10, 10\)"):
        object_region(np.zeros((2, 10, 10)), geo)


def test_many_patches_chunk_invariant():
    "3000 patches stitched in chunks of 257 equal one pass (the chunking that bounds memory changes no value)."
    rng = np.random.default_rng(2)
    n = 3000
    p = torch.randn(n, 24, 24, dtype=torch.complex64)
    pos = torch.from_numpy(rng.uniform(0, 80, (n, 2)))
    a = reassemble_position(p, pos, M=20, chunk_size=257)
    b = reassemble_position(p, pos, M=20, chunk_size=100_000)
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- evaluation: validation
def test_eval_shape_errors_name_argument():
    gt = np.ones((32, 32), np.complex64)
    with pytest.raises(ValueError, match=r"stitched has shape \(31, 32\) but ground_truth has shape \(32, 32\)"):
        ev.eval_reconstruction(gt[:-1], gt)
    with pytest.raises(ValueError, match=r"ground_truth has shape \(2, 32, 32\)"):
        ev.eval_reconstruction(gt, np.ones((2, 32, 32)))
    with pytest.raises(ValueError, match='too small for SSIM'):
        ev.eval_reconstruction(gt[:9, :9], gt[:9, :9])
    with pytest.raises(ValueError, match='offset=3'):
        ev.eval_reconstruction(gt, gt, offset=3)
    bad = gt.copy(); bad[3, 3] = np.nan
    with pytest.raises(ValueError, match=r'stitched holds 1 non-finite value\(s\) of 1024, first at index \(3, 3\)'):
        ev.eval_reconstruction(bad, gt)
    with pytest.raises(ValueError, match='ground_truth holds 1 non-finite'): ev.eval_reconstruction(gt, bad)
    with pytest.raises(ValueError, match='ground_truth is zero over the scored region'): ev.eval_reconstruction(gt, 0 * gt)


def test_scores_refuse_what_would_score_nonsense():
    "A NaN pixel made every score NaN; a zero truth scored as perfect (the amplitude scale went to 0); a truth that does not hold the positions scored zeros."
    rng = np.random.default_rng(0)
    truth = (1 + rng.random((40, 40))).astype(np.complex64)
    bad = truth.copy(); bad[5, 6] = np.nan
    with pytest.raises(ValueError, match=r'align_and_score: recon holds 1 non-finite value\(s\)'): ev.align_and_score(bad, truth)
    with pytest.raises(ValueError, match='align_and_score: truth holds 1 non-finite'): ev.align_and_score(truth, bad)
    with pytest.raises(ValueError, match='align_and_score: truth is zero over the scored region'): ev.align_and_score(truth, 0 * truth)
    with pytest.raises(ValueError, match='align_and_score: recon is zero'): ev.align_and_score(0 * truth, truth)
    assert ev.align_and_score(truth, truth)['ssim_amp'] > 0.999
    pos = np.array([[20.0, 20.0], [24.0, 20.0], [520.0, 20.0]])   # the last far outside the 40 x 40 truth
    with pytest.raises(ValueError, match='does not hold the scan: 1 of 3 positions lie outside it'):
        ev.evaluate_reconstruction(np.ones((100, 100), np.complex64), pos, truth, M=20)


def test_eval_accepts_torch_and_reference_layouts():
    rng = np.random.default_rng(3)
    gt = (1 + 0.3 * rng.random((40, 40))) * np.exp(1j * rng.random((40, 40)))
    pred = gt * (1 + 0.05 * rng.normal(size=gt.shape))
    a = ev.eval_reconstruction(pred, gt)
    b = ev.eval_reconstruction(torch.from_numpy(pred.astype(np.complex64))[None, ..., None],
                               gt.astype(np.complex64)[..., None])
    for k in ('mae', 'ssim', 'frc50', 'psnr', 'psnr_normalized'):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)


def test_align_and_score_errors():
    t = np.ones((20, 20), complex)
    with pytest.raises(ValueError, match=r"recon has shape \(20, 19\)"):
        ev.align_and_score(t[:, :-1], t)
    with pytest.raises(ValueError, match=r"mask has shape \(5, 5\)"):
        ev.align_and_score(t, t, mask=np.ones((5, 5), bool))
    m = np.zeros((20, 20), bool); m[2:6, 2:6] = True
    with pytest.raises(ValueError, match='4 x 4 box'):
        ev.align_and_score(t, t, mask=m)
    with pytest.raises(ValueError, match="on='complex'"):
        ev.find_shift(t, t, on='complex')


def test_registration_window_beats_plain_correlation():
    """Deviation from `ptycho.image.registration.find_translation_offset` (plain phase correlation of the
    magnitudes): we remove the mean and apply a Tukey window first. On a crop of the bundled object the
    windowed estimate is closer to the true shift."""
    from skimage.registration import phase_cross_correlation
    from ptycho_torch_nb.core import data_path
    obj = np.load(data_path())['objectGuess'].astype(np.complex64)
    truth = obj[60:160, 60:160]
    true_shift = np.array([1.3, -2.6])
    moved = ev.shift_image(obj, -true_shift)[60:160, 60:160]
    ours = np.array(ev.find_shift(moved, truth, upsample_factor=20))
    plain = phase_cross_correlation(np.abs(truth), np.abs(moved), upsample_factor=20)[0]
    assert np.abs(ours - true_shift).max() <= 0.11
    assert np.abs(ours - true_shift).max() <= np.abs(plain - true_shift).max()


# ---------------------------------------------------------------- import hygiene and headless plots
def test_modules_import_cheaply():
    code = ("import sys, ptycho_torch_nb.evaluation, ptycho_torch_nb.stitching;"
            "bad = [m for m in ('lightning', 'matplotlib', 'pytorch_lightning') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_plots_write_pngs_headless(tmp_path):
    code = f"""
import os, sys, numpy as np
os.environ.pop('DISPLAY', None); os.environ['MPLBACKEND'] = 'Agg'
from ptycho_torch_nb.evaluation import plot_comparison, plot_loss_curves
rng = np.random.default_rng(0)
a = rng.random((30, 30)) * np.exp(1j * rng.random((30, 30)))
plot_comparison(a, a * 0.9, metrics={{'ssim': (0.9, 0.8), 'mae_amp': 0.1, 'frc': (np.ones(3), np.ones(3))}},
                path=r'{tmp_path}/cmp.png')
plot_comparison(a, path=r'{tmp_path}/recon_only.png')
plot_loss_curves({{'train_loss': [3, 2, 1], 'val_loss': [3.5, 2.5, 1.5], 'lr': [1e-3] * 3}}, r'{tmp_path}/loss.png')
assert 'matplotlib.pyplot' not in sys.modules
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ('cmp.png', 'recon_only.png', 'loss.png'):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cmp.png', 'loss.png', 'recon_only.png']  # no temp left


def test_loss_history_formats_and_errors(tmp_path):
    fig = ev.plot_loss_curves([{'epoch': 1, 'train_loss': 2.0}, {'epoch': 2, 'train_loss': 1.0, 'val_loss': 1.2}])
    assert len(fig.axes[0].lines) == 2
    with pytest.raises(ValueError, match='history has type int'):
        ev.plot_loss_curves(3)
    with pytest.raises(ValueError, match='no numeric series'):
        ev.plot_loss_curves({'train_loss': [None, None]})
