"""MIMIC-III v1.4 -> the kept data-set layout (MIMIC-III-full, -50 and -rare50), the CAML way.

One document per admission (HADM_ID): its discharge summaries (NOTEEVENTS category
"Discharge summary"), the "Report" first and any "Addendum" after it, each group by CHARTDATE,
concatenated; labels are the admission's diagnosis then procedure codes (DIAGNOSES_ICD,
PROCEDURES_ICD, SEQ_NUM order, duplicates removed) with their dots restored by kind: `4019` ->
`401.9`, `E8788` -> `E878.8`, procedure `9671` -> `96.71` (diagnosis `9671` is `967.1`).

MIMIC-III-rare50 is, by default, KEPT's own set (`rare50="kept"`): the 249 / 20 / 142 admissions
listed in KEPT's release (shipped in `coder/data/kept_rare50/`), each with its note as built here and its
LABELS replaced by the listed rare codes, as KEPT does. `rare50="rule"` derives a set from the
paper's rule instead (`coder.data.datasets.select_rare50`).

Nothing is dropped silently: every skipped row or document is counted, logged and written to
`dataset.json` under "warnings".
"""

from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from coder.data.datasets import SPLITS, Document, derive_sets, seeded_split, write_dataset
from coder.data.notes import preprocess
from kept.errors import InputFileError, KeptError
from kept.io import input_error, is_gzip
from kgraph.codes import DX, PROC, normalize_code
from kgraph.icd9 import bundled_descriptions

log = logging.getLogger(__name__)

NOTE_COLUMNS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME",
                "CATEGORY", "DESCRIPTION", "CGID", "ISERROR", "TEXT"]
CODE_COLUMNS = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"]
NOTE_USED = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CATEGORY", "DESCRIPTION", "ISERROR",
             "TEXT"]
DISCHARGE = "discharge summary"
# CAML's split id files, one HADM_ID a line, no header.
SPLIT_FILES = {(size, s): f"{s}_{size}_hadm_ids.csv" for size in ("full", "50") for s in SPLITS}
# CAML's full split sizes 47,723 / 1,631 / 3,372, as fractions, for the seeded fallback split.
CAML_FRACTIONS = (0.905, 0.031, 0.064)
RARE50_VARIANTS = ("kept", "rule")
KEPT_RARE50 = Path(__file__).resolve().parent / "kept_rare50"  # package data (MIT, README.md there)
KEPT_RARE50_SPLITS = KEPT_RARE50 / "kept_rare50_splits.csv"
KEPT_RARE50_CODES = KEPT_RARE50 / "kept_rare50_codes.txt"


@dataclass
class MimicConfig:
    seed: int = 0
    lowercase: bool = True  # KEPT lower-cases notes
    rare50: str = "kept"  # kept: KEPT's released admission lists | rule: the paper's rule on this data
    top_n: int = 50
    rare_n: int = 50
    rare_max_count: int = 10  # the paper: codes with < 10 occurrences
    rare_min_train: int = 1  # train shots a rare code needs (the paper's rule: 1)
    rare_exclude: tuple[str, ...] = ()
    chunksize: int = 20_000  # NOTEEVENTS rows per chunk: the real file is ~4 GB
    fractions: tuple[float, float, float] = CAML_FRACTIONS
    progress: bool = True

    def __post_init__(self) -> None:
        if self.rare50 not in RARE50_VARIANTS:
            raise KeptError(f"rare50 must be one of {', '.join(RARE50_VARIANTS)}; got {self.rare50!r}")


@dataclass
class Issues:
    """Counted warnings, with a few examples each (file:line or id) for the report."""
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    info: Counter = field(default_factory=Counter)

    def add(self, kind: str, example: str = "") -> None:
        self.counts[kind] += 1
        if example and len(self.examples[kind]) < 5:
            self.examples[kind].append(example)

    def note(self, kind: str, n: int = 1) -> None:
        """Count something worth reporting that is not a problem (e.g. addenda merged)."""
        self.info[kind] += n

    def report(self) -> dict:
        return {k: {"count": n, "examples": self.examples.get(k, [])}
                for k, n in sorted(self.counts.items()) if n}


def find_table(mimic_dir: Path, name: str) -> Path:
    """`NAME.csv` or `NAME.csv.gz` in `mimic_dir`."""
    for suffix in (".csv", ".csv.gz"):
        p = mimic_dir / f"{name}{suffix}"
        if p.is_file():
            return p
    raise InputFileError(mimic_dir / f"{name}.csv", f"file not found (expected MIMIC-III v1.4 "
                                                    f"{name}.csv or {name}.csv.gz)")


