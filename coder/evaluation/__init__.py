"""coder.evaluation: metrics over (docs, codes) arrays (exact and hierarchical), `kept coder eval`'s
run layout, and `kept report` (medians over seeds, bootstrap CIs)."""
