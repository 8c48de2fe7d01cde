"""`kept demo`: the whole pipeline end to end on CPU in minutes, with one results table at the end.

bundled ICD-9-CM graph -> triplet export -> short HSAP run on MiniLM (eval before/after) ->
synthetic MIMIC-shaped corpus -> long model -> prompted coder and label-attention baseline on the
-50 and -rare50 sets -> FAISS first stage + rerank on the full set -> results under runs/<date>/.

The budgets below are the CPU demo's, far below the paper's (20 epochs, 8,192 tokens): the demo
shows that every stage runs and what it produces, not what the method reaches with a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("kept.demo")

SOURCE_PUBLIC = "real public (CMS ICD-9-CM titles)"
SOURCE_SYNTH = "synthetic (kept data synth)"
LOSS_NAMES = {"triplet": "triplet, paper margins", "triplet-angular": "triplet, angular distance",
              "infonce": "InfoNCE"}
# demo loss name -> (HSAPConfig.loss, HSAPConfig.distance); "triplet" is the default: eq. 3's Euclidean
LOSS_SPECS = {"triplet": ("triplet", "euclidean"), "triplet-angular": ("triplet", "angular"),
              "infonce": ("infonce", "euclidean")}


@dataclass
class DemoConfig:
    out: str = ""  # default runs/<date>
    seed: int = 0
    triplet_batches: int = 200
    hsap_steps: int = 120
    hsap_eval_candidates: int = 4000  # long titles ranked per query (gold codes always included)
    hsap_losses: tuple[str, ...] = ("triplet", "infonce")
    hsap_pooling: str = "mean"  # MiniLM's own pooling
    synth_docs: int = 600
    words_min: int = 200  # shorter than MIMIC's notes so that a 1,024-token CPU model sees them whole
    words_max: int = 400
    max_length: int = 1024  # long-model positions (the paper: 8,192 on GPU)
    attention_window: int = 256
    coder_epochs: int = 2
    coder_train_docs: int = 48  # per set, and as many dev notes for model selection
    coder_lr: float = 5e-5
    global_stride: int = 5
    rerank_k: int = 40  # candidates reranked per note (the paper: 300)
    rerank_train_docs: int = 120  # full-set training notes whose candidates train the reranker
    eval_docs: int | None = None  # cap on dev/test notes scored (smoke runs); None = all
    # prompt-evidence: the prompted coder reading each code's best sentence (docs/coder.md); "prompt"
    # (the whole note, the paper's input) is left out by default: at this budget it stays at chance
    systems: tuple[str, ...] = ("tfidf-lr", "prompt-evidence", "label-attention")
    evidence_batch: int = 32  # prompts per step of prompt-evidence (one code and one sentence each: short)
    sets: tuple[str, ...] = ("50", "rare50")
    timings: dict = field(default_factory=dict)


DEMO_SYSTEMS = ("tfidf-lr", "prompt-evidence", "prompt", "label-attention")


def _systems(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in DEMO_SYSTEMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown system(s) {bad}; choose from {', '.join(DEMO_SYSTEMS)}")
    return names


class Step:
    """Prints a numbered header, times the block, records the seconds."""

    def __init__(self, cfg: DemoConfig, n: int, total: int, title: str):
        self.cfg, self.label, self.title = cfg, f"[{n}/{total}]", title

    def __enter__(self):
        print(f"\n{self.label} {self.title}", flush=True)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        self.cfg.timings[self.title] = round(dt, 1)
        if exc[0] is None:
            print(f"{self.label} done in {dt:.0f} s", flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    run = Path(cfg.out or Path("runs") / time.strftime("%Y-%m-%d"))
    run.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    total = 8
    print(f"kept demo -> {run}  (CPU budgets; see `kept demo --help` to change them)")
    with Step(cfg, 1, total, "knowledge graph (bundled ICD-9-CM)"):
        G = _graph(run)
    with Step(cfg, 2, total, "HSAP triplets"):
        heldout = _triplets(G, run, cfg)
    with Step(cfg, 3, total, f"HSAP: {cfg.hsap_steps} steps on MiniLM per loss, eval on held-out categories"):
        hsap_dir = _hsap(G, heldout, run, cfg, rows)
    with Step(cfg, 4, total, "synthetic MIMIC-shaped corpus"):
        data = _corpus(G, run, cfg)
    with Step(cfg, 5, total, f"long model: HSAP MiniLM → {cfg.max_length} tokens (Longformer); term index"):
        from coder.models.longify import longify
        from coder.retrieval.index import IndexConfig, build_index

        long_dir = longify(hsap_dir, run / "long-model", max_length=cfg.max_length,
                           attention_window=cfg.attention_window)
        build_index(hsap_dir, run / "index", G, IndexConfig(), progress=False)
    with Step(cfg, 6, total, "TF-IDF baseline, prompted coder, label-attention baseline"):
        plots = _coders(data, long_dir, run, cfg, rows)
    with Step(cfg, 7, total, f"FAISS first stage + trained rerank (top {cfg.rerank_k}) on the full set"):
        _full_label_space(data, long_dir, run, cfg, rows)
    with Step(cfg, 8, total, "results"):
        _results(rows, plots, run, cfg)
    print(f"results: {run / 'results.md'}, {run / 'results.json'}, plots {run}/f1_by_frequency_*.png")
    print("timings (s): " + ", ".join(f"{k.split(':')[0]} {v}" for k, v in cfg.timings.items()))
    return {"run": str(run), "rows": rows}


def _graph(run: Path):
    import kgraph
    from kgraph.query import ancestors, stats

    G = kgraph.build_graph(progress=False)
    kgraph.save_graph(G, run / "graph")
    s = stats(G)
    print(f"  {s['nodes']:,} nodes, {s['edges']:,} edges; 250.01 → " + " → ".join(ancestors(G, "250.01")))
    return G


def _triplets(G, run: Path, cfg: DemoConfig):
    from contrastive.sampling import BatchSampler, SamplerConfig, heldout_split
    from contrastive.triplets import export_triplets

    heldout = heldout_split(G, 0.1, cfg.seed)
    sampler = BatchSampler(G, SamplerConfig(seed=cfg.seed), exclude=heldout)
    counts = export_triplets(sampler, run / "triplets.parquet", batches=cfg.triplet_batches)
    print("  " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return heldout


def _hsap(G, heldout, run: Path, cfg: DemoConfig, rows: list[dict]) -> Path:
    """MiniLM before and after HSAP with each loss on held-out titles; returns the aligned encoder
    later stages use."""
    from contrastive.evaluate import eval_set, evaluate
    from contrastive.train import HSAPConfig, train
    from kept.encoder import TermEncoder
    from kept.results import metric_rows

    es = eval_set(G, heldout, "leaves", cfg.hsap_eval_candidates, seed=cfg.seed)
    # MiniLM is a sentence-transformers model trained with mean pooling: its first token is
    # not a term vector (the paper's first-token choice is for BERT-style encoders).
    results = {"MiniLM": evaluate(TermEncoder.load(None, max_length=32, pooling=cfg.hsap_pooling), G, es)}
    dirs = {}
    for loss in cfg.hsap_losses:
        name = f"MiniLM + HSAP ({LOSS_NAMES[loss]})"
        dirs[name] = run / f"hsap-{loss}"
        loss_name, distance = LOSS_SPECS[loss]
        summary = train(HSAPConfig(out=str(dirs[name]), loss=loss_name, distance=distance, steps=cfg.hsap_steps,
                                   seed=cfg.seed, lr=5e-5, pooling=cfg.hsap_pooling, holdout_fraction=0.1,
                                   holdout_seed=cfg.seed, save_every=10**9))
        results[name] = evaluate(TermEncoder.load(str(dirs[name]), max_length=32, pooling="auto"), G, es)
        print(f"  {name}: {summary.get('terms_per_s', 0):.0f} terms/s, mean vector norm "
              f"{summary['norm_start']:.2f} -> {summary['norm_end']:.2f}", flush=True)
    for name, res in results.items():
        print(f"  {name:<40} Acc@1 {res['acc@1']:.3f}  Acc@5 {res['acc@5']:.3f}  MRR {res['mrr']:.3f}  "
              f"sibling share of errors {res['sibling_error_share']:.2f}")
        rows += metric_rows("hsap", name, f"held-out short→long titles ({es_size(es)})", SOURCE_PUBLIC,
                            res, ["acc@1", "acc@5", "mrr", "sibling_error_share"])
    # Later stages take the aligned encoder that ranks held-out titles best (these titles are
    # not the coder's test notes, so choosing here leaks nothing into the coder's numbers).
    chosen = max(dirs, key=lambda n: results[n]["mrr"])
    print(f"  later stages use {chosen} ({dirs[chosen].name})")
    return dirs[chosen]


def _corpus(G, run: Path, cfg: DemoConfig) -> Path:
    from coder.data.datasets import read_split
    from coder.data.synth import SynthConfig, prepare_synth

    data = run / "data"
    prepare_synth(G, data, SynthConfig(docs=cfg.synth_docs, seed=cfg.seed, words_min=cfg.words_min,
                                       words_max=cfg.words_max, progress=False), graph_dir=str(run / "graph"))
    for name in ("full", "50", "rare50"):
        n = {sp: len(read_split(data / name, sp)) for sp in ("train", "dev", "test")}
        print(f"  {name:<7} train {n['train']}  dev {n['dev']}  test {n['test']}")
    return data


def _coders(data: Path, long_dir: Path, run: Path, cfg: DemoConfig, rows: list[dict]) -> dict[str, dict]:
    """Every system on every set: trained, evaluated on test, rows and per-code F1 for the plots."""
    from coder.data.datasets import read_split
    from coder.evaluation.evaluate import evaluate_checkpoint, system_name
    from coder.evaluation.hierarchy_metrics import SUMMARY_NAMES as HIER_ROWS  # hier_f1 + FP distance shares
    from coder.training import train_coder
    from kept.results import metric_rows

    plots: dict[str, dict] = {}
    for set_name in cfg.sets:
        set_dir = data / set_name
        train_docs = read_split(set_dir, "train")[:cfg.coder_train_docs]  # what the coders saw
        for name in cfg.systems:
            cc = _coder_config(name, run, cfg)
            system, out = system_name(cc), run / "coder" / f"{set_name}-{name}"
            print(f"  {system} on synth-{set_name}", flush=True)
            train_coder(set_dir, long_dir, out, cc, max_docs=cfg.coder_train_docs)
            res = evaluate_checkpoint(out / "best", set_dir, out / "eval", system=system, max_docs=cfg.eval_docs)
            m = res["metrics"]
            print(f"    test micro-F1 {m['micro_f1']:.3f}  macro-F1 {m['macro_f1']:.3f}  "
                  f"micro-AUC {m['micro_auc']:.3f}  macro-AUC {m['macro_auc']:.3f}")
            rows += metric_rows("coder", system, f"synth-{set_name}", SOURCE_SYNTH,
                                {**m, **res["hierarchical"]["metrics"]},
                                ["micro_auc", "macro_auc", "micro_f1", "macro_f1", "macro_f1_mean", "p@5", *HIER_ROWS])
            plots.setdefault(set_name, {})[system] = _f1_series(out / "eval", train_docs, res["threshold"])
    return plots


def _coder_config(name: str, run: Path, cfg: DemoConfig):
    """A demo system's settings: `prompt-evidence` is the prompted coder on evidence sentences (one code
    per prompt, found by the HSAP term index); the others read the note. KEPT-code's template: its
    short descriptions leave ~550 of a note's ~630 tokens in the window, the paper's `desc :` ~350."""
    from coder.config import EVIDENCE_RECIPE, CoderConfig

    common = dict(epochs=cfg.coder_epochs, lr=cfg.coder_lr, template="kept", global_stride=cfg.global_stride,
                  seed=cfg.seed, graph=str(run / "graph"))
    if name == "prompt-evidence":
        return CoderConfig(head="prompt", **{**EVIDENCE_RECIPE, "batch_size": cfg.evidence_batch},
                           evidence_index=str(run / "index"), **common)
    return CoderConfig(head=name, grad_accum=4, **common)


def _full_label_space(data: Path, long_dir: Path, run: Path, cfg: DemoConfig, rows: list[dict]) -> None:
    """Candidates for the full set from the HSAP term index, a prompted reranker trained on the training
    notes' candidates (evidence view), and stage 1 alone vs stage 1 + rerank."""
    from coder.candidate_training import CandidateSpec
    from coder.evaluation.hierarchy_metrics import SUMMARY_NAMES as HIER_ROWS
    from coder.retrieval.candidates import RetrieveConfig, retrieve
    from coder.retrieval.rerank import run_rerank
    from coder.training import train_coder
    from kept.results import metric_rows

    index_dir, cands = run / "index", run / "candidates"
    top = RetrieveConfig(top_k=max(300, cfg.rerank_k))
    retrieve(index_dir, data / "full", cands, top, splits=("train",), max_docs=cfg.rerank_train_docs, progress=False)
    summary = retrieve(index_dir, data / "full", cands, top, max_docs=cfg.eval_docs)
    rec = summary["splits"]["test"]
    print("  test candidate recall: " + ", ".join(f"@{k} {rec[f'recall@{k}']:.3f}" for k in (50, 100, 300)))
    for k in (50, 100, 300):
        rows.append(dict(stage="retrieval", system="faiss (HSAP MiniLM)", dataset="synth-full test",
                         data_source=SOURCE_SYNTH, metric=f"recall@{k}", value=float(rec[f"recall@{k}"])))
    reranker = run / "coder" / "full-rerank"
    train_coder(data / "full", long_dir, reranker, _coder_config("prompt-evidence", run, cfg),
                max_docs=cfg.rerank_train_docs, candidates=CandidateSpec(cands, cfg.rerank_k))
    results = run_rerank(cands, data / "full", run / "rerank", reranker / "best", k=cfg.rerank_k,
                         max_docs=cfg.eval_docs)
    for system, res in results.items():
        rows += metric_rows("full", system, "synth-full", SOURCE_SYNTH,
                            {**res["metrics"], **res["hierarchical"]["metrics"]},
                            ["micro_f1", "macro_f1", "p@8", "p@15", "r@8", "r@15", "candidate_micro_auc", *HIER_ROWS])
    rows += _rerank_gain(run / "rerank")


