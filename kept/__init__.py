"""kept: knowledge-graph toolkit and prompt-based trainer for ICD coding.

This package is the shell around the stages (kgraph, contrastive, coder): the `kept` command and its
demo, and the helpers every stage shares, each in one place (config, device, hf, encoder, trainer, io).
"""

__version__ = "0.1.0"
