"""Fixtures of the trainer's tests that more than one module uses."""

from __future__ import annotations

import pytest

from ml.data import cache, storage
from tests.peers.once import made_once
from tests.peers.trainkit import make_data


@pytest.fixture
def fresh_clients():
    """No S3 client or cache state carried over from another test (the modules that touch the cache
    use it for every test: `pytestmark = pytest.mark.usefixtures("fresh_clients")`)."""
    storage.reset_clients()
    cache.forget()
    yield
    storage.reset_clients()
    cache.forget()


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """The trainer tests' tiny dataset (trainkit.make_data), written once per test run
    (tests/peers/once.py): no test changes it (one that needs a broken dataset copies it first)."""
    return made_once(tmp_path_factory, "syn", make_data)
