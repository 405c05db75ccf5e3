"""Issue 17: `streaming` and `ptycho-torch-stream`: the incremental canvas equals the one-shot stitch, memory is bounded
by the canvas, sources (arrays, replay, a growing non-SWMR HDF5 file, a SWMR one written by another process), and
streams cut short (Ctrl-C in the middle of a chunk, a KeyboardInterrupt or an error in the source, SIGINT to the CLI)
still leave a valid final product."""
import json, os, signal, subprocess, sys, threading, time
from pathlib import Path
import numpy as np
import pytest
import torch
import h5py

from ptycho_torch_nb import streaming as S
from ptycho_torch_nb.stitching import reassemble_position
from ptycho_torch_nb.raw_data import normalization_factor

N = 64

def single_scan_model(n_filters_scale=1, **options):
    "An untrained model with the default single-scan options (`config.ScanOptions`), narrow by default."
    from ptycho_torch_nb.config import ScanOptions
    from ptycho_torch_nb.model import PtychoPINN_Lightning
    o = ScanOptions(**options)
    return PtychoPINN_Lightning(dict(N=N, gridsize=o.gridsize, n_filters_scale=n_filters_scale, pad_object=o.pad_object),
                                merge_weight=o.merge_weight, generator_mode=o.generator_mode, backprop_input=o.backprop_input)

@pytest.fixture(scope='module')
def model():
    torch.set_num_threads(1); torch.manual_seed(0)
    return single_scan_model()

@pytest.fixture(scope='module')
def archive(tmp_path_factory, model):
    from ptycho_torch_nb.persistence import save_torch_bundle
    return save_torch_bundle({'autoencoder': model, 'diffraction_to_obj': model}, tmp_path_factory.mktemp('arch') / 'wts.h5')

@pytest.fixture(scope='module')
def data():
    rng = np.random.default_rng(0)
    amp = np.sqrt(rng.poisson(30, (48, N, N))).astype(np.float32)
    xy = rng.uniform(0, 50, (48, 2)) + 20
    return amp, xy

def write_h5(path, amp, xy):
    with h5py.File(path, 'w') as f:
        f.create_dataset('entry/data/data', data=np.round(amp.astype(np.float64) ** 2).astype(np.uint32), chunks=(1, N, N))
        f['entry/x'], f['entry/y'] = xy[:, 0], xy[:, 1]
    return path

def test_stream_equals_one_shot_stitch(model, data):
    amp, xy = data
    sr = S.StreamingReconstructor(model, positions=xy, compile=False)
    for s in range(0, len(xy), 10): sr.update(amp[s:s + 10], xy[s:s + 10, 0], xy[s:s + 10, 1])
    img, w = sr.image()
    gen = S.pattern_generator(model)
    f = normalization_factor(amp[:10], N)                       # the factor is fixed from the first chunk
    assert sr.scale == pytest.approx(float(f))
    with torch.no_grad(): patches = torch.polar(*gen(torch.as_tensor(amp[:, None] * f)))
    ref, ref_w = reassemble_position(patches, xy, M=sr.M, return_weights=True)
    np.testing.assert_allclose(w[1:-1, 1:-1], ref_w.numpy(), atol=1e-4)
    np.testing.assert_allclose(img[1:-1, 1:-1], ref.numpy(), atol=1e-4 * np.abs(ref.numpy()).max())
    st = sr.stats()
    assert st['n_patterns'] == 48 and st['n_chunks'] == 5 and st['patterns_per_s'] > 0 and st['latency_max_s'] > 0

def test_canvas_memory_is_bounded_by_the_area(model, data):
    amp, xy = data
    sr = S.StreamingReconstructor(model, block=64, compile=False)
    sr.update(amp, xy[:, 0], xy[:, 1])
    shape, nbytes = sr.canvas.shape, sr.canvas.nbytes
    for _ in range(5): sr.update(amp, xy[:, 0] + 0.3, xy[:, 1] - 0.2)   # 6x the patterns over the same area
    assert sr.canvas.shape == shape and sr.canvas.nbytes == nbytes
    sr.update(amp[:4], xy[:4, 0] + 500, xy[:4, 1])                      # a new area grows the canvas, in blocks
    assert sr.canvas.shape[1] > shape[1] and sr.canvas.shape[1] % 64 == 0
    assert sr.stats()['n_patterns'] == 6 * 48 + 4

