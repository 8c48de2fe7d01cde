"""Tests of coder/data/: MIMIC-III preparation, the synthetic corpus, note preprocessing."""
