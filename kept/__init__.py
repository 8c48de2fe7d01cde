"""kept: knowledge-graph toolkit and prompt-based trainer for ICD coding."""

__version__ = "0.1.0"
