"""A licence-free corpus in MIMIC-III's shape: invented discharge summaries labelled from the graph.

Each note has the MIMIC discharge-summary sections and 1,500-4,000 words (after preprocessing,
headers included; only a note whose label mentions alone are longer passes the maximum) of vitals, labs,
medications and exam filler. Its labels are a long-tailed draw of billable (leaf) ICD-9-CM codes:
a seeded pool of leaves gets Zipf weights (rank r has weight r^-s), so a few codes are common and
most are rare, as in MIMIC. Every label is mentioned through language only, never its code:
its ICD titles, UMLS synonyms or LRABR abbreviations from the graph, in varied seeded templates.
Hard negatives make the reading non-trivial: a sibling of a label mentioned as negated or as past
history, and family history of unrelated codes. The output has the same layout as
`kept data mimic`, with -50 and -rare50 sets derived by the same rules (coder/data/datasets.py).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

import networkx as nx
import numpy as np
from tqdm import tqdm

from coder.data.datasets import SPLITS, Document, derive_sets, seeded_split, write_dataset
from coder.data.notes import preprocess
from kept.errors import KeptError
from kgraph.codes import undotted
from kgraph.query import siblings, terms_of


@dataclass
class SynthConfig:
    docs: int = 600  # the demo's size; the whole pipeline runs in minutes on it
    seed: int = 0
    words_min: int = 1500  # MIMIC-III discharge summaries: ~1,500 words on average
    words_max: int = 4000
    pool_size: int = 3000  # leaf codes that can be labels (MIMIC-III-full uses 8,692)
    zipf_s: float = 1.0  # exponent of the rank-frequency law over the pool
    codes_mean: float = 8.0  # labels per note (MIMIC-III-full: 15.6, -50: 5.7)
    codes_max: int = 30
    negatives_mean: float = 2.0  # sibling hard negatives per note
    fractions: tuple[float, float, float] = (0.75, 0.10, 0.15)
    top_n: int = 50
    rare_n: int = 50
    rare_max_count: int = 10
    rare_min_train: int = 1  # train shots a rare code needs (the paper's rule: 1)
    # rare50's shape: "mimic" = notes written for it in MIMIC-III-rare50's shape (Table A.2:
    # 249 / 20 / 142 notes, one rare code each, ~5 train shots); "rule" = the paper's rule over
    # the corpus above (few notes: ~53 / 4 / 47 at 600 docs, so dev cannot tune a threshold)
    rare_shape: str = "mimic"
    rare_train_per_code: int = 5
    rare_dev: int = 20
    rare_test: int = 142
    lowercase: bool = True
    progress: bool = True


POS_DX = (
    "Patient was found to have {t}.", "Workup was consistent with {t}.",
    "{T} was diagnosed this admission.", "Assessment and plan: {t}, treated as below.",
    "# {T}: managed with {med}, improved.", "Imaging and labs confirmed {t}.",
    "Known {t}, continued on home regimen.", "The course was notable for {t}.",
    "He was treated for {t} with {med}.", "Admitted with {t}.", "{T} - stable on {med}.",
    "Findings most consistent with {t}; team followed closely.",
)
POS_PROC = (
    "Underwent {t} on hospital day {n}.", "{T} was performed without complication.",
    "Status post {t} this admission.", "Taken to the procedure suite for {t}.",
    "{T} (day {n}), tolerated well.", "The patient had {t} with good result.",
)
NEG_DX = (
    "No evidence of {t}.", "{T} was ruled out.", "Negative for {t}.", "Denies {t}.",
    "Initial concern for {t}, which was excluded.", "Remote history of {t}, resolved years ago.",
    "Not consistent with {t}.", "Prior episode of {t}, no recurrence.",
)
NEG_PROC = (
    "{T} was considered but not performed.", "Declined {t}.", "No {t} was required.",
    "{T} was deferred to the outpatient setting.",
)
FAMILY = ("Family history of {t} in her mother.", "Father had {t}.", "Brother with {t}.")
HEADER_STYLES = ({}, {"Discharge Diagnosis": "Discharge Diagnoses"})

MEDS = ("metoprolol", "lisinopril", "furosemide", "heparin", "insulin glargine", "aspirin",
        "atorvastatin", "vancomycin", "ceftriaxone", "pantoprazole", "warfarin", "amlodipine",
        "levothyroxine", "acetaminophen", "docusate", "senna", "oxycodone", "prednisone")
EXAM = ("Lungs clear to auscultation bilaterally.", "Heart regular rate and rhythm, no murmurs.",
        "Abdomen soft, non-tender, non-distended.", "Extremities warm and well perfused.",
        "Alert and oriented times three.", "No focal neurological deficits.",
        "Skin without rashes.", "Pupils equal, round and reactive to light.",
        "Neck supple, no lymphadenopathy.", "Mucous membranes moist.")
COURSE = ("Diet was advanced as tolerated.", "Physical therapy evaluated the patient.",
          "Electrolytes were repleted as needed.", "Pain was controlled with oral medication.",
          "The patient remained hemodynamically stable.", "Lines were removed prior to discharge.",
          "Case management assisted with discharge planning.", "Home medications were resumed.",
          "Ambulating independently by the day of discharge.", "Blood cultures remained negative.")
LABS = ("WBC", "Hgb", "Hct", "Plt", "Na", "K", "Cl", "HCO3", "BUN", "Creat", "Glucose", "Ca",
        "Mg", "Phos", "INR", "PTT", "ALT", "AST", "Lactate")
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[a-z0-9]+)*", re.IGNORECASE)


def code_pool(G: nx.DiGraph, size: int, rng: random.Random) -> list[str]:
    """A seeded sample of billable codes that have at least one term, in Zipf rank order."""
    leaves = sorted(n for n, d in G.nodes(data=True)
                    if d.get("type") == "code" and d.get("leaf") and terms_of(G, n))
    if len(leaves) < size:
        raise KeptError(f"the graph has {len(leaves)} billable codes with terms; pool_size={size}")
    return rng.sample(leaves, size)


def term_variants(G: nx.DiGraph, code: str) -> list[str]:
    """Surface forms for a code: titles (and the long title up to its first comma, as KEPT's
    prompts shorten it), UMLS synonyms and LRABR abbreviations."""
    out: list[str] = []
    for t in terms_of(G, code):
        out.append(t.text)
        head = t.text.split(",")[0].strip()
        if t.kind == "title" and head != t.text and len(head.split()) >= 2:
            out.append(head)
    return list(dict.fromkeys(out))


def _fmt(template: str, term: str, rng: random.Random) -> str:
    low = term if term.isupper() else term[0].lower() + term[1:]  # keep abbreviations as written
    return template.format(t=low, T=term[0].upper() + term[1:], med=rng.choice(MEDS),
                           n=rng.randint(1, 9))


def _vitals(rng: random.Random) -> str:
    return (f"VS: T {rng.uniform(96.5, 101.5):.1f} BP {rng.randint(90, 170)}/{rng.randint(50, 100)} "
            f"HR {rng.randint(55, 125)} RR {rng.randint(12, 28)} O2 sat {rng.randint(88, 100)}% "
            f"{rng.choice(('RA', '2L NC', '4L NC', 'NRB'))}.")


def _labs(rng: random.Random) -> str:
    picks = rng.sample(LABS, rng.randint(5, 10))
    vals = " ".join(f"{lab}-{rng.uniform(0.5, 150):.1f}" for lab in picks)
    when = f"{rng.randint(0, 11):02d}:{rng.randint(0, 59):02d}AM"
    return f"[**2151-{rng.randint(1, 12)}-{rng.randint(1, 28)}**] {when} BLOOD {vals}"


def _meds(rng: random.Random) -> str:
    return (f"{rng.randint(1, 30)}. {rng.choice(MEDS).title()} {rng.choice((5, 10, 20, 25, 40, 81, 500))} "
            f"mg Tablet Sig: One (1) Tablet PO {rng.choice(('DAILY', 'BID', 'TID', 'QHS'))}.")


def _filler(rng: random.Random) -> tuple[str, str]:
    """(section, text) of one unit of clinically neutral filler."""
    kind = rng.random()
    if kind < 0.3:
        return "Pertinent Results", _labs(rng)
    if kind < 0.5:
        return "Physical Exam", _vitals(rng) + " " + " ".join(rng.sample(EXAM, 3))
    if kind < 0.75:
        return "Brief Hospital Course", " ".join(rng.sample(COURSE, 3))
    if kind < 0.9:
        return "Discharge Medications", _meds(rng)
    return "Discharge Instructions", ("Please take all medications as prescribed and keep your "
                                      "appointments. Call your doctor for fever, chest pain or "
                                      "shortness of breath.")


def code_strings(codes: list[str]) -> set[str]:
    """Every way a code could be written in a lower-cased note: dotted and undotted."""
    return {f.lower() for c in codes for f in (c, undotted(c))}


def scrub_code_strings(text: str, forbidden: set[str], rng: random.Random) -> str:
    """Replace any token equal to a forbidden code string (a lab value can be `401.9`)."""
    def repl(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok.lower() not in forbidden:
            return tok
        while True:
            new = str(rng.randint(10, 999))
            if new not in forbidden:
                return new
    return _TOKEN.sub(repl, text)


SECTION_ORDER = ("Chief Complaint", "Major Surgical or Invasive Procedure",
                 "History of Present Illness", "Past Medical History", "Social History",
                 "Family History", "Physical Exam", "Pertinent Results", "Brief Hospital Course",
                 "Medications on Admission", "Discharge Medications", "Discharge Disposition",
                 "Discharge Diagnosis", "Discharge Condition", "Discharge Instructions",
                 "Followup Instructions")


def make_note(G: nx.DiGraph, labels: list[str], pool: list[str], cfg: SynthConfig,
              rng: random.Random) -> str:
    """One raw discharge summary for `labels` (de-id brackets included, as in MIMIC)."""
    sec: dict[str, list[str]] = {s: [] for s in SECTION_ORDER}
    kinds = {c: G.nodes[c]["kind"] for c in labels}
    variants = {c: term_variants(G, c) for c in labels}
    sex = _mention_labels(sec, labels, kinds, variants, rng)
    _hard_negatives(G, sec, labels, kinds, cfg, rng)
    _background(G, sec, labels, pool, rng)
    style = rng.choice(HEADER_STYLES)
    head = (f"Admission Date: [**2151-{rng.randint(1, 12)}-{rng.randint(1, 28)}**] Discharge Date: "
            f"[**2151-{rng.randint(1, 12)}-{rng.randint(1, 28)}**]\nDate of Birth: [**2090-1-1**] "
            f"Sex: {sex}\nService: {rng.choice(('MEDICINE', 'SURGERY', 'CARDIOTHORACIC'))}\n")

    def assemble() -> str:
        return head + "\n\n".join(f"{style.get(s, s)}:\n" + "\n".join(sec[s]) for s in SECTION_ORDER)

    # Words as the data set counts them (after preprocessing, headers included). Filler stops short
    # of words_max; only the label mentions themselves can pass it (they are never cut).
    target = rng.randint(cfg.words_min, cfg.words_max)
    words = len(preprocess(assemble()).split())
    misses = 0
    while words < target and misses < 20:
        name, text = _filler(rng)
        n = len(preprocess(text).split())
        if words + n > cfg.words_max:
            misses += 1
            continue
        sec[name].insert(rng.randint(0, len(sec[name])), text)
        words += n
    return assemble() + "\n"


def _mention_labels(sec: dict[str, list[str]], labels: list[str], kinds: dict[str, str],
                    variants: dict[str, list[str]], rng: random.Random) -> str:
    """Every label mentioned 1-3 times in sections the paper keeps, the procedures and the first
    diagnoses listed; returns the patient's sex for the header."""
    dx = [c for c in labels if kinds[c] == "dx"]
    proc = [c for c in labels if kinds[c] == "proc"]
    first = variants[labels[0]]
    sec["Chief Complaint"].append(rng.choice(first))
    sec["Major Surgical or Invasive Procedure"].append(
        ", ".join(rng.choice(variants[c]) for c in proc) if proc else "None")
    age, sex = rng.randint(19, 95), rng.choice(("F", "M"))
    sec["History of Present Illness"].append(
        f"{age} year old {'woman' if sex == 'F' else 'man'} admitted from "
        f"{rng.choice(('home', 'the ED', 'an outside hospital', 'rehab'))}.")
    homes = {"dx": ("History of Present Illness", "Past Medical History", "Brief Hospital Course"),
             "proc": ("Brief Hospital Course", "History of Present Illness")}
    for c in labels:
        templates = POS_DX if kinds[c] == "dx" else POS_PROC
        for _ in range(rng.randint(1, 3)):  # 1-3 mentions, each in a section the paper keeps
            sec[rng.choice(homes[kinds[c]])].append(_fmt(rng.choice(templates), rng.choice(variants[c]), rng))
    listed = [c for i, c in enumerate(dx) if i < 2 or rng.random() < 0.5]
    sec["Discharge Diagnosis"].extend(rng.choice(variants[c]) for c in listed)
    return sex


