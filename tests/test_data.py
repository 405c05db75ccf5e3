"""Data phase: every bad input of the data contract is refused with a message naming the file, key and problem;
grouping-cache hit/miss/invalidation/corruption; ptychodus NPZ conversion. (Notebook cells cover the happy paths.)"""
import logging, os
import numpy as np
import pytest

from ptycho_torch_nb.raw_data import RawDataTorch
from ptycho_torch_nb import cache as cache_mod

M, N = 12, 8


def _arrays(**kw):
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(4) * 3.0 + 10, np.arange(3) * 3.0 + 10)
    base = dict(xcoords=gx.ravel(), ycoords=gy.ravel(), diff3d=rng.random((M, N, N)).astype(np.float32),
                probeGuess=np.ones((N, N), np.complex64))
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def _write(tmp_path, name='scan.npz', **kw):
    p = tmp_path / name
    np.savez(p, **_arrays(**kw))
    return p


def _fails(p, *fragments, exc=ValueError):
    with pytest.raises(exc) as e:
        RawDataTorch.from_file(p)
    msg = str(e.value)
    for f in (p.name,) + fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


@pytest.mark.parametrize('key', ['xcoords', 'ycoords', 'probeGuess'])
def test_missing_required_key(tmp_path, key):
    _fails(_write(tmp_path, **{key: None}), f"missing required key '{key}'")


def test_missing_diffraction(tmp_path):
    _fails(_write(tmp_path, diff3d=None), "missing required key 'diff3d' (or 'diffraction')")


@pytest.mark.parametrize('key,value,frag', [
    ('ycoords', np.arange(5.0), "'ycoords' has length 5"),
    ('xcoords_start', np.arange(5.0), "'xcoords_start' has shape (5,)"),
    ('scan_index', np.zeros(3, int), "'scan_index' has shape (3,)"),
    ('diff3d', np.ones((7, N, N), np.float32), "7 patterns but 'xcoords' has 12 positions"),
])
def test_mismatched_lengths(tmp_path, key, value, frag):
    _fails(_write(tmp_path, **{key: value}), f"key '{key}'" if key != 'ycoords' else "'ycoords'", frag)


def test_non_square_patterns(tmp_path):
    _fails(_write(tmp_path, diff3d=np.ones((M, N, N + 2), np.float32)), "key 'diff3d'", "not square")


@pytest.mark.parametrize('shape', [(M, N * N), (M, 2, N, N, 3)])
def test_non_3d_patterns(tmp_path, shape):
    _fails(_write(tmp_path, diff3d=np.ones(shape, np.float32)), "key 'diff3d'", "expected 3-D")


def test_probe_size_mismatch(tmp_path):
    _fails(_write(tmp_path, probeGuess=np.ones((N * 2, N * 2), np.complex64)), "key 'probeGuess'", "8x8")


def test_probe_not_square(tmp_path):
    _fails(_write(tmp_path, probeGuess=np.ones((N, N + 1), np.complex64)), "key 'probeGuess'", "expected (N, N)")


@pytest.mark.parametrize('key', ['diff3d', 'xcoords', 'ycoords', 'probeGuess', 'objectGuess', 'xcoords_start'])
@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_nan_inf_anywhere(tmp_path, key, bad):
    a = _arrays(objectGuess=np.ones((30, 30), np.complex64), xcoords_start=np.arange(M, dtype=float))
    arr = a[key].copy()
    arr.flat[1] = bad
    _fails(_write(tmp_path, **{**a, key: arr}), f"key '{key}'", "NaN/Inf")


def test_negative_amplitudes(tmp_path):
    d = _arrays()['diff3d'].copy(); d[2, 3, 4] = -0.5
    _fails(_write(tmp_path, diff3d=d), "key 'diff3d'", "negative")


def test_non_numeric_diffraction(tmp_path):
    _fails(_write(tmp_path, diff3d=np.full((M, N, N), 'x')), "key 'diff3d'", "non-numeric dtype")


