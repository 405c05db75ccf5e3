"""Issue 17: the lazy HDF5 reader (`hdf5_data`): every error path, counts -> amplitudes, mask, crop, position units,
chunked reads that never touch the whole dataset, and `RawDataTorch.from_hdf5` agreeing with the NPZ path."""
import numpy as np
import pytest
import h5py

from ptycho_torch_nb.hdf5_data import (HDF5Scan, iter_hdf5_chunks, counts_to_amplitude, positions_to_pixels,
                                       read_positions_csv, object_pixel_size)
from ptycho_torch_nb.raw_data import RawDataTorch

XY = ('entry/sample/x', 'entry/sample/y')

def write_scan(path, M=12, H=40, dtype=np.uint32, seed=0, with_mask=True):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(50, size=(M, H, H)).astype(dtype)
    with h5py.File(path, 'w') as f:
        f.create_dataset('entry/data/data', data=counts, chunks=(1, H, H))
        f['entry/sample/x'] = rng.uniform(0, 1e-6, M)
        f['entry/sample/y'] = rng.uniform(0, 1e-6, M)
        f['entry/sample/xy'] = np.column_stack([f['entry/sample/x'][()], f['entry/sample/y'][()]])
        if with_mask:
            m = np.zeros((H, H), np.uint8); m[10, 12] = 1
            f['entry/instrument/detector/pixel_mask'] = m
        f['entry/probe'] = np.ones((32, 32), np.complex64)
    return counts

@pytest.fixture
def scan_file(tmp_path):
    p = tmp_path / 'scan.h5'
    return p, write_scan(p)

# ---- error paths -------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='HDF5 file not found'):
        HDF5Scan(tmp_path / 'nope.h5', positions=XY)

def test_not_hdf5(tmp_path):
    p = tmp_path / 'fake.h5'; p.write_text('not hdf5')
    with pytest.raises(ValueError, match='not an HDF5 file'):
        HDF5Scan(p, positions=XY)

def test_missing_diffraction_dataset_lists_what_is_there(scan_file):
    p, _ = scan_file
    with pytest.raises(ValueError, match=r"diffraction dataset 'entry/data/frames' not found; datasets present: \[.*entry/data/data"):
        HDF5Scan(p, 'entry/data/frames', positions=XY)

def test_group_instead_of_dataset(scan_file):
    p, _ = scan_file
    with pytest.raises(ValueError, match="'entry/data' is a group"):
        HDF5Scan(p, 'entry/data', positions=XY)

def test_wrong_rank(tmp_path):
    p = tmp_path / 'flat.h5'
    with h5py.File(p, 'w') as f: f['entry/data/data'] = np.ones((10, 16)); f['x'] = np.zeros(10); f['y'] = np.zeros(10)
    with pytest.raises(ValueError, match=r"has shape \(10, 16\), expected \(M, H, W\)"):
        HDF5Scan(p, positions=('x', 'y'))

def test_missing_positions_dataset(scan_file):
    p, _ = scan_file
    with pytest.raises(ValueError, match="positions dataset 'entry/sample/z' not found"):
        HDF5Scan(p, positions=('entry/sample/x', 'entry/sample/z'))

def test_positions_that_are_not_numbers(tmp_path):
    p = tmp_path / 'text.h5'
    with h5py.File(p, 'w') as f:
        f['entry/data/data'] = np.ones((4, 16, 16)); f['x'] = np.array([b'a', b'b', b'c', b'd']); f['y'] = np.zeros(4)
    with pytest.raises(ValueError, match=r"text\.h5: positions dataset 'x' \(\|S1\) does not hold numbers"):
        HDF5Scan(p, positions=('x', 'y'))

def test_no_positions(scan_file):
    with pytest.raises(ValueError, match='no positions given'):
        HDF5Scan(scan_file[0])