def _on_frame(sr, lo, shape):
    "A reconstructor's image and weights pasted into a larger frame whose pixel (0, 0) is object [x, y] = `lo`."
    img, w = sr.image()
    ox, oy = sr.canvas.origin_xy
    assert float(ox).is_integer() and float(oy).is_integer()    # integer origins: every canvas has the same pixel grid
    r, c = int(oy) - lo[1], int(ox) - lo[0]
    big_img, big_w = np.zeros(shape, img.dtype), np.zeros(shape, w.dtype)
    big_img[r:r + img.shape[0], c:c + img.shape[1]], big_w[r:r + w.shape[0], c:c + w.shape[1]] = img, w
    return big_img, big_w

def test_grown_canvas_keeps_earlier_patches(model, data):
    amp, xy = data
    f = float(normalization_factor(amp, N))      # one fixed factor for all three: only the canvas differs
    a, b, one = (S.StreamingReconstructor(model, block=16, scale=f, compile=False) for _ in range(3))
    order = np.argsort(xy[:, 0])                 # left to right: the canvas grows right
    rev = order[::-1]                            # right to left: it grows left (origin moves)
    for s in range(0, 48, 8):
        i, j = order[s:s + 8], rev[s:s + 8]
        a.update(amp[i], xy[i, 0], xy[i, 1]); b.update(amp[j], xy[j, 0], xy[j, 1])
        if s == 0: first_a, first_b = a.canvas.shape, b.canvas.origin_xy
    one.update(amp, xy[:, 0], xy[:, 1])          # every patch in one chunk: no earlier patch to move
    assert a.canvas.shape[1] > first_a[1] and b.canvas.origin_xy[0] < first_b[0]   # a grew right, b left
    cans = [c.canvas for c in (a, b, one)]
    lo = [int(min(c.origin_xy[k] for c in cans)) for k in (0, 1)]
    shape = tuple(int(max(c.origin_xy[k] + c.shape[1 - k] for c in cans)) - lo[k] for k in (1, 0))
    (ia, wa), (ib, wb), (i1, w1) = (_on_frame(c, lo, shape) for c in (a, b, one))
    assert w1.sum() == pytest.approx(48 * a.M ** 2, rel=1e-5)
    for img, w in ((ia, wa), (ib, wb)):
        np.testing.assert_allclose(w, w1, atol=1e-5)
        np.testing.assert_allclose(img, i1, atol=1e-5 * np.abs(i1).max())

def test_group_model_is_refused(model):
    grouped = single_scan_model(generator_mode='group', merge_weight='centre', backprop_input=False)
    with pytest.raises(ValueError, match='pattern-wise'):
        S.StreamingReconstructor(grouped)
    with pytest.raises(FileNotFoundError, match='model archive not found'):
        S.StreamingReconstructor('/nowhere/wts.h5.zip')

def test_bad_chunks(model, data):
    amp, xy = data
    sr = S.StreamingReconstructor(model, compile=False)
    with pytest.raises(ValueError, match=r'expected \[k, 64, 64\]'): sr.update(amp[:2, :32, :32], xy[:2, 0], xy[:2, 1])
    with pytest.raises(ValueError, match='2 patterns but 3 x'): sr.update(amp[:2], xy[:3, 0], xy[:3, 1])

def test_complex_and_integer_chunks_are_refused(model, data):
    "A complex chunk (first or later) and integer photon counts are refused, never cast to amplitudes; nothing is stitched."
    amp, xy = data
    first, later = S.StreamingReconstructor(model, compile=False), S.StreamingReconstructor(model, compile=False)
    later.update(amp[:8], xy[:8, 0], xy[:8, 1])
    for sr in (first, later):
        with pytest.raises(ValueError, match=r'chunk is complex \(complex64\); expected real amplitudes'):
            sr.update(amp[8:].astype(np.complex64), xy[8:, 0], xy[8:, 1])
        with pytest.raises(ValueError, match=r'chunk is complex'): sr.update(torch.as_tensor(amp[8:]) * (1 + 1j), xy[8:, 0], xy[8:, 1])
        with pytest.raises(ValueError, match=r'integer dtype int32 \(photon counts\?\); expected real float amplitudes'):
            sr.update(np.round(amp[8:] ** 2).astype(np.int32), xy[8:, 0], xy[8:, 1])
    assert (first.n_patterns, later.n_patterns, first.scale) == (0, 8, None)