def test_complex_diffraction(tmp_path):
    _fails(_write(tmp_path, diff3d=np.ones((M, N, N), np.complex64)), "key 'diff3d'", "is complex")


def test_boolean_coordinates(tmp_path):
    _fails(_write(tmp_path, xcoords=np.ones(M, bool)), "key 'xcoords'", "non-numeric")


def test_fewer_positions_than_a_group(tmp_path):
    raw = RawDataTorch.from_file(_write(tmp_path))
    with pytest.raises(ValueError) as e:
        raw.generate_grouped_data(N, K=20, nsamples=2, seed=0, gridsize=4, use_cache=False)
    assert 'scan.npz' in str(e.value) and '12 positions but a group needs C=16' in str(e.value)


def test_oversampling_guards(tmp_path):
    raw = RawDataTorch.from_file(_write(tmp_path))
    with pytest.raises(ValueError, match='OVERSAMPLING-001'):
        raw.generate_grouped_data(N, K=4, nsamples=50, seed=0, gridsize=2, use_cache=False)
    with pytest.raises(ValueError, match='neighbor_pool_size >= C'):
        raw.generate_grouped_data(N, K=4, nsamples=50, seed=0, gridsize=2, enable_oversampling=True,
                                  neighbor_pool_size=3, use_cache=False)
    g = raw.generate_grouped_data(N, K=6, nsamples=50, seed=0, gridsize=2, enable_oversampling=True, use_cache=False)
    assert g['nn_indices'].shape == (50, 4)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.npz'):
        RawDataTorch.from_file(tmp_path / 'nope.npz')


@pytest.mark.parametrize('corrupt', ['truncated', 'garbage', 'empty', 'npy', 'bad_member'])
def test_corrupt_file(tmp_path, corrupt):
    good = _write(tmp_path, 'good.npz')
    p = tmp_path / 'bad.npz'
    if corrupt == 'truncated': p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif corrupt == 'garbage': p.write_bytes(os.urandom(4000))
    elif corrupt == 'empty': p.write_bytes(b'')
    elif corrupt == 'npy':
        with open(p, 'wb') as f: np.save(f, np.ones(3))
    else:  # valid zip directory, damaged member bytes
        b = bytearray(good.read_bytes()); b[200:260] = b'\x00' * 60; p.write_bytes(bytes(b))
    with pytest.raises(ValueError) as e:
        RawDataTorch.from_file(p)
    msg = str(e.value)
    assert 'bad.npz' in msg
    expected = {'truncated': 'cannot read the NPZ archive', 'garbage': 'is not an NPZ archive', 'empty': 'is empty (0 bytes)',
                'npy': 'single array', 'bad_member': 'cannot read the NPZ archive'}[corrupt]
    assert expected in msg or (corrupt == 'bad_member' and "key '" in msg), msg


def test_variants_accepted(tmp_path):
    a = _arrays()
    np.savez(tmp_path / 'v.npz', xcoords=a['xcoords'], ycoords=a['ycoords'],
             diffraction=np.moveaxis(a['diff3d'], 0, 2)[..., None][..., 0], probeGuess=a['probeGuess'])
    r = RawDataTorch.from_file(tmp_path / 'v.npz')
    np.testing.assert_array_equal(r.diff3d, a['diff3d'])
    np.testing.assert_array_equal(r.xcoords_start, a['xcoords'])
    np.testing.assert_array_equal(r.scan_index, np.zeros(M, np.int64))
    np.savez(tmp_path / 'u.npz', **{**a, 'diff3d': (a['diff3d'] * 100).astype(np.uint16)})
    with pytest.raises(ValueError, match=r"u\.npz: key 'diff3d' looks like intensities.*uint16"):  # counts? say so
        RawDataTorch.from_file(tmp_path / 'u.npz')
    assert RawDataTorch.from_file(tmp_path / 'u.npz', diffraction_is_intensity=False).diff3d.dtype == np.uint16


