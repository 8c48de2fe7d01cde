"""Tests of coder/retrieval/: the term index, the first stage (dense, lexical, hybrid), rerank."""