def test_positions_count_mismatch(tmp_path):
    p = tmp_path / 'short.h5'
    with h5py.File(p, 'w') as f:
        f['entry/data/data'] = np.ones((5, 8, 8), np.uint16); f['x'] = np.zeros(4); f['y'] = np.zeros(4)
    with pytest.raises(ValueError, match='has 5 patterns but the positions give 4'):
        HDF5Scan(p, positions=('x', 'y'))
    with HDF5Scan(p, positions=('x', 'y'), growing=True) as s:    # a file being written may run ahead
        assert len(s) == 4

def test_positions_bad_shapes(scan_file, tmp_path):
    p, _ = scan_file
    with pytest.raises(ValueError, match='expected two'):
        HDF5Scan(p, positions=('entry/sample/x',))
    with pytest.raises(ValueError, match=r'positions array has shape \(12,\)'):
        HDF5Scan(p, positions=np.zeros(12))

def test_counts_that_look_like_amplitudes(tmp_path):
    p = tmp_path / 'amp.h5'
    with h5py.File(p, 'w') as f:
        f['entry/data/data'] = np.sqrt(np.random.default_rng(0).poisson(20, (4, 8, 8)) + 0.3).astype(np.float32)
        f['x'] = np.zeros(4); f['y'] = np.zeros(4)
    with HDF5Scan(p, positions=('x', 'y')) as s:
        with pytest.raises(ValueError, match=r"amp.h5:entry/data/data\[0:4\]: values look like amplitudes"):
            s.read(0, 4)
    with HDF5Scan(p, positions=('x', 'y'), data='amplitude') as s:
        np.testing.assert_allclose(s.read(0, 4)[0], h5py.File(p)['entry/data/data'][()])

def test_negative_and_nonfinite_counts():
    with pytest.raises(ValueError, match='negative'): counts_to_amplitude(np.array([[[-1, 1]]], np.int32))
    with pytest.raises(ValueError, match='NaN/Inf'): counts_to_amplitude(np.array([[[np.nan, 1]]]))
    pil = np.array([[[-1, 4], [-2, 9]]], np.int32)                     # Pilatus markers, masked: read
    np.testing.assert_array_equal(counts_to_amplitude(pil, mask=pil[0] < 0), [[[0, 2], [0, 3]]])
    with pytest.raises(ValueError, match='data='): counts_to_amplitude(np.ones((1, 2, 2)), data='photons')

def test_crop_outside_the_frame_and_non_square(scan_file, tmp_path):
    p, _ = scan_file
    with pytest.raises(ValueError, match='leaves the 40x40 frame'):
        HDF5Scan(p, positions=XY, crop=32, centre=(5, 20))
    q = tmp_path / 'rect.h5'
    with h5py.File(q, 'w') as f: f['entry/data/data'] = np.ones((2, 8, 10), np.uint16); f['x'] = np.zeros(2); f['y'] = np.zeros(2)
    with pytest.raises(ValueError, match='not square; pass crop=N'):
        HDF5Scan(q, positions=('x', 'y'))
    with HDF5Scan(q, positions=('x', 'y'), crop=8) as s: assert s.read(0, 2)[0].shape == (2, 8, 8)

def test_mask_shape_mismatch(scan_file):
    p, _ = scan_file
    with pytest.raises(ValueError, match=r'mask has shape \(3, 3\), expected the frame shape \(40, 40\)'):
        HDF5Scan(p, positions=XY, mask=np.zeros((3, 3), bool))

def test_units_need_a_pixel_size(scan_file):
    with pytest.raises(ValueError, match='no object pixel size'):
        HDF5Scan(scan_file[0], positions=XY, units='m')
    with pytest.raises(ValueError, match='units'):
        positions_to_pixels([0], [0], 'furlong', 1.0)

