"""Tests of coder/evaluation/: metrics against scikit-learn, hierarchical metrics, kept report."""
