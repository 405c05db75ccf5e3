"""Test-session settings: keep every cache and output out of the user's home and the repository."""
import os, shutil, tempfile
import pytest

@pytest.fixture(scope='session', autouse=True)
def _isolated_cache():
    "A grouping-cache root of the session's own, removed (with what the tests cached) when the session ends."
    d = tempfile.mkdtemp(prefix='ptycho_torch_nb_test_cache_')
    old = os.environ.get('PTYCHO_TORCH_NB_CACHE')
    os.environ['PTYCHO_TORCH_NB_CACHE'] = d
    yield d
    if old is None: os.environ.pop('PTYCHO_TORCH_NB_CACHE', None)
    else: os.environ['PTYCHO_TORCH_NB_CACHE'] = old
    shutil.rmtree(d, ignore_errors=True)

def pytest_configure(config):
    config.addinivalue_line('markers', 'browser: opens the docs site in headless Chromium (skipped when none is installed)')
    config.addinivalue_line('markers', 'slow: a longer test (still part of the default suite)')

@pytest.fixture(scope='session')
def tiny_files(tmp_path_factory):
    "A tiny simulated Run1084 scan written as train/test NPZ files (16 and 8 patterns, N=64)."
    from ptycho_torch_nb import workflow as W
    d = tmp_path_factory.mktemp('tiny_scan')
    train, test = W.simulate_run1084(16, 8, seed=3)
    train.to_file(d / 'train.npz'); test.to_file(d / 'test.npz')
    return d / 'train.npz', d / 'test.npz'