def _hard_negatives(G: nx.DiGraph, sec: dict[str, list[str]], labels: list[str], kinds: dict[str, str],
                    cfg: SynthConfig, rng: random.Random) -> None:
    """A label's sibling, negated or in the past; never itself a label."""
    label_set = set(labels)
    for _ in range(np.random.default_rng(rng.getrandbits(32)).poisson(cfg.negatives_mean)):
        anchor = rng.choice(labels)
        sibs = [s for s in siblings(G, anchor) if G.nodes[s].get("leaf") and s not in label_set
                and terms_of(G, s)]
        if sibs:
            s = rng.choice(sibs)
            templates = NEG_DX if kinds[anchor] == "dx" else NEG_PROC
            sec[rng.choice(("History of Present Illness", "Brief Hospital Course", "Past Medical History"))
                ].append(_fmt(rng.choice(templates), rng.choice(term_variants(G, s)), rng))


def _background(G: nx.DiGraph, sec: dict[str, list[str]], labels: list[str], pool: list[str],
                rng: random.Random) -> None:
    """Family and social history, medications, disposition: the rest of a discharge summary, each
    section's lines shuffled (the primary diagnoses stay first)."""
    other = rng.choice(pool)
    if other not in set(labels) and G.nodes[other]["kind"] == "dx":
        sec["Family History"].append(_fmt(rng.choice(FAMILY), rng.choice(term_variants(G, other)), rng))
    sec["Social History"].append(rng.choice(("Lives alone.", "Lives with spouse.", "Retired teacher.",
                                             "Former smoker, quit 10 years ago.", "No alcohol use.")))
    sec["Medications on Admission"].append(", ".join(m.title() for m in rng.sample(MEDS, 4)))
    sec["Discharge Disposition"].append(rng.choice(("Home", "Home With Service", "Extended Care")))
    sec["Discharge Condition"].append(rng.choice(("Stable.", "Good, ambulating.", "Fair.")))
    sec["Followup Instructions"].append("Follow up with [**Last Name (STitle) **] in 2 weeks.")
    for name, lines in sec.items():
        if name != "Discharge Diagnosis":  # the primary diagnoses stay first there
            rng.shuffle(lines)


