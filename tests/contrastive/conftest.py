"""The bundled ICD-9-CM graph, built once per test module (the sampler and HSAP read it, never change it)."""

import pytest

import kgraph


@pytest.fixture(scope="module")
def G():
    return kgraph.build_graph(progress=False)
