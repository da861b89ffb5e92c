"""Fixtures of the trainer's tests that more than one module uses."""

from __future__ import annotations

import pytest

from ml.data import cache, storage


@pytest.fixture
def fresh_clients():
    """No S3 client or cache state carried over from another test (the modules that touch the cache
    use it for every test: `pytestmark = pytest.mark.usefixtures("fresh_clients")`)."""
    storage.reset_clients()
    cache.forget()
    yield
    storage.reset_clients()
    cache.forget()