def test_scalar_positions_and_bad_M(model, data):
    "A one-pattern chunk takes scalar positions; positions of another shape, and M=0 or M > N, are refused by name."
    amp, xy = data
    sr = S.StreamingReconstructor(model, compile=False)
    sr.update(amp[:1], xy[0, 0], xy[0, 1]); sr.update(amp[1:2], float(xy[1, 0]), float(xy[1, 1]))
    assert sr.n_patterns == 2
    with pytest.raises(ValueError, match=r'positions x \(2, 1\), y \(2, 1\): expected \[k\] each'): sr.update(amp[:2], xy[:2, :1], xy[:2, :1])
    with pytest.raises(ValueError, match='chunk has 2 patterns but 1 x'): sr.update(amp[:2], xy[0, 0], xy[0, 1])
    for M, says in ((0, 'M=0 is invalid'), (80, r'M=80 is invalid: allowed an even int in 2\.\.N=64'), (47, 'M=47 is invalid')):
        with pytest.raises(ValueError, match=says): S.StreamingReconstructor(model, M=M, compile=False)

def test_run_refuses_a_file_or_a_single_chunk(model, data, tmp_path):
    "`run` takes an iterable of chunks: a path (str or Path) or one (amplitude, x, y) tuple is a TypeError that names the fix."
    amp, xy = data
    for wrong in (str(tmp_path / 'scan.npz'), tmp_path / 'scan.npz', (amp, xy[:, 0], xy[:, 1]), [amp, xy[:, 0], xy[:, 1]], 3):
        with pytest.raises(TypeError, match=r'source must be an iterable of \(amplitude, x, y\) chunks.*for a file use open_source\(path\)'):
            S.StreamingReconstructor(model, compile=False).run(wrong, tmp_path / 'out', progress=False)
    assert not (tmp_path / 'out').exists()
    res = S.StreamingReconstructor(model, compile=False).run([(amp[:8], xy[:8, 0], xy[:8, 1])], progress=False)   # a list of chunks is fine
    assert res['stats']['n_patterns'] == 8

class CtrlCDuringThirdChunk(S.StreamingReconstructor):
    def patches(self, amplitude):
        if self.n_patterns == 16: os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C while chunk 2 is being inferred
        return super().patches(amplitude)

def _sigint_while_waiting_for_third_chunk(amp, xy, chunk=8):
    for i, c in enumerate(S.array_chunks(amp, xy[:, 0], xy[:, 1], chunk)):
        if i == 2: os.kill(os.getpid(), signal.SIGINT)    # Ctrl-C while the source waits for chunk 2
        yield c

def _check_final(out, n, interrupted, fmt='npz'):
    st = json.loads((out / 'stream.json').read_text())
    assert st['n_patterns'] == n and st['interrupted'] is interrupted
    if fmt == 'npz':
        with np.load(out / 'object.npz') as f: obj, w, st2 = f['object'], f['weights'], json.loads(str(f['stats']))
    else:
        with h5py.File(out / 'object.h5') as f: obj, w, st2 = f['object'][()], f['weights'][()], json.loads(f.attrs['stats'])
    assert np.isfinite(obj).all() and w.max() > 0 and st2['n_patterns'] == n
    import matplotlib.image as mpimg
    for name in ('live.png', 'amplitude.png', 'phase.png'): assert mpimg.imread(out / name).ndim == 3
    assert not list(out.glob('.*.tmp'))                       # no temporary left behind
    return st

