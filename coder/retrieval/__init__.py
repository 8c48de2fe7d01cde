"""coder.retrieval: the full label space: a term index, a first stage over note spans (dense,
lexical or both, with evidence), candidates on disk, the prompted coder's rerank, and semantic
search of the graph; `cli` adds `kept coder index | retrieve | rerank`."""
