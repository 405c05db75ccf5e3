"""Issue 16, phase 1: the pretraining corpus (`corpus`): object families, material, probes, scans, `sample_scan`.

Every property is checked on fresh draws (several seeds and sizes), never against a stored output of our own code.
"""
import inspect, json, math
import numpy as np
import pytest

from ptycho_torch_nb import corpus as C

SEEDS = (0, 1, 7)


@pytest.mark.parametrize('name', sorted(C.FAMILIES))
def test_family_thickness_contract(name):
    fam = C.FAMILIES[name]
    for seed, size in zip(SEEDS, (256, 64, 150)):
        t = fam(np.random.default_rng(seed), size)
        assert t.shape == (size, size) and t.dtype == np.float32, (name, t.shape, t.dtype)
        assert t.min() >= 0 and t.max() <= 1 + 1e-6, (name, t.min(), t.max())
        assert t.std() > 0.01, f"{name}: nearly constant map (std {t.std():.2g})"
        np.testing.assert_array_equal(fam(np.random.default_rng(seed), size), t)   # deterministic per seed
    assert not np.array_equal(fam(np.random.default_rng(11), 64), fam(np.random.default_rng(12), 64)), name


@pytest.mark.parametrize('name', sorted(C.FAMILIES))
def test_make_object_range(name):
    for seed in SEEDS:
        o = C.make_object(np.random.default_rng(seed), name, 96)
        assert o.shape == (96, 96) and o.dtype == np.complex64
        a, p = np.abs(o), np.angle(o)
        assert a.min() > 0 and a.max() <= 1 + 1e-6, (name, a.min(), a.max())
        assert np.abs(p).max() <= math.pi + 1e-6
        assert p.std() > 1e-3 or a.std() > 1e-3, f"{name}: flat object"
        np.testing.assert_array_equal(C.make_object(np.random.default_rng(seed), name, 96), o)


def test_training_and_held_out_are_disjoint_and_named():
    assert len(C.TRAINING_FAMILIES) >= 6 and len(C.HELD_OUT_FAMILIES) >= 3
    assert not set(C.TRAINING_FAMILIES) & set(C.HELD_OUT_FAMILIES)
    assert set(C.FAMILIES) == set(C.TRAINING_FAMILIES) | set(C.HELD_OUT_FAMILIES)
    assert set(C.corpus_spec()['families']) == set(C.TRAINING_FAMILIES)
    assert C.corpus_spec()['held_out_families'] == list(C.HELD_OUT_FAMILIES)


def test_no_benchmark_images_in_the_corpus():
    src = inspect.getsource(C)
    for word in ('camera', 'astronaut', 'skimage'):
        assert word not in src, f"corpus.py mentions {word!r}: the benchmark object must stay out of the corpus"


def test_material_strengths():
    o = C.make_object(np.random.default_rng(0), 'grains', 64, dict(phase_max=math.pi, absorption=0.0))
    np.testing.assert_allclose(np.abs(o), 1, atol=1e-6)                            # pure phase object
    assert np.abs(np.angle(o)).max() > 3.0                                         # strong phase reaches ~pi
    o = C.make_object(np.random.default_rng(0), 'grains', 64, dict(phase_max=0.05, absorption=3.0))
    assert abs(np.abs(o).min() - math.exp(-3)) < 0.01 and np.abs(np.angle(o)).max() <= 0.05 + 1e-6
    ms = [C.draw_material(np.random.default_rng(s)) for s in range(300)]
    assert 0.15 < np.mean([m['absorption'] == 0 for m in ms]) < 0.35              # "none" is drawn
    assert max(m['absorption'] for m in ms) > 2.0 and max(m['phase_max'] for m in ms) > 2.8   # "strong" is drawn
    assert min(m['phase_max'] for m in ms) < 0.2                                    # "weak" is drawn
    with pytest.raises(ValueError, match='phase_max=4'): C.thickness_to_object(np.zeros((2, 2)), 4.0, 0.0)
    with pytest.raises(ValueError, match="family='camera'"): C.make_object(np.random.default_rng(0), 'camera')


@pytest.mark.parametrize('variant', C.PROBE_VARIANTS)
def test_probe_variants(variant):
    base = C.run1084_probe(64)
    for seed in SEEDS:
        p, info = C.make_probe(np.random.default_rng(seed), 64, variant)
        assert p.shape == (64, 64) and p.dtype == np.complex64 and info['variant'] == variant
        np.testing.assert_allclose((np.abs(p) ** 2).sum(), (np.abs(base) ** 2).sum(), rtol=1e-3)
        assert 8 < info['diameter80'] < 0.8 * 64, info
        np.testing.assert_array_equal(C.make_probe(np.random.default_rng(seed), 64, variant)[0], p)
    if variant != 'run1084':                       # a variation really differs from the bundled probe
        assert not np.allclose(C.make_probe(np.random.default_rng(0), 64, variant)[0], base, atol=1e-3)