def draw_labels(pool: list[str], cfg: SynthConfig, rng: np.random.Generator) -> list[list[str]]:
    """Per note, 1..codes_max distinct codes (Poisson around codes_mean) with Zipf weights."""
    w = np.arange(1, len(pool) + 1, dtype=float) ** -cfg.zipf_s
    p = w / w.sum()
    out = []
    for _ in range(cfg.docs):
        k = int(np.clip(rng.poisson(cfg.codes_mean - 1) + 1, 1, min(cfg.codes_max, len(pool))))
        out.append([pool[i] for i in rng.choice(len(pool), size=k, replace=False, p=p)])
    return out


def generate_corpus(G: nx.DiGraph, cfg: SynthConfig | None = None) -> dict[str, list[Document]]:
    """The synthetic full set: {split: documents}, preprocessed like MIMIC notes."""
    cfg = cfg or SynthConfig()
    if cfg.words_min > cfg.words_max or cfg.docs < 1:
        raise KeptError("need docs >= 1 and words_min <= words_max")
    rng = random.Random(cfg.seed)
    pool = code_pool(G, cfg.pool_size, rng)
    labels = draw_labels(pool, cfg, np.random.default_rng(cfg.seed))
    docs = []
    for i, codes in enumerate(tqdm(labels, desc="writing notes", unit=" notes", disable=not cfg.progress)):
        raw = make_note(G, codes, pool, cfg, rng)
        text = scrub_code_strings(preprocess(raw, cfg.lowercase), code_strings(codes), rng)
        docs.append(Document(str(90000 + i), str(190000 + i), text, codes))
    return seeded_split(docs, cfg.fractions, cfg.seed, by_subject=True)


