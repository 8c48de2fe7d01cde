"""Build kgraph/data/icd9_{dx,proc}.csv from the public CMS ICD-9-CM v32 files.

Run once by a maintainer (the outputs are committed); the package never reads the sources:
    python scripts/build_icd9_data.py --src ../shared/data/icd9cm

Output columns: code (dotted), parent (dotted, empty for chapters), level, depth, leaf,
short_title, long_title. Procedures have no internal-node titles in the sources: their chapter
titles are the chapter names of ICD-9-CM volume 3 (tabular list), and 2/3-digit nodes keep an
empty title, marked `title_source=none`, rather than an invented one.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from kgraph.codes import DX, PROC, dotted, normalize_code

# ICD-9-CM volume 3 chapters, as printed in the tabular list (ranges of 2-digit categories).
PROC_CHAPTERS = [
    ("00", "00", "Procedures and interventions, not elsewhere classified"),
    ("01", "05", "Operations on the nervous system"),
    ("06", "07", "Operations on the endocrine system"),
    ("08", "16", "Operations on the eye"),
    ("17", "17", "Other miscellaneous diagnostic and therapeutic procedures"),
    ("18", "20", "Operations on the ear"),
    ("21", "29", "Operations on the nose, mouth, and pharynx"),
    ("30", "34", "Operations on the respiratory system"),
    ("35", "39", "Operations on the cardiovascular system"),
    ("40", "41", "Operations on the hemic and lymphatic system"),
    ("42", "54", "Operations on the digestive system"),
    ("55", "59", "Operations on the urinary system"),
    ("60", "64", "Operations on the male genital organs"),
    ("65", "71", "Operations on the female genital organs"),
    ("72", "75", "Obstetrical procedures"),
    ("76", "84", "Operations on the musculoskeletal system"),
    ("85", "86", "Operations on the integumentary system"),
    ("87", "99", "Miscellaneous diagnostic and therapeutic procedures"),
]
COLUMNS = ["code", "parent", "level", "depth", "leaf", "short_title", "long_title", "title_source"]


def read_titles(path: Path, encoding: str) -> dict[str, str]:
    titles = {}
    with open(path, encoding=encoding) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            code, _, title = line.partition(" ")
            if not title.strip():
                raise SystemExit(f"{path}:{lineno}: no title after code {code!r}")
            titles[code] = title.strip()
    return titles


def build_dx(src: Path) -> list[dict]:
    long_t = read_titles(src / "CMS32_DESC_LONG_DX.txt", "latin-1")
    short_t = read_titles(src / "CMS32_DESC_SHORT_DX.txt", "latin-1")
    rows = []
    with open(src / "icd9_dx_hierarchy.csv", encoding="utf-8") as fh:
        hier = list(csv.DictReader(fh))
    by_raw = {r["code"]: r["dotted"] for r in hier}
    for r in hier:
        code = r["dotted"]
        parent = "" if r["parent"] == "n/a" else by_raw[r["parent"]]
        leaf = r["is_leaf"] == "True"
        if "-" in code:
            level, depth = ("chapter", 0) if not parent else ("section", 1)
        else:
            depth = 2 + len(code.partition(".")[2])
            level = "category" if depth == 2 else "code"
        raw = r["code"]
        rows.append({
            "code": code, "parent": parent, "level": level, "depth": depth, "leaf": leaf,
            # CMS titles are authoritative for billable codes; internal nodes have the tabular title.
            "short_title": short_t.get(raw, r["short_title"]),
            "long_title": long_t.get(raw, r["long_title"] or r["short_title"]),
            "title_source": "cms32" if raw in long_t else "icd9cm-tabular",
        })
    missing = set(long_t) - {r["code"] for r in hier}
    if missing:
        raise SystemExit(f"{len(missing)} CMS diagnosis codes missing from the hierarchy: {sorted(missing)[:5]}")
    return rows


def build_proc(src: Path) -> list[dict]:
    long_t = read_titles(src / "CMS32_DESC_LONG_SG.txt", "latin-1")
    short_t = read_titles(src / "CMS32_DESC_SHORT_SG.txt", "latin-1")
    rows: dict[str, dict] = {}
    chapter_of = {}
    for lo, hi, title in PROC_CHAPTERS:
        cid = f"{lo}-{hi}"
        rows[cid] = {"code": cid, "parent": "", "level": "chapter", "depth": 0, "leaf": False,
                     "short_title": title, "long_title": title, "title_source": "icd9cm-vol3-chapter"}
        for n in range(int(lo), int(hi) + 1):
            chapter_of[f"{n:02d}"] = cid
    for raw in sorted(long_t):
        code = dotted(raw, PROC)
        rows[code] = {"code": code, "parent": "", "level": "code", "depth": 2 + len(code.partition(".")[2]),
                      "leaf": True, "short_title": short_t[raw], "long_title": long_t[raw], "title_source": "cms32"}
        # Internal nodes exist in the hierarchy but have no title in the public files.
        while True:
            head, _, tail = code.partition(".")
            parent = head if len(tail) == 1 else f"{head}.{tail[:-1]}"
            rows[code]["parent"] = parent
            if parent in rows:
                break
            depth = 2 + len(parent.partition(".")[2])
            rows[parent] = {"code": parent, "parent": "", "level": "category" if depth == 2 else "code",
                            "depth": depth, "leaf": False, "short_title": "", "long_title": "",
                            "title_source": "none"}
            if depth == 2:
                rows[parent]["parent"] = chapter_of[parent]
                break
            code = parent
    return sorted(rows.values(), key=lambda r: (r["depth"] > 0, r["code"]))


def write(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/icd9cm")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "kgraph/data")
    args = ap.parse_args()
    dx, proc = build_dx(args.src), build_proc(args.src)
    for r in dx:  # sanity: every stored code round-trips through the normaliser
        assert normalize_code(r["code"]) == r["code"], r
    write(dx, args.out / "icd9_dx.csv")
    write(proc, args.out / "icd9_proc.csv")
    print(f"wrote {len(dx)} diagnosis and {len(proc)} procedure nodes to {args.out}")


if __name__ == "__main__":
    main()