def test_ctrl_c_mid_chunk_leaves_a_valid_product(model, data, tmp_path):
    amp, xy = data
    old = signal.getsignal(signal.SIGINT)
    res = CtrlCDuringThirdChunk(model, compile=False).run(S.array_chunks(amp, xy[:, 0], xy[:, 1], 8), tmp_path / 'cut', progress=False, fmt='h5')
    assert signal.getsignal(signal.SIGINT) is old             # handler restored
    st = _check_final(tmp_path / 'cut', 24, True, 'h5')       # the chunk in flight completed, nothing after it
    assert res['stats']['n_chunks'] == 3 and st['error'] is None
    img = res['object']
    ref = S.StreamingReconstructor(model, compile=False); ref.update(amp[:8], xy[:8, 0], xy[:8, 1]); ref.update(amp[8:24], xy[8:24, 0], xy[8:24, 1])
    np.testing.assert_allclose(img, ref.image()[0], atol=1e-5 * np.abs(img).max())   # exactly the 3 chunks, whole

def test_ctrl_c_while_waiting_for_data(model, data, tmp_path):
    amp, xy = data
    S.StreamingReconstructor(model, compile=False).run(_sigint_while_waiting_for_third_chunk(amp, xy), tmp_path / 'wait', progress=False)
    _check_final(tmp_path / 'wait', 16, True)

def test_keyboard_interrupt_and_errors_in_the_source(model, data, tmp_path):
    amp, xy = data
    def raising(exc):
        yield amp[:8], xy[:8, 0], xy[:8, 1]
        raise exc
    S.StreamingReconstructor(model, compile=False).run(raising(KeyboardInterrupt()), tmp_path / 'ki', progress=False)
    _check_final(tmp_path / 'ki', 8, True)
    res = S.StreamingReconstructor(model, compile=False).run(raising(OSError('detector went away')), tmp_path / 'err', progress=False)
    st = _check_final(tmp_path / 'err', 8, False)
    assert 'detector went away' in st['error'] and res['stats']['error'] == st['error']
    with pytest.raises(FileExistsError, match=r'holds a previous run \(stream.json'):
        S.StreamingReconstructor(model, compile=False).run(raising(KeyboardInterrupt()), tmp_path / 'ki', progress=False)

def test_live_snapshots_are_written(model, data, tmp_path):
    amp, xy = data
    def slow():
        for c in S.array_chunks(amp, xy[:, 0], xy[:, 1], 16):
            time.sleep(0.15); yield c
    seen = []
    class Watch:
        def __iter__(self):
            for c in slow():
                yield c
                seen.append((tmp_path / 'live' / 'live.npz').exists())
    S.StreamingReconstructor(model, compile=False).run(Watch(), tmp_path / 'live', snapshot_every_s=0.1, progress=False)
    assert any(seen[:-1])                                       # a live snapshot existed before the end
    from ptycho_torch_nb.core import RUN_ARTIFACTS          # every product is a run artifact: --overwrite clears it
    assert {p.name for p in (tmp_path / 'live').iterdir()} <= set(RUN_ARTIFACTS)

class FakeClock:
    "Stands for the `time` module in `streaming`: `perf_counter` is a counter that only `sleep` (or `advance`) moves."
    def __init__(self): self.now, self.sleeps = 0.0, []
    def perf_counter(self): return self.now
    def sleep(self, s): self.sleeps.append(s); self.now += s
    def advance(self, s): self.now += s

def test_replay_file_paces_and_reads_hdf5(model, data, tmp_path, monkeypatch):
    amp, xy = data
    p = write_h5(tmp_path / 's.h5', amp, xy)
    clock = FakeClock(); monkeypatch.setattr(S, 'time', clock)
    chunks = list(S.replay_file(p, rate=200.0, chunk=16, positions=('entry/x', 'entry/y')))
    assert clock.sleeps == pytest.approx([16 / 200] * 3)           # 48 patterns at 200/s: each chunk of 16 is due 0.08 s later
    clock = FakeClock(); monkeypatch.setattr(S, 'time', clock)
    for _ in S.replay_file(p, rate=200.0, chunk=16, positions=('entry/x', 'entry/y')): clock.advance(0.05)
    assert clock.sleeps == pytest.approx([0.08, 0.03, 0.03])       # time the consumer took counts towards the next wait
    np.testing.assert_allclose(np.concatenate([c[0] for c in chunks]), np.sqrt(np.round(amp.astype(np.float64) ** 2)).astype(np.float32), rtol=1e-6)

