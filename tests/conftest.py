"""Shared fixtures and the layout of the suite.

tests/unit/         the library: model/ (forward, taps, layouts, interventions), engine/ (masks,
                    rules, drivers, golden traces, speculative, sweeps, search), measures/ (metrics,
                    statistics, quality, probes), research/ (the harness on toy experiments),
                    test_import_graph.py
tests/integration/  commands end to end (CLI, nothing lost, reports in a browser, README walk)
tests/experiments/  this repository's research experiments and corpus
tests/reference/    tests against independent references: HF transformers in torch float32, HF's GGUF
                    loader, the real default model
All but the ``heavy`` ones run by default (`python -m pytest -q`); `-m heavy` runs those (minutes
each: the real Gemma 3 270M against HF, the README walk, and on the default model an rq3.1 quick
run, the unstacked layout's pinned traces and CLI run, a second speculative setting). `-m "not slow"` leaves out the tests of more than a few
seconds (every test that uses the ``default_model`` fixture is marked here; the others carry
``@pytest.mark.slow``); `python -m pytest -q tests/unit -m "not slow"` is the fast unit suite (tiny
random models and hand-computed cases, about 2 minutes on 2 cores). `-m "not reference"` leaves out
tests/reference. Helpers shared by all (``tinymodel.py``, ``golden_traces.py``, ``repo.py``,
``data/``) live here, and this folder is on ``sys.path``.
"""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (HERE / "reference") in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reference)
        if "default_model" in getattr(item, "fixturenames", ()):  # loads the real model: slow
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. The suite compiles thousands of
    programs in one process; XLA:CPU maps memory for each, and without this the process ran past
    the kernel's map-count limit (vm.max_map_count 65530) late in the suite and crashed inside the
    compiler (an abort or segfault, no Python error). Parameters and fixtures are untouched."""
    yield
    import jax

    jax.clear_caches()


@pytest.fixture(scope="session")
def default_model():
    """The default model (SmolLM2-135M-Instruct), loaded once; fetched and converted on first use."""
    from tempo_jax.loading import load_model

    return load_model(verbose=False)


@pytest.fixture(scope="session")
def tiny_model():
    """(hf_model, cfg, params) of the tiny random Llama of ``tinymodel.tiny(0)``."""
    from tinymodel import tiny

    return tiny(0)
