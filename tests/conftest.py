"""Session fixtures every test folder shares: the tiny world of tests/tiny.py saved once (its
tokenizer, a tiny random Longformer MLM, a tiny data set in the contract layout), and a clean exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import TINY_CODES, build_tokenizer, tiny_longformer, tiny_notes, write_set


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_tok")
    build_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_longformer_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random LongformerForMaskedLM (2 layers, hidden 32, window 16, 512 tokens) + tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    d = tmp_path_factory.mktemp("tiny_longformer")
    tiny_longformer(len(tok), tok.pad_token_id).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """DIR/dataset.json + DIR/50/ with 24 train, 10 dev, 10 test notes over TINY_CODES."""
    root = tmp_path_factory.mktemp("tiny_data")
    (root / "dataset.json").write_text(json.dumps({"source": "fixture", "seed": 0}), encoding="utf-8")
    write_set(root / "50", TINY_CODES, {"train": tiny_notes(24, 1), "dev": tiny_notes(10, 2),
                                        "test": tiny_notes(10, 3)})
    return root


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with pytest's own status once the summary is printed: native libraries loaded by the
    tests (torch and FAISS threads, the embedded JVM of the Neo4j tests) have crashed the
    interpreter's teardown (SIGSEGV, rc 139) after every test had passed."""
    import os
    import sys

    if _EXIT_STATUS and os.environ.get("KEPT_TEST_HARD_EXIT", "1") == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[0])