def test_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='none.csv'): read_positions_csv(tmp_path / 'none.csv')
    (tmp_path / 'e.csv').write_text('x,y\n')
    with pytest.raises(ValueError, match='no positions'): read_positions_csv(tmp_path / 'e.csv')
    (tmp_path / 'b.csv').write_text('1,2\n3\n')
    with pytest.raises(ValueError, match='line 2'): read_positions_csv(tmp_path / 'b.csv')
    (tmp_path / 'n.csv').write_text('# positions\n\nframe,x,y\n0,1.5,2.5\n1,3.5,4.5\n')   # comment, blank, named columns
    np.testing.assert_array_equal(read_positions_csv(tmp_path / 'n.csv'), [[1.5, 2.5], [3.5, 4.5]])
    (tmp_path / 't.csv').write_text('0,1.5,2.5\n')
    with pytest.raises(ValueError, match="3 column.*header line naming the columns x and y"): read_positions_csv(tmp_path / 't.csv')

def test_probe_required(scan_file):
    with pytest.raises(ValueError, match='a probe is required'):
        RawDataTorch.from_hdf5(scan_file[0], positions=XY, crop=32)

# ---- what is read ------------------------------------------------------------------------------------------------

def test_counts_mask_crop_and_units(scan_file):
    p, counts = scan_file
    dx = object_pixel_size(1e-10, 1.0, 75e-6, 32)
    with HDF5Scan(p, positions=XY, units='m', pixel_size=dx, crop=32, centre=(21, 19),
                  mask='entry/instrument/detector/pixel_mask') as s:
        amp, x, y = s.read(2, 7)
        r0, c0, n = s.window
        assert (r0, c0, n) == (21 - 16, 19 - 16, 32)
        expect = np.sqrt(counts[2:7, r0:r0 + n, c0:c0 + n].astype(np.float32))
        expect[:, 10 - r0, 12 - c0] = 0                                  # the masked pixel
        np.testing.assert_allclose(amp, expect, rtol=1e-6)
        np.testing.assert_allclose(x, h5py.File(p)['entry/sample/x'][2:7] / dx)
    with HDF5Scan(p, positions='entry/sample/xy', crop=32) as s:      # one (M, 2) dataset, pixels
        np.testing.assert_allclose(s.read(0, 3)[2], h5py.File(p)['entry/sample/y'][:3])

def test_overflow_marker_is_masked():
    a = counts_to_amplitude(np.array([[[4, np.iinfo(np.uint32).max]]], np.uint32))
    assert a.tolist() == [[[2.0, 0.0]]]

def test_chunks_never_read_the_whole_dataset(scan_file, monkeypatch):
    p, counts = scan_file
    reads = []
    with HDF5Scan(p, positions=XY, crop=32) as s:
        ds = s._ds
        class Spy:
            shape, dtype, ndim = ds.shape, ds.dtype, ds.ndim
            def __getitem__(self, key): reads.append(key); return ds[key]
        s._ds = Spy()
        got = list(s.chunks(5))
    assert [len(a) for a, _, _ in got] == [5, 5, 2]
    assert all(k[0].stop - k[0].start <= 5 for k in reads), reads     # one block of frames per read
    np.testing.assert_allclose(np.concatenate([a for a, _, _ in got]),
                               np.sqrt(counts[:, 4:36, 4:36].astype(np.float32)))

def test_from_hdf5_matches_the_npz_path(tmp_path):
    from ptycho_torch_nb.simulation import simulate_diffraction
    rng = np.random.default_rng(0)
    obj = (rng.uniform(0.5, 1, (96, 96)) * np.exp(1j * rng.uniform(-1, 1, (96, 96)))).astype(np.complex64)
    probe = np.ones((32, 32), np.complex64)
    raw = simulate_diffraction(obj, probe, rng.uniform(30, 60, 10), rng.uniform(30, 60, 10), nphotons=1e4, seed=1)
    counts = np.round(raw.diff3d.astype(np.float64) ** 2).astype(np.uint32)
    raw = RawDataTorch(raw.xcoords, raw.ycoords, diff3d=np.sqrt(counts.astype(np.float32)), probeGuess=probe)
    raw.to_file(tmp_path / 'scan.npz')
    with h5py.File(tmp_path / 'scan.h5', 'w') as f:
        f.create_dataset('entry/data/data', data=counts, chunks=(1, 32, 32))
        f['entry/x'], f['entry/y'], f['entry/probe'] = raw.xcoords, raw.ycoords, probe
    a = RawDataTorch.from_file(tmp_path / 'scan.npz')
    b = RawDataTorch.from_hdf5(tmp_path / 'scan.h5', positions=('entry/x', 'entry/y'), probe='entry/probe', chunk=3)
    np.testing.assert_allclose(b.diff3d, a.diff3d)
    np.testing.assert_allclose(b.xcoords, a.xcoords); np.testing.assert_allclose(b.probeGuess, a.probeGuess)
    c = RawDataTorch.from_hdf5(tmp_path / 'scan.h5', positions=('entry/x', 'entry/y'), probe=tmp_path / 'scan.npz')
    np.testing.assert_allclose(c.diff3d, a.diff3d)