def test_probe_optics():
    base = C.run1084_probe(64)
    np.testing.assert_allclose(C.fresnel_propagate(C.fresnel_propagate(base, 30.0), -30.0), base, atol=1e-4)
    assert C.probe_diameter(C.fresnel_propagate(base, 15.0)) > C.probe_diameter(base) + 5         # defocus: larger
    assert C.probe_diameter(C.rescale_probe(base, 0.6)) < 0.75 * C.probe_diameter(base)
    g = C.gaussian_probe(64, 20.0)                                  # 80% of a Gaussian inside D sqrt(ln5 / 2)
    assert abs(C.probe_diameter(g) - 20 * math.sqrt(math.log(5) / 2)) < 1.5
    with pytest.raises(ValueError, match="'laser'"): C.make_probe(np.random.default_rng(0), 64, 'laser')


@pytest.mark.parametrize('kind', C.SCAN_KINDS)
def test_scan_patterns_density(kind):
    x, y = C.scan_positions(np.random.default_rng(0), kind, 144, 8.0)
    assert len(x) == len(y) == 144 and x.min() == 0 and y.min() == 0
    area = (x.max() * y.max()) if kind != 'spiral' else math.pi * (x.max() / 2) ** 2
    assert 0.6 < area / (144 * 8.0 ** 2) < 1.4, (kind, area)       # one position per step^2
    with pytest.raises(ValueError, match="'zigzag'"): C.scan_positions(np.random.default_rng(0), 'zigzag', 4, 1.0)


def test_sample_scan_tiny():
    raw = C.sample_scan(np.random.default_rng(5), N=32, n=12)
    c = raw.metadata['corpus']
    assert len(raw) == 12 and raw.diff3d.shape == (12, 32, 32) and raw.Y.shape == (12, 32, 32)
    assert raw.probeGuess.shape == (32, 32) and np.isfinite(raw.diff3d).all() and raw.diff3d.min() >= 0
    assert c['family'] in C.TRAINING_FAMILIES and not c['held_out']
    assert c['scan'] in C.SCAN_KINDS and c['probe']['variant'] in C.PROBE_VARIANTS
    assert 1e4 <= c['nphotons'] <= 1e9 and 0.2 <= c['overlap'] <= 0.8
    photons = (raw.diff3d.astype(np.float64) ** 2).sum(axis=(1, 2)).mean()
    assert abs(photons / c['nphotons'] - 1) < 0.05, (photons, c['nphotons'])
    H, W = raw.objectGuess.shape
    assert raw.xcoords.min() >= 16 and raw.ycoords.min() >= 16 and raw.xcoords.max() <= W - 16 and raw.ycoords.max() <= H - 16
    json.dumps(c)                                                               # the record is JSON-able
    np.testing.assert_array_equal(C.sample_scan(np.random.default_rng(5), N=32, n=12).diff3d, raw.diff3d)


def test_sample_scan_overrides_and_held_out_guard():
    raw = C.sample_scan(np.random.default_rng(1), N=32, n=8, families=['fibres'], scan_kinds=['spiral'],
                        probe_variants=['gaussian'], nphotons=1e6, overlap=0.5)
    c = raw.metadata['corpus']
    assert (c['family'], c['scan'], c['probe']['variant'], c['nphotons'], c['overlap']) == ('fibres', 'spiral', 'gaussian', 1e6, 0.5)
    with pytest.raises(ValueError, match='held out'): C.sample_scan(np.random.default_rng(0), N=32, n=4, families=['labyrinth'])
    with pytest.raises(ValueError, match='unknown'): C.sample_scan(np.random.default_rng(0), N=32, n=4, families=['camera'])
    held = C.sample_scan(np.random.default_rng(0), N=32, n=4, families=list(C.HELD_OUT_FAMILIES), allow_held_out=True)
    assert held.metadata['corpus']['held_out']
    drawn = {C.sample_scan(np.random.default_rng(s), N=32, n=4).metadata['corpus']['family'] for s in range(30)}
    assert not drawn & set(C.HELD_OUT_FAMILIES) and len(drawn) >= 5


def test_corpus_spec_is_json_and_matches_the_draws():
    spec = json.loads(json.dumps(C.corpus_spec(N=64, n=64)))
    assert spec['N'] == 64 and spec['scan']['nphotons'] == [1e4, 1e9] and spec['scan']['overlap'] == [0.2, 0.8]
    assert spec['material']['phase_max'][1] == pytest.approx(math.pi)
    assert spec['probe']['variants'] == list(C.PROBE_VARIANTS) and spec['scan']['kinds'] == list(C.SCAN_KINDS)
    with pytest.raises(ValueError, match='held out'): C.corpus_spec(families=['dendrites'])
