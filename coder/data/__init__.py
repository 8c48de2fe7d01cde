"""Data shipped with the coder: KEPT's MIMIC-III-rare50 admission lists (MIT, see README.md)."""