def test_ptychodus_export_converted_once(tmp_path, caplog):
    a = _arrays()
    intensity = (a['diff3d'] ** 2 * 400).astype(np.float32)
    np.savez(tmp_path / 'p.npz', xcoords=a['xcoords'], ycoords=a['ycoords'], xcoords_start=a['xcoords'],
             ycoords_start=a['ycoords'], diff3d=intensity, bad_pixels=np.zeros((N, N), bool),
             probeGuess=np.stack([a['probeGuess'], 2 * a['probeGuess']]), objectGuess=np.ones((40, 40), np.complex64),
             scan_index=np.zeros(M, int))
    with caplog.at_level(logging.WARNING):
        r = RawDataTorch.from_file(tmp_path / 'p.npz')
    np.testing.assert_allclose(r.diff3d, a['diff3d'] * 20, rtol=1e-5)
    np.testing.assert_array_equal(r.probeGuess, a['probeGuess'])
    text = caplog.text
    assert 'p.npz' in text and 'sqrt(intensity)' in text and 'mode 0' in text
    # the explicit override: treat as amplitude
    r2 = RawDataTorch.from_file(tmp_path / 'p.npz', diffraction_is_intensity=False)
    np.testing.assert_array_equal(r2.diff3d, intensity)


def test_pickled_metadata_is_skipped_not_loaded(tmp_path, caplog):
    a = _arrays()
    np.savez(tmp_path / 'm.npz', **a, _metadata=np.array({'nphotons': 1e6}, dtype=object))
    with caplog.at_level(logging.WARNING):
        r = RawDataTorch.from_file(tmp_path / 'm.npz')
    assert r.metadata == {} and 'pickle' in caplog.text


def test_to_file_round_trip_and_atomic(tmp_path):
    raw = RawDataTorch(**_arrays(), objectGuess=np.ones((30, 30), np.complex64), metadata={'nphotons': 1e6})
    p = raw.to_file(tmp_path / 'out.npz')
    back = RawDataTorch.from_file(p)
    np.testing.assert_array_equal(back.diff3d, raw.diff3d)
    assert back.metadata == {'nphotons': 1e6}
    assert sorted(x.name for x in tmp_path.iterdir()) == ['out.npz']


# ----------------------------------------------------------------- grouping cache

def _scan_file(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(10) * 4.0 + 20, np.arange(10) * 4.0 + 20)
    p = tmp_path / 'scan.npz'
    RawDataTorch(gx.ravel() + rng.uniform(-1, 1, 100), gy.ravel(), diff3d=rng.random((100, 16, 16)).astype(np.float32),
                 probeGuess=np.ones((16, 16), np.complex64), objectGuess=rng.random((80, 80)).astype(np.complex64)).to_file(p, overwrite=True)
    return p


KW = dict(N=16, K=6, nsamples=30, seed=1, gridsize=2)


def _stats():
    return dict(cache_mod.CACHE_STATS)


def test_cache_hit_and_miss(tmp_path):
    raw = RawDataTorch.from_file(_scan_file(tmp_path))
    s = _stats()
    a = raw.generate_grouped_data(**KW, cache_dir=tmp_path / 'c')
    b = raw.generate_grouped_data(**KW, cache_dir=tmp_path / 'c')
    assert cache_mod.CACHE_STATS['miss'] - s['miss'] == 1 and cache_mod.CACHE_STATS['hit'] - s['hit'] == 1
    for k in ('X_full', 'diffraction', 'Y', 'nn_indices', 'coords_relative', 'coords_start_offsets'):
        np.testing.assert_array_equal(np.asarray(b[k]), a[k])
        assert b[k].dtype == a[k].dtype and b[k].shape == a[k].shape
    assert b['objectGuess'] is raw.objectGuess


