"""coder.models: what scores a note against codes: prompts and verbalizer, the prompted coder (KEPT),
the label-attention and TF-IDF baselines, partial tuning, longify, and the coder checkpoint folder."""