def _writer(path, amp, xy, swmr, block=8, pause=0.05):
    counts = np.round(amp.astype(np.float64) ** 2).astype(np.uint32)
    with h5py.File(path, 'w', libver='latest') as f:
        d = f.create_dataset('entry/data/data', (0, N, N), maxshape=(None, N, N), dtype='u4', chunks=(1, N, N))
        px = f.create_dataset('entry/x', (0,), maxshape=(None,), dtype='f8')
        py = f.create_dataset('entry/y', (0,), maxshape=(None,), dtype='f8')
        if swmr: f.swmr_mode = True
        for s in range(0, len(counts), block):
            e = min(s + block, len(counts))
            for ds, v in ((d, counts[s:e]), (px, xy[s:e, 0]), (py, xy[s:e, 1])):
                ds.resize(e, axis=0); ds[s:e] = v
            f.flush(); time.sleep(pause)

def test_poll_a_growing_file(data, tmp_path):
    "A non-SWMR writer (here a thread): every look re-opens the file. SWMR, from another process: the test below."
    amp, xy = data
    p = tmp_path / 'growing.h5'
    w = threading.Thread(target=_writer, args=(p, amp, xy, False)); w.start()
    try:
        got = list(S.poll_hdf5(p, positions=('entry/x', 'entry/y'), chunk=10, poll_s=0.02, idle_timeout_s=1.0))
    finally: w.join()
    assert sum(len(c[0]) for c in got) == 48
    assert all(len(c[0]) == 10 for c in got[:-1])
    np.testing.assert_allclose(np.concatenate([c[1] for c in got]), xy[:, 0])
    np.testing.assert_allclose(np.concatenate([c[0] for c in got]) ** 2, np.round(amp.astype(np.float64) ** 2), rtol=1e-5)

# A detector in its own process: SWMR, `first` frames written before the stream opens the file, then blocks of `block`
# frames every `pause` s; with `positions_late` the positions are written only after the last frame.
_DETECTOR = r"""
import sys, time
from pathlib import Path
import numpy as np, h5py
path, src, first, block, pause, positions_late = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6] == '1'
with np.load(src) as z: counts, xy = z['counts'], z['xy']
with h5py.File(path, 'w', libver='latest') as f:
    frame = counts.shape[1:]
    d = f.create_dataset('entry/data/data', (0, *frame), maxshape=(None, *frame), dtype='u4', chunks=(1, *frame))
    pos = [f.create_dataset(k, (0,), maxshape=(None,), dtype='f8') for k in ('entry/x', 'entry/y')]
    f.swmr_mode = True
    def put(s, e, frames=True, positions=True):
        for ds, v in ([(d, counts)] if frames else []) + (list(zip(pos, xy.T)) if positions else []):
            ds.resize(e, axis=0); ds[s:e] = v[s:e]; ds.flush()
    put(0, first, positions=not positions_late)
    Path(path + '.ready').touch()
    t = time.time()
    while not Path(path + '.go').exists() and time.time() - t < 60: time.sleep(0.01)
    for s in range(first, len(counts), block):
        put(s, min(s + block, len(counts)), positions=not positions_late); time.sleep(pause)
    if positions_late: put(0, len(counts), frames=False)
"""

@pytest.mark.parametrize('first, positions_late', [(0, False), (3, False), (0, True)])
def test_poll_follows_a_detector_in_another_process(data, tmp_path, monkeypatch, first, positions_late):
    """A SWMR file written by another process, with fewer than `chunk` frames when the stream opens it: every frame
    arrives. (A writer thread in the reader's process shares HDF5's open file, so it would show new frames even without
    `refresh()`.) With `positions_late` the frames alone keep the stream alive: they arrive over 1.2 s, twice
    `idle_timeout_s`, before any position."""
    amp, xy = data
    p, src = tmp_path / 'live.h5', tmp_path / 'scan.npz'
    counts = np.round(amp.astype(np.float64) ** 2).astype(np.uint32)
    np.savez(src, counts=counts, xy=xy)
    opened = S._open_when_ready
    def open_then_go(*a, **k):                                   # the detector goes on once the stream has the file open
        scan = opened(*a, **k); Path(f'{p}.go').touch(); return scan
    monkeypatch.setattr(S, '_open_when_ready', open_then_go)
    w = subprocess.Popen([sys.executable, '-c', _DETECTOR, str(p), str(src), str(first), '4', '0.1', str(int(positions_late))])
    try:
        t = time.time()
        while not Path(f'{p}.ready').exists():
            assert w.poll() is None and time.time() - t < 60, 'the detector process did not start'
            time.sleep(0.02)
        got = list(S.poll_hdf5(p, positions=('entry/x', 'entry/y'), chunk=10, poll_s=0.02, idle_timeout_s=0.6))
    finally: w.wait(timeout=60)
    assert w.returncode == 0
    assert [len(c[0]) for c in got] == [10, 10, 10, 10, 8]
    np.testing.assert_allclose(np.concatenate([c[1] for c in got]), xy[:, 0])
    np.testing.assert_allclose(np.concatenate([c[2] for c in got]), xy[:, 1])
    np.testing.assert_allclose(np.concatenate([c[0] for c in got]) ** 2, counts, rtol=1e-5)

