"""What the coder tests share: a tiny random BERT encoder, a small ICD-9 subgraph and the term index
over it (each built once per test module): the first stage and the evidence view both read it."""

from __future__ import annotations

import pytest

from tests.tiny import tiny_bert

PREFIXES = ("250.", "401.", "428.", "427.", "584.", "38.9")


@pytest.fixture(scope="module")
def encoder_dir(tiny_tokenizer_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    d = tmp_path_factory.mktemp("tiny_bert")
    tiny_bert(len(tok), head="none").save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def subgraph():
    import kgraph

    G = kgraph.build_graph()
    codes = [n for n, d in G.nodes(data=True) if d.get("type") == "code" and n.startswith(PREFIXES)]
    keep = set(codes) | {t for c in codes for t in G.successors(c)}
    return G.subgraph(keep).copy()


@pytest.fixture(scope="module")
def index_dir(encoder_dir, subgraph, tmp_path_factory):
    from coder.retrieval.index import IndexConfig, build_index

    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(encoder_dir, out, subgraph, IndexConfig(pooling="cls"), progress=False)
    return out
