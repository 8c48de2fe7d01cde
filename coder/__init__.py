"""coder: data sets, prompts, models, training, retrieval and metrics for prompt-based ICD coding."""