_WHAT = "a MIMIC-III v1.4 CSV, UTF-8 (.csv.gz accepted)"


def _read_csv(path: Path, **kwargs):
    """pd.read_csv that reads gzip data whatever the file's name (decoding errors: `input_error`)."""
    return pd.read_csv(path, compression="gzip" if is_gzip(path) else None, encoding="utf-8", **kwargs)


def _check_columns(path: Path, expected: list[str]) -> None:
    try:
        with input_error(path, _WHAT):
            header = list(_read_csv(path, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputFileError(path, f"not a readable CSV: {_one_line(exc)}", line=1) from exc
    missing = [c for c in expected if c not in header]
    if missing:
        raise InputFileError(path, f"missing columns {missing}; MIMIC-III v1.4 has {expected}",
                             line=1)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def read_code_table(path: Path, kind: str, issues: Issues) -> dict[str, list[str]]:
    """HADM_ID -> dotted codes in SEQ_NUM order, from DIAGNOSES_ICD or PROCEDURES_ICD."""
    _check_columns(path, CODE_COLUMNS)
    try:
        with input_error(path, _WHAT):
            df = _read_csv(path, dtype=str, keep_default_na=False, usecols=CODE_COLUMNS)
    except pd.errors.ParserError as exc:
        raise InputFileError(path, f"malformed CSV: {_one_line(exc)}") from exc
    known = bundled_descriptions()
    df["_line"] = df.index + 2  # header is line 1; these tables have no multi-line fields
    df["_seq"] = pd.to_numeric(df["SEQ_NUM"], errors="coerce")
    df = df.sort_values(["HADM_ID", "_seq", "_line"], kind="stable")
    out: dict[str, list[str]] = defaultdict(list)
    for hadm, raw, line in zip(df["HADM_ID"], df["ICD9_CODE"], df["_line"]):
        where = f"{path.name}:{line}"
        if not hadm.strip():
            issues.add(f"{kind}_row_without_hadm_id", where)
            continue
        if not raw.strip():
            issues.add(f"{kind}_row_without_code", where)  # MIMIC has a few of these
            continue
        try:
            code = normalize_code(raw, kind=kind)
        except KeptError:
            issues.add(f"{kind}_malformed_code", f"{where} {raw!r}")
            continue
        if code not in known:
            issues.add(f"{kind}_code_not_in_icd9cm_v32_kept", f"{where} {code}")
        codes = out[hadm.strip()]
        if code not in codes:
            codes.append(code)
    return dict(out)


def read_discharge_summaries(path: Path, issues: Issues, lowercase: bool = True,
                             chunksize: int = 20_000, progress: bool = True
                             ) -> dict[str, tuple[str, str]]:
    """HADM_ID -> (SUBJECT_ID, preprocessed text): reports first, addenda after, by CHARTDATE."""
    _check_columns(path, NOTE_USED)  # the others (CHARTTIME, CGID...) are not needed
    parts: dict[str, list[tuple[int, str, int, str]]] = defaultdict(list)
    subjects: dict[str, str] = {}
    bar = tqdm(desc=f"reading {path.name}", unit=" notes", disable=not progress)
    try:
        with input_error(path, _WHAT):
            reader = _read_csv(path, dtype=str, keep_default_na=False, usecols=NOTE_USED, chunksize=chunksize)
            for chunk in reader:
                bar.update(len(chunk))
                chunk = chunk[chunk["CATEGORY"].str.strip().str.lower() == DISCHARGE]
                for row in chunk.itertuples(index=False):
                    where = f"ROW_ID {row.ROW_ID}"
                    if row.ISERROR.strip() == "1":
                        issues.add("note_marked_iserror_dropped", where)
                        continue
                    hadm = row.HADM_ID.strip()
                    if not hadm:
                        issues.add("note_without_hadm_id_dropped", where)
                        continue
                    addendum = 0 if row.DESCRIPTION.strip().lower() == "report" else 1
                    rid = int(row.ROW_ID) if row.ROW_ID.strip().isdigit() else 0
                    parts[hadm].append((addendum, row.CHARTDATE, rid, preprocess(row.TEXT, lowercase)))
                    subjects.setdefault(hadm, row.SUBJECT_ID.strip())
    except pd.errors.ParserError as exc:
        raise InputFileError(path, f"malformed CSV: {_one_line(exc)}") from exc
    finally:
        bar.close()
    notes = {}
    for hadm, items in parts.items():
        text = " ".join(t for *_, t in sorted(items) if t)
        if not text:
            issues.add("empty_discharge_summary_dropped", f"HADM_ID {hadm}")
            continue
        if len(items) > 1:
            issues.note("admissions_with_addenda_concatenated")
        notes[hadm] = (subjects[hadm], text)
    return notes


def read_split_ids(splits_dir: Path, size: str) -> dict[str, list[str]] | None:
    """CAML's id lists for `size` ("full" or "50"); None if none of its files is there."""
    paths = {s: splits_dir / SPLIT_FILES[(size, s)] for s in SPLITS}
    present = [p for p in paths.values() if p.is_file()]
    if not present:
        return None
    if len(present) < len(paths):
        missing = [p.name for p in paths.values() if not p.is_file()]
        raise InputFileError(splits_dir, f"incomplete {size} split files: missing {missing}")
    out = {}
    for s, p in paths.items():
        ids = []
        with open(p, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                v = line.strip().strip(",")
                if not v:
                    continue
                if not v.isdigit():
                    if i == 1 and not ids:
                        continue  # tolerate a header line
                    raise InputFileError(p, f"expected one HADM_ID per line, got {v!r}", line=i)
                ids.append(v)
        out[s] = ids
    return out


def _docs_for(ids: list[str], docs: dict[str, Document], issues: Issues, label: str
              ) -> list[Document]:
    out = []
    for h in ids:
        if h in docs:
            out.append(docs[h])
        else:
            issues.add(f"{label}_split_id_without_document", f"HADM_ID {h}")
    return out


def read_kept_rare50(splits_path: str | Path = KEPT_RARE50_SPLITS, codes_path: str | Path = KEPT_RARE50_CODES
                     ) -> tuple[list[str], dict[str, list[tuple[str, str, list[str]]]]]:
    """KEPT's rare-50 lists: (the 50 codes in file order, {split: [(SUBJECT_ID, HADM_ID, codes)]}).
    A listed admission's codes keep their order, a code listed twice (KEPT has two) once."""
    codes_path, splits_path = Path(codes_path), Path(splits_path)
    codes = [c.strip() for c in codes_path.read_text(encoding="utf-8").splitlines() if c.strip()]
    known = set(codes)
    out: dict[str, list[tuple[str, str, list[str]]]] = {s: [] for s in SPLITS}
    with open(splits_path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != ["split", "SUBJECT_ID", "HADM_ID", "LABELS"]:
            raise InputFileError(splits_path, f"expected header split,SUBJECT_ID,HADM_ID,LABELS; got {header}",
                                 line=1)
        for line, row in enumerate(reader, 2):
            if len(row) != 4 or row[0] not in SPLITS or not row[2].strip().isdigit():
                raise InputFileError(splits_path, f"expected split,SUBJECT_ID,HADM_ID,LABELS; got {row}", line=line)
            labels = list(dict.fromkeys(c.strip() for c in row[3].split(";") if c.strip()))
            unknown = [c for c in labels if c not in known]
            if not labels or unknown:
                raise InputFileError(splits_path, f"labels {unknown or row[3]!r} are not in {codes_path.name}",
                                     line=line)
            out[row[0]].append((row[1].strip(), row[2].strip(), labels))
    return codes, out


def kept_rare50(docs: dict[str, Document], issues: Issues,
                full_splits: dict[str, list[Document]] | None = None
                ) -> tuple[list[str], dict[str, list[Document]]]:
    """KEPT's MIMIC-III-rare50: each listed admission's note from `docs` (HADM_ID -> Document),
    its labels replaced by the listed rare codes. Listed admissions without a note are counted;
    with CAML split files (`full_splits`), so are those outside the full split of the same name
    (KEPT takes each from it)."""
    codes, lists = read_kept_rare50()
    in_split = {s: {d.hadm_id for d in full_splits[s]} for s in SPLITS} if full_splits is not None else None
    out: dict[str, list[Document]] = {}
    for split in SPLITS:
        out[split] = []
        for subject, hadm, labels in lists[split]:
            doc = docs.get(hadm)
            if doc is None:
                issues.add("rare50_listed_admission_without_document", f"HADM_ID {hadm}")
                continue
            if doc.subject_id != subject:
                issues.add("rare50_listed_subject_id_differs", f"HADM_ID {hadm}: {doc.subject_id} != {subject}")
            if in_split is not None and hadm not in in_split[split]:
                issues.add(f"rare50_listed_admission_not_in_{split}_full_split", f"HADM_ID {hadm}")
            out[split].append(Document(doc.subject_id, hadm, doc.text, list(labels)))
    return codes, out


def prepare_mimic(mimic_dir: str | Path, out_dir: str | Path, splits_dir: str | Path | None = None,
                  config: MimicConfig | None = None, force: bool = False) -> dict:
    """Build MIMIC-III-full, -50 and -rare50 under `out_dir`; returns what dataset.json holds."""
    cfg = config or MimicConfig()
    mimic_dir = Path(mimic_dir)
    if not mimic_dir.is_dir():
        raise InputFileError(mimic_dir, "directory not found (expected the MIMIC-III v1.4 files)")
    issues = Issues()
    labels: dict[str, list[str]] = defaultdict(list)
    for name, kind in (("DIAGNOSES_ICD", DX), ("PROCEDURES_ICD", PROC)):
        for hadm, codes in read_code_table(find_table(mimic_dir, name), kind, issues).items():
            labels[hadm].extend(codes)
    notes = read_discharge_summaries(find_table(mimic_dir, "NOTEEVENTS"), issues, cfg.lowercase,
                                     cfg.chunksize, cfg.progress)
    docs: dict[str, Document] = {}
    for hadm, (subject, text) in notes.items():
        if hadm not in labels:
            issues.add("document_without_codes_kept_with_no_labels", f"HADM_ID {hadm}")
        docs[hadm] = Document(subject, hadm, text, list(labels.get(hadm, [])))
    issues.counts["admissions_with_codes_but_no_discharge_summary"] += len(set(labels) - set(docs))

    split_rule = "seeded patient-level split (no CAML split files given)"
    splits_50 = None
    full_ids = read_split_ids(Path(splits_dir), "full") if splits_dir is not None else None
    if splits_dir is not None and full_ids is None:
        raise InputFileError(splits_dir, f"no CAML split files found (expected "
                                         f"{[SPLIT_FILES[('full', s)] for s in SPLITS]})")
    if full_ids is not None:
        split_rule = f"CAML/MSMN split id files from {Path(splits_dir).name}"
        splits = {s: _docs_for(full_ids[s], docs, issues, "full") for s in SPLITS}
        unused = set(docs) - {h for ids in full_ids.values() for h in ids}
        issues.note("documents_in_no_split_file", len(unused))
        ids_50 = read_split_ids(Path(splits_dir), "50")
        if ids_50 is not None:
            splits_50 = {s: _docs_for(ids_50[s], docs, issues, "50") for s in SPLITS}
    else:
        splits = seeded_split(list(docs.values()), cfg.fractions, cfg.seed, by_subject=True)
    rare = kept_rare50(docs, issues, splits if full_ids is not None else None) if cfg.rare50 == "kept" else None
    for kind, n in sorted(issues.counts.items()):
        if n:
            ex = issues.examples.get(kind)
            log.warning("%s: %d%s", kind, n, f" (e.g. {', '.join(ex)})" if ex else "")
    problems: dict[str, str] = {}
    sets = derive_sets(splits, top_n=cfg.top_n, rare_n=cfg.rare_n, rare_max_count=cfg.rare_max_count,
                       rare_exclude=cfg.rare_exclude, seed=cfg.seed,
                       rare_min_train=cfg.rare_min_train, splits_50=splits_50, rare=rare,
                       problems=problems)
    rule = (f"codes with < {cfg.rare_max_count} occurrences in train+dev+test that "
            f"occur in train (>= {cfg.rare_min_train}) and test, minus "
            f"{len(cfg.rare_exclude)} excluded, "
            f"ranked by test/train ratio, ties by seeded shuffle, top {cfg.rare_n}")
    if rare is not None:
        rule = ("KEPT's released lists (249/20/142 admissions, 50 codes; "
                "coder/data/kept_rare50/kept_rare50_splits.csv): "
                "each listed admission's note, LABELS replaced by the listed rare codes")
    meta = {"source": "mimic-iii", "seed": cfg.seed, "split_rule": split_rule,
            "top50_rule": f"{cfg.top_n} most frequent codes over train+dev+test (CAML)",
            "rare50_variant": cfg.rare50, "rare50_rule": rule,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "warnings": issues.report(), "info": dict(sorted(issues.info.items())),
            "set_problems": problems}
    return write_dataset(out_dir, sets, meta, force=force)