def rare50_corpus(G: nx.DiGraph, cfg: SynthConfig, common: list[str]) -> tuple[list[str], dict[str, list[Document]]]:
    """rare50 in MIMIC-III-rare50's shape: `rare_n` codes outside the corpus's label pool, each
    with `rare_train_per_code` train notes, and dev/test notes spread over the codes. Every note
    also mentions a few common codes (as a real admission does) but is labelled with its rare code
    only, as KEPT's rare50 lists are."""
    rng = random.Random(cfg.seed + 1)
    taken = set(common)
    leaves = sorted(n for n, d in G.nodes(data=True)
                    if d.get("type") == "code" and d.get("leaf") and n not in taken and terms_of(G, n))
    if len(leaves) < cfg.rare_n:
        raise KeptError(f"only {len(leaves)} billable codes are left for rare50; rare_n={cfg.rare_n}")
    rare = rng.sample(leaves, cfg.rare_n)
    plan = {"train": [c for c in rare for _ in range(cfg.rare_train_per_code)],
            "dev": [rare[i % len(rare)] for i in range(cfg.rare_dev)],
            "test": [rare[i % len(rare)] for i in range(cfg.rare_test)]}
    splits: dict[str, list[Document]] = {}
    i = 0
    for split, codes in plan.items():
        rng.shuffle(codes)
        splits[split] = []
        for code in codes:
            others = rng.sample(common[:200], k=min(len(common), rng.randint(2, 6)))
            raw = make_note(G, [code] + others, common, cfg, rng)
            text = scrub_code_strings(preprocess(raw, cfg.lowercase), code_strings([code] + others), rng)
            splits[split].append(Document(str(95000 + i), str(295000 + i), text, [code]))
            i += 1
    return rare, splits


