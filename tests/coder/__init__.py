"""Tests of coder/: training on every head and device path, and learning on a handful of notes."""
