"""kept's tests, one folder per package (kgraph, contrastive, coder and its subpackages, kept)."""