def prepare_synth(G: nx.DiGraph, out_dir, cfg: SynthConfig | None = None, graph_dir: str = "",
                  force: bool = False) -> dict:
    """Generate the corpus and write full/50/rare50 under `out_dir`; returns dataset.json."""
    cfg = cfg or SynthConfig()
    splits = generate_corpus(G, cfg)
    if cfg.rare_shape not in ("mimic", "rule"):
        raise KeptError(f"unknown rare50 shape {cfg.rare_shape!r}; choose mimic or rule")
    rare_rule = cfg.rare_shape == "rule"
    rare = None if rare_rule else rare50_corpus(G, cfg, code_pool(G, cfg.pool_size, random.Random(cfg.seed)))
    problems: dict[str, str] = {}
    sets = derive_sets(splits, top_n=cfg.top_n, rare_n=cfg.rare_n, rare_max_count=cfg.rare_max_count,
                       seed=cfg.seed, rare_min_train=cfg.rare_min_train, rare=rare, problems=problems)
    for name in problems:
        problems[name] += ", or --docs"
    meta = {"source": "synthetic", "seed": cfg.seed, "graph": graph_dir,
            "graph_sources": G.graph.get("sources", []),
            "split_rule": f"seeded document shuffle {cfg.fractions}",
            "top50_rule": f"{cfg.top_n} most frequent codes over train+dev+test (CAML)",
            "rare50_rule": (f"codes with < {cfg.rare_max_count} occurrences in train+dev+test that "
                            f"occur in train (>= {cfg.rare_min_train}) and test, ranked by "
                            f"test/train ratio, ties by seeded "
                            f"shuffle, top {cfg.rare_n}") if rare_rule else
                           (f"MIMIC-III-rare50's shape: {cfg.rare_n} billable codes outside the corpus's "
                            f"label pool, {cfg.rare_train_per_code} train notes each, {cfg.rare_dev} dev and "
                            f"{cfg.rare_test} test notes, one rare label per note (notes of their own)"),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "splits": {s: len(splits[s]) for s in SPLITS}, "set_problems": problems}
    return write_dataset(out_dir, sets, meta, force=force)
