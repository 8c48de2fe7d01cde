"""Tests of coder/models/: prompts and verbalizer, longify, the TF-IDF baseline."""