def test_poll_stops_at_expected(data, tmp_path, caplog):
    amp, xy = data
    p = write_h5(tmp_path / 'done.h5', amp, xy)
    got = list(S.poll_hdf5(p, positions=('entry/x', 'entry/y'), chunk=16, expected=20, idle_timeout_s=30))
    assert [len(c[0]) for c in got] == [16, 4] and 'expected' not in caplog.text
    got = list(S.poll_hdf5(p, positions=('entry/x', 'entry/y'), chunk=16, expected=100, idle_timeout_s=0.3, poll_s=0.05))
    assert sum(len(c[0]) for c in got) == 48   # the detector went quiet first: the stream ends, and says so
    assert 'done.h5: no new frame for 0.3 s: stopped after 48 of the 100 patterns expected' in caplog.text
    with pytest.raises(FileNotFoundError, match='not found after'):
        list(S.poll_hdf5(tmp_path / 'never.h5', positions=('x', 'y'), idle_timeout_s=0.2, poll_s=0.05))

def _h5(path, frames, x, y):
    "A complete scan file: `frames` as they are, positions `entry/x`, `entry/y` (growable, so they may be fewer)."
    with h5py.File(path, 'w') as f:
        f['entry/data/data'] = frames
        for k, v in (('entry/x', x), ('entry/y', y)): f.create_dataset(k, data=np.asarray(v, np.float64), maxshape=(None,))
    return path

POS = ('entry/x', 'entry/y')

def test_nan_and_dark_frames_are_dropped(model, data, tmp_path):
    "A frame with NaN (lost) comes all NaN from both HDF5 sources and, like a dark frame at any time, is dropped and counted."
    amp, xy = data
    counts = np.round(amp.astype(np.float64) ** 2).astype(np.float32)
    counts[3, 5, 5] = np.nan; counts[30:34] = 0          # a lost frame in the first chunk; the shutter closed later on
    p = _h5(tmp_path / 'f.h5', counts, xy[:, 0], xy[:, 1])
    for src in (S.replay_file(p, chunk=16, positions=POS), S.poll_hdf5(p, chunk=16, positions=POS, expected=48)):
        res = S.StreamingReconstructor(model, compile=False).run(src, progress=False)
        assert (res['stats']['n_patterns'], res['stats']['skipped']) == (43, 5)
        assert res['stats']['input_scale'] == pytest.approx(float(normalization_factor(np.delete(amp[:16], 3, 0), N)), rel=1e-5)

def test_stitched_positions_span_at_most_max_scan_extent(model, data, monkeypatch):
    "max - min of everything stitched stays within MAX_SCAN_EXTENT: a window around the first chunk allowed twice that."
    amp, xy = data
    monkeypatch.setattr(S, 'MAX_SCAN_EXTENT', 300)
    sr = S.StreamingReconstructor(model, compile=False, scale=1.0, block=16)
    for dx in (0, 250, -250, 100): sr.update(amp[:2], xy[:2, 0] + dx, xy[:2, 1])   # the third chunk would span 500+ px
    assert (sr.stats()['n_patterns'], sr.stats()['skipped']) == (6, 2)
    assert sr.canvas.shape[1] <= 300 + sr.M + 2 + 2 * 16

