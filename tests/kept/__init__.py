"""Tests of kept/: I/O, devices, the training loop, results, the CLI on bad inputs, the guide, the demo."""