def _rerank_gain(rerank_dir: Path) -> list[dict]:
    """Stage 1 + rerank minus stage 1 alone on the same test notes, with a bootstrap 95% CI."""
    from coder.evaluation.report import report
    from coder.retrieval.rerank import RERANK_SYSTEM, STAGE1_SYSTEM

    res = report([rerank_dir], a=STAGE1_SYSTEM, b=RERANK_SYSTEM, metrics=["micro_f1", "p@8"])
    rows = []
    for c in res["comparisons"]:
        print(f"  {RERANK_SYSTEM} - {STAGE1_SYSTEM}: {c['metric']} {c['diff']:+.4f} "
              f"[95% CI {c['ci_low']:+.4f}, {c['ci_high']:+.4f}]")
        for what in ("diff", "ci_low", "ci_high"):
            rows.append(dict(stage="full: rerank gain", system=f"{RERANK_SYSTEM} - {STAGE1_SYSTEM}",
                             dataset="synth-full", data_source=SOURCE_SYNTH, metric=f"{c['metric']} {what}",
                             value=c[what]))
    return rows


def _results(rows: list[dict], plots: dict[str, dict], run: Path, cfg: DemoConfig) -> None:
    from kept.results import plot_f1_by_frequency, write_table

    write_table(rows, run)
    for set_name, series in plots.items():
        plot_f1_by_frequency(series, run / f"f1_by_frequency_{set_name}.png",
                             f"Per-code test F1 vs training frequency (synth-{set_name})", SOURCE_SYNTH)
    (run / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n", encoding="utf-8")
    print((run / "results.md").read_text(encoding="utf-8"))


def es_size(es) -> str:
    return f"{len(es.queries)} queries × {len(es.candidates)} candidates"


def _f1_series(eval_dir: Path, train_docs, threshold: float):
    """(training frequency, test F1) per code of one evaluated coder, for the plot."""
    import numpy as np

    from coder.evaluation.metrics import per_code_f1
    from kept.results import train_frequency

    z = np.load(eval_dir / "test_scores.npz", allow_pickle=False)
    codes = [str(c) for c in z["codes"]]
    y_true = z["y_true"].astype(bool)
    f1 = per_code_f1(y_true, z["y_score"] >= threshold)
    return train_frequency((d.labels for d in train_docs), codes), f1


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = DemoConfig()
    for k, v in vars(args).items():
        if hasattr(cfg, k) and v is not None and k != "func":
            setattr(cfg, k, v)
    run_demo(cfg)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline on CPU and write a results table")
    p.add_argument("--out", help="run directory (default runs/<date>)")
    p.add_argument("--seed", type=int)
    for name, typ in (("triplet-batches", int), ("hsap-steps", int), ("hsap-eval-candidates", int),
                      ("synth-docs", int), ("max-length", int), ("coder-epochs", int), ("coder-train-docs", int),
                      ("global-stride", int), ("rerank-k", int), ("rerank-train-docs", int), ("eval-docs", int)):
        p.add_argument(f"--{name}", type=typ, dest=name.replace("-", "_"),
                       help=f"default {getattr(DemoConfig(), name.replace('-', '_'))}")
    p.add_argument("--systems", type=_systems, help="coders per set, comma-separated, from "
                   f"{','.join(DEMO_SYSTEMS)} (default {','.join(DemoConfig().systems)})")
    p.set_defaults(func=cmd_demo)