def test_cache_invalidation_on_parameter_and_data(tmp_path):
    p = _scan_file(tmp_path)
    raw = RawDataTorch.from_file(p)
    raw.generate_grouped_data(**KW, cache_dir=tmp_path / 'c')
    s = _stats()
    for change in (dict(K=7), dict(nsamples=31), dict(seed=2), dict(N=16, gridsize=1), dict(reflect_ground_truth=True)):
        raw.generate_grouped_data(**{**KW, **change}, cache_dir=tmp_path / 'c')
    assert cache_mod.CACHE_STATS['miss'] - s['miss'] == 5 and cache_mod.CACHE_STATS['hit'] - s['hit'] == 0
    before = raw.generate_grouped_data(**KW, cache_dir=tmp_path / 'c')          # hit
    _scan_file(tmp_path, seed=9)                                                 # same path, new content
    raw2 = RawDataTorch.from_file(p)
    s = _stats()
    after = raw2.generate_grouped_data(**KW, cache_dir=tmp_path / 'c')
    assert cache_mod.CACHE_STATS['miss'] - s['miss'] == 1
    assert not np.array_equal(np.asarray(before['X_full']), after['X_full'])


@pytest.mark.parametrize('damage', ['flip_byte', 'truncate', 'delete_array', 'garbage_manifest', 'delete_manifest'])
def test_cache_corrupted_entry_detected_and_rebuilt(tmp_path, damage):
    raw = RawDataTorch.from_file(_scan_file(tmp_path))
    ref = raw.generate_grouped_data(**KW, cache_dir=tmp_path / 'c')
    (entry,) = [p for p in (tmp_path / 'c').iterdir() if p.is_dir()]
    f = entry / 'X_full.npy'
    if damage == 'flip_byte':
        b = bytearray(f.read_bytes()); b[len(b) // 2] ^= 0x55; f.write_bytes(bytes(b))
    elif damage == 'truncate': f.write_bytes(f.read_bytes()[:100])
    elif damage == 'delete_array': f.unlink()
    elif damage == 'garbage_manifest': (entry / 'manifest.json').write_text('{not json')
    else: (entry / 'manifest.json').unlink()
    out = raw.generate_grouped_data(**KW, cache_dir=tmp_path / 'c')
    np.testing.assert_array_equal(np.asarray(out['X_full']), ref['X_full'])
    s = _stats()
    again = raw.generate_grouped_data(**KW, cache_dir=tmp_path / 'c')                # repaired entry is a hit
    assert cache_mod.CACHE_STATS['hit'] - s['hit'] == 1
    np.testing.assert_array_equal(np.asarray(again['X_full']), ref['X_full'])


def test_cache_opt_out_and_unseeded(tmp_path, monkeypatch):
    raw = RawDataTorch.from_file(_scan_file(tmp_path))
    raw.generate_grouped_data(**KW, cache_dir=tmp_path / 'a', use_cache=False)
    raw.generate_grouped_data(**{**KW, 'seed': None}, cache_dir=tmp_path / 'b')
    monkeypatch.setenv(cache_mod.ENV_NO_CACHE, '1')
    raw.generate_grouped_data(**KW, cache_dir=tmp_path / 'd')
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists() and not (tmp_path / 'd').exists()
    monkeypatch.delenv(cache_mod.ENV_NO_CACHE)
    monkeypatch.setenv(cache_mod.ENV_CACHE_DIR, str(tmp_path / 'env'))
    raw.generate_grouped_data(**KW)
    assert len(list((tmp_path / 'env').iterdir())) == 1


def test_cache_crash_midwrite_leaves_no_entry(tmp_path, monkeypatch):
    raw = RawDataTorch.from_file(_scan_file(tmp_path))
    real_save = np.save
    calls = {'n': 0}
    def boom(*a, **k):
        calls['n'] += 1
        if calls['n'] == 2: raise OSError('disk full')
        return real_save(*a, **k)
    monkeypatch.setattr(cache_mod.np, 'save', boom)
    out = raw.generate_grouped_data(**KW, cache_dir=tmp_path / 'c')                 # still returns the data
    assert out['X_full'].shape == (30, 16, 16, 4)
    assert [p.name for p in (tmp_path / 'c').iterdir()] == []                       # no half entry, no temp left
