"""What the retrieval tests share: a tiny random BERT encoder, a small ICD-9 subgraph, the term index
over it, and a briefly trained prompted coder to rerank with (each built once per test module)."""

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


@pytest.fixture(scope="module")
def coder_dir(tiny_longformer_dir, tiny_data_dir, tmp_path_factory):
    from coder.config import load_config
    from coder.training import train_coder

    out = tmp_path_factory.mktemp("coder")
    cfg = load_config(epochs=1, batch_size=4, grad_accum=1, eval_batch_size=8, lr=1e-3, warmup_ratio=0.0,
                      max_length=256, device="cpu", seed=0, prompt_codes=4)
    train_coder(tiny_data_dir / "50", tiny_longformer_dir, out, cfg)
    return out / "best"