def test_poll_frames_without_positions(data, tmp_path, caplog):
    "Frames whose positions never arrive: an error when none did (not a silent, empty stream), a warning with both counts else."
    amp, xy = data
    counts = np.round(amp[:16].astype(np.float64) ** 2).astype(np.uint32)
    none, some = (_h5(tmp_path / f'{n}.h5', counts, xy[:n, 0], xy[:n, 1]) for n in (0, 10))
    with pytest.raises(ValueError, match=r'16 frames arrived, 0 with their positions \(entry/x entry/y\): nothing to stitch'):
        list(S.poll_hdf5(none, positions=POS, poll_s=0.02, idle_timeout_s=0.2))
    with caplog.at_level('WARNING', logger=S.log.name):
        got = list(S.poll_hdf5(some, positions=POS, poll_s=0.02, idle_timeout_s=0.2))
    assert sum(len(c[0]) for c in got) == 10 and '16 frames arrived, 10 with their positions (entry/x entry/y)' in caplog.text

def test_file_problems_are_found_before_streaming(model, data, tmp_path):
    "Positions in metres read as pixels, or spanning too much, and patterns of another size than the model's: refused up front."
    amp, xy = data
    counts = np.round(amp.astype(np.float64) ** 2).astype(np.uint32)
    with pytest.raises(ValueError, match=r'm.h5: all 48 positions lie within .*--units'):
        S.open_source(_h5(tmp_path / 'm.h5', counts, xy[:, 0] * 1e-8, xy[:, 1] * 1e-8), positions=POS)
    with pytest.raises(ValueError, match=r'far.h5: positions span .* more than MAX_SCAN_EXTENT'):
        S.open_source(_h5(tmp_path / 'far.h5', counts, np.r_[xy[:47, 0], 1e6], xy[:, 1]), positions=POS)
    big = np.zeros((48, 96, 96), np.uint32); big[:, 16:80, 16:80] = counts
    p = _h5(tmp_path / 'big.h5', big, xy[:, 0], xy[:, 1])
    for follow in (False, True):   # a complete file before its first chunk is read, a followed one when it opens
        src, _ = S.open_source(p, follow=follow, idle_timeout_s=1.0, positions=POS)
        with pytest.raises(ValueError, match=r'big.h5: patterns are 96x96 but the model takes 64x64: keep the central 64x64 with --crop 64'):
            S.StreamingReconstructor(model, compile=False).run(src, tmp_path / 'o', progress=False)
        assert not list(tmp_path.glob('o/*'))

# ---- CLI ---------------------------------------------------------------------------------------------------------