def test_iter_hdf5_chunks_range(scan_file):
    p, counts = scan_file
    got = list(iter_hdf5_chunks(p, positions=XY, chunk=4, start=3, stop=10, crop=40))
    assert [len(a) for a, _, _ in got] == [4, 3]
    np.testing.assert_allclose(got[0][0][0] ** 2, counts[3], rtol=1e-5)


def test_a_file_still_being_written_is_named_so(scan_file, monkeypatch):
    "A writer holding the file (SWMR) is not damage: the message says to follow it, not to run h5clear on it."
    p, _ = scan_file
    def busy(*a, **k): raise OSError("Unable to synchronously open file (file is already open for write (may use <h5clear file> "
                                     "to clear file consistency flags))")
    monkeypatch.setattr(h5py, 'File', busy)
    with pytest.raises(ValueError, match='still being written by another process; stream it as it grows') as e:
        HDF5Scan(p, positions=XY, swmr=False)
    assert 'h5clear' not in str(e.value)


def test_a_damaged_block_names_the_file_and_its_frames(scan_file):
    "h5py's own message for a chunk its filter cannot decode names neither file nor frames; ours names both."
    p, _ = scan_file
    with HDF5Scan(p, positions=XY) as s:
        class Damaged:
            shape, ndim = s._ds.shape, 3
            def __getitem__(self, key): raise OSError("Can't synchronously read data (filter returned failure during read)")
        s._ds = Damaged()
        with pytest.raises(ValueError, match=r"scan\.h5: cannot read frames \[4:8\] of 'entry/data/data' \(damaged file\?\)"):
            s.read(4, 8)


def test_crop_centre_and_ranges_are_named(scan_file):
    "A crop, centre, chunk size or pattern range out of bounds is named with its allowed range (were: numpy's errors, or nothing read)."
    p, _ = scan_file   # 12 frames of 40 x 40
    for crop in (-4, 0, 41, 2.5):   # a whole-number float (32.0) is a crop
        with pytest.raises(ValueError, match=rf'crop={crop!r} is invalid: allowed an int in 1\.\.40'): HDF5Scan(p, positions=XY, crop=crop)
    with pytest.raises(ValueError, match=r'centre=\(nan, 8\) is invalid'): HDF5Scan(p, positions=XY, crop=8, centre=(float('nan'), 8))
    with HDF5Scan(p, positions=XY, crop=32) as scan:
        for start, stop in ((6, 2), (-3, 2)):   # were: nothing read, and the last frames by negative indexing
            with pytest.raises(ValueError, match=r'are invalid: allowed 0 <= start <= stop'): list(scan.chunks(4, start, stop))
        assert list(scan.chunks(4, 12)) == [] and list(scan.chunks(4, 100)) == []   # past the end: nothing (a resume at the end)
        with pytest.raises(ValueError, match='chunk=0 is invalid: allowed an int >= 1'): list(scan.chunks(0))
        with pytest.raises(ValueError, match=r'frames \[6:2\] are invalid'): scan.read(6, 2)
        assert sum(len(a) for a, _, _ in scan.chunks(5)) == 12   # the valid ranges still read every pattern
    with HDF5Scan(p, positions=XY, crop=32.0) as scan: assert scan.window[2] == 32
