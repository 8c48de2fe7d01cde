"""Graph build from a synthetic MRCONSO of N rows (real 18-column layout), against pandas.read_csv.

Prints one JSON line per (N, method): seconds, rows/s, peak RSS (each measured in a fresh child
process so peaks do not mix), and the ratio to the pandas baseline of the same file.

    python benchmarks/graph_build.py --rows 1000000 5000000

Like a real release, the file is sorted by CUI and the number of concepts linked to ICD-9-CM is
fixed (real UMLS has ~20k, whatever its size): a larger N adds non-ICD rows, so the graph stays
the same size and any RSS growth with N would be the loader holding rows it should stream.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SABS = ["SNOMEDCT_US", "MSH", "MTH", "NCI", "MEDCIN", "RXNORM", "LNC"]
WORDS = ("acute chronic diabetes mellitus type renal failure heart disease fracture femur "
         "hypertension essential malignant neoplasm lung infection sepsis pneumonia anemia "
         "deficiency iron coronary artery bypass graft insulin dependent unspecified").split()


def write_mrconso(path: Path, n_rows: int, n_icd9_cuis: int = 15000, seed: int = 0) -> None:
    from kgraph.icd9 import load_icd9_nodes

    rng = random.Random(seed)
    codes = [n.code for n in load_icd9_nodes() if n.leaf]
    rows_per_cui = 5
    n_cuis = max(n_rows // rows_per_cui, n_icd9_cuis)
    linked = set(rng.sample(range(n_cuis), n_icd9_cuis))
    written = 0
    with open(path, "w", encoding="utf-8") as fh:
        for c in range(n_cuis):
            cui = f"C{c:07d}"
            for r in range(rows_per_cui):
                if written >= n_rows:
                    return
                aui = f"A{written:08d}"
                lat = "ENG" if r != 4 else rng.choice(["ENG", "SPA", "FRE"])
                if r == 0 and c in linked:
                    sab, tty, code = "ICD9CM", "PT", rng.choice(codes)
                else:
                    sab, tty, code = rng.choice(SABS), rng.choice(["PT", "SY", "PN"]), f"{c}"
                text = " ".join(rng.choices(WORDS, k=rng.randint(2, 7))).capitalize()
                ts, stt, pref = ("P", "PF", "Y") if r == 0 else ("S", "VO", "N")
                supp = "O" if rng.random() < 0.03 else "N"
                fh.write(f"{cui}|{lat}|{ts}|L{c:07d}|{stt}|S{written:07d}|{pref}|{aui}|||"
                         f"{code}|{sab}|{tty}|{code}|{text}|0|{supp}|256|\n")
                written += 1


CHILD_KEPT = """
import resource, sys, time
t = time.perf_counter()
from kgraph.graph import build_graph
G = build_graph(sys.argv[1], progress=False)
dt = time.perf_counter() - t
print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, G.number_of_nodes())
"""
CHILD_PANDAS = """
import csv, resource, sys, time
import pandas as pd
t = time.perf_counter()
df = pd.read_csv(sys.argv[1], sep="|", header=None, dtype=str, quoting=csv.QUOTE_NONE,
                 keep_default_na=False, usecols=range(18))
dt = time.perf_counter() - t
print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(df))
"""
CHILD_BASE = """
import resource, sys, time
t = time.perf_counter()
from kgraph.graph import build_graph
G = build_graph(progress=False)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, G.number_of_nodes())
"""


def measure(code: str, *args: str) -> tuple[float, float, int]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    secs, rss_kib, count = out.stdout.split()
    return float(secs), int(rss_kib) / 1024, int(count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--workdir", default=None, help="where to write the synthetic files (default: a temp dir)")
    args = ap.parse_args()
    base_s, base_rss, base_nodes = measure(CHILD_BASE)
    print(json.dumps({"bench": "graph_build", "method": "icd9-only (no MRCONSO)", "seconds": round(base_s, 2),
                      "peak_rss_mib": round(base_rss), "nodes": base_nodes}), flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in args.rows:
            path = Path(tmp) / f"MRCONSO_{n}.RRF"
            t = time.perf_counter()
            write_mrconso(path, n)
            gen = time.perf_counter() - t
            size_mb = os.path.getsize(path) / 2**20
            p_s, p_rss, p_rows = measure(CHILD_PANDAS, str(path))
            k_s, k_rss, k_nodes = measure(CHILD_KEPT, str(path))
            common = {"bench": "graph_build", "rows": n, "file_mib": round(size_mb, 1),
                      "generate_seconds": round(gen, 1)}
            print(json.dumps({**common, "method": "pandas.read_csv (baseline)", "seconds": round(p_s, 2),
                              "rows_per_s": round(p_rows / p_s), "peak_rss_mib": round(p_rss)}), flush=True)
            print(json.dumps({**common, "method": "kept build_graph (stream)", "seconds": round(k_s, 2),
                              "rows_per_s": round(n / k_s), "peak_rss_mib": round(k_rss),
                              "speed_vs_pandas": round(p_s / k_s, 2),
                              "rss_over_icd9_only_mib": round(k_rss - base_rss), "nodes": k_nodes}), flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
