"""Test-session settings: keep every cache and output out of the user's home and the repository."""
import os, tempfile
import pytest

@pytest.fixture(scope='session', autouse=True)
def _isolated_cache():
    d = tempfile.mkdtemp(prefix='ptycho_torch_nb_test_cache_')
    old = os.environ.get('PTYCHO_TORCH_NB_CACHE')
    os.environ['PTYCHO_TORCH_NB_CACHE'] = d
    yield d
    if old is None: os.environ.pop('PTYCHO_TORCH_NB_CACHE', None)
    else: os.environ['PTYCHO_TORCH_NB_CACHE'] = old

def pytest_configure(config):
    config.addinivalue_line('markers', 'browser: opens the docs site in headless Chromium (skipped when none is installed)')
    config.addinivalue_line('markers', 'slow: a longer test (still part of the default suite)')