def _cli(*args, **kw):
    return subprocess.run([sys.executable, '-m', 'ptycho_torch_nb.cli', *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)

def test_cli_stream_hdf5_and_errors(archive, data, tmp_path, capsys):
    amp, xy = data
    p = write_h5(tmp_path / 's.h5', amp, xy)
    out = _cli('stream', archive, p, '--positions', 'entry/x', 'entry/y', '--output_dir', tmp_path / 'o', '--chunk', '16',
               '--quiet', '--threads', '1', '--no_compile')   # compiled == eager is proven in 05c_streaming
    assert out.returncode == 0, out.stderr
    _check_final(tmp_path / 'o', 48, False)
    from ptycho_torch_nb.cli import stream_main      # the refusals in this process: the exit code and stderr are the CLI's
    capsys.readouterr()
    assert stream_main([str(archive), str(p), '--diffraction_key', 'entry/nothing', '--positions', 'entry/x', 'entry/y',
                        '--output_dir', str(tmp_path / 'o2'), '--quiet', '--no_compile']) == 2
    err = capsys.readouterr().err
    assert 'entry/nothing' in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
    assert stream_main([str(archive), str(p), '--positions', 'entry/x', 'entry/y', '--output_dir', str(tmp_path / 'o'), '--quiet']) == 2
    assert 'holds a previous run (stream.json' in capsys.readouterr().err
    # an NPZ source takes --data and --diffraction_layout, as every command's NPZ does; the HDF5-only flags are refused
    npz = tmp_path / 's.npz'
    np.savez(npz, diff3d=amp, xcoords=xy[:, 0], ycoords=xy[:, 1], probeGuess=np.ones((N, N), np.complex64))
    assert stream_main([str(archive), str(npz), '--crop', '64', '--output_dir', str(tmp_path / 'o3'), '--quiet']) == 2
    err = capsys.readouterr().err
    assert '--crop' in err and 'NPZ' in err and len(err.strip().splitlines()) == 1, err
    for kind in ('amplitude', 'intensity'):
        assert stream_main([str(archive), str(npz), '--data', kind, '--diffraction_layout', 'MNN', '--output_dir',
                            str(tmp_path / kind), '--quiet', '--no_compile', '--threads', '1']) == 0, capsys.readouterr().err
        _check_final(tmp_path / kind, 48, False)
    with np.load(tmp_path / 'amplitude' / 'object.npz') as a, np.load(tmp_path / 'intensity' / 'object.npz') as b:
        assert not np.allclose(a['object'], b['object'])   # --data intensity: the square roots went in

@pytest.mark.parametrize('sig, code', [(signal.SIGINT, 0), (signal.SIGTERM, 143)])
def test_cli_signal_while_following(archive, data, tmp_path, sig, code):
    "Ctrl-C, or SIGTERM (systemd, Slurm, kill), while the detector stalls: the final products; SIGTERM exits 143 with one line."
    amp, xy = data
    p = tmp_path / 'partial.h5'
    _writer(p, amp[:24], xy[:24], swmr=False, pause=0)           # half a scan; the 'detector' stalls
    out = tmp_path / 'follow'
    proc = subprocess.Popen([sys.executable, '-m', 'ptycho_torch_nb.cli', 'stream', str(archive), str(p), '--follow',
                             '--positions', 'entry/x', 'entry/y', '--output_dir', str(out), '--chunk', '8',
                             '--idle_timeout_s', '120', '--snapshot_every_s', '0.1', '--quiet', '--threads', '1', '--no_compile'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t = time.time()
    while not (out / 'live.npz').exists() and time.time() - t < 120 and proc.poll() is None: time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    st = _check_final(out, 24, True)
    assert st['n_chunks'] == 3 and st['stopped_by'] == sig.name
    stopped = [line for line in err.splitlines() if 'stopped by' in line]
    assert stopped == ([f"ptycho-torch-stream: stopped by SIGTERM; the final products of 24 patterns are in {out}"] if sig == signal.SIGTERM else [])


def test_compile_failure_falls_back_to_eager(model, data, monkeypatch, caplog):
    "No C++ compiler (or any compile error): a warning, then the same patches from the eager generator."
    amp, xy = data
    def broken(*a, **k): raise RuntimeError("no compiler found")
    monkeypatch.setattr(S.torch, 'compile', broken)
    with caplog.at_level('WARNING', logger=S.log.name):
        sr = S.StreamingReconstructor(model, scale=1.0)
    assert sr.compiled is False and 'torch.compile failed' in caplog.text and 'no compiler found' in caplog.text
    ref = S.StreamingReconstructor(model, scale=1.0, compile=False)
    np.testing.assert_allclose(sr.patches(amp[:5]).numpy(), ref.patches(amp[:5]).numpy())
    with pytest.raises(ValueError, match='batch_size=0'):
        S.StreamingReconstructor(model, batch_size=0, compile=False)


def test_a_smaller_pattern_size_and_an_empty_stream(model, tmp_path):
    "Smaller patterns than the model's (or an NPZ, which --crop cannot cut) need another model; a stream with no pattern is an error."
    src = S.FileSource(tmp_path / 'small.npz', lambda need: iter(()), N=32)
    with pytest.raises(ValueError, match=r'small.npz: patterns are 32x32 but the model takes 64x64: use a model trained on 32x32 patterns$'):
        src.expect(64)
    with pytest.raises(ValueError, match='the stream ended with nothing stitched: no pattern arrived'):
        S.StreamingReconstructor(model, compile=False).run(iter(()), tmp_path / 'empty', progress=False)
    assert not (tmp_path / 'empty').exists()                      # nothing written: not even the folder it made
    (tmp_path / 'mine').mkdir()                                   # a folder of the user's: kept
    with pytest.raises(ValueError, match='nothing stitched'): S.StreamingReconstructor(model, compile=False).run(iter(()), tmp_path / 'mine', progress=False)
    assert (tmp_path / 'mine').is_dir()
