"""Shared fixtures: the default model (loaded once per session; fetched and converted on first use)."""

import pytest


@pytest.fixture(scope="session")
def default_model():
    from tempo_jax.loading import load_model

    return load_model(verbose=False)
