"""`kept model longify` and `kept coder train|eval|predict`: thin argument parsing over plain functions."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from coder.retrieval import cli as retrieval_cli
from kept.argtypes import nonnegative_int, positive_float, positive_int, positive_int_list, probability
from kept.cli import config_defaults, force_option, graph_option


def cmd_longify(args: argparse.Namespace) -> int:
    from coder.models.longify import longify

    out = longify(args.model, args.out, max_length=args.max_length, attention_window=args.attention_window,
                  force=args.force)
    window = args.attention_window or "the source's (Longformer) or 512"
    print(f"wrote {out} (Longformer MLM, {args.max_length} tokens, window {window})")
    return 0


def _config(args: argparse.Namespace):
    from coder.config import load_config

    verbalizer = tuple(w.strip() for w in args.verbalizer.split(",")) if args.verbalizer else None
    return load_config(
        args.config, head=args.head, template=args.template, prompt_codes=args.prompt_codes,
        global_stride=args.global_stride, max_length=args.max_length, verbalizer=verbalizer,
        verbalizer_form=args.verbalizer_form, threshold_search=args.threshold_search,
        train_mode=args.train, epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum,
        eval_batch_size=args.eval_batch_size, lr=args.lr, precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing, device=args.device, seed=args.seed, graph=args.graph,
        desc_words=args.desc_words, note_view=args.note_view,
        evidence_index=str(Path(args.evidence_index).resolve()) if args.evidence_index else None)


def cmd_train(args: argparse.Namespace) -> int:
    import sys

    from coder.training import train_coder
    from kept.errors import KeptError
    from kgraph.store import chosen_graph, graph_label, graph_source

    flag, args.graph = args.graph, chosen_graph(args.graph)  # --graph, else $KEPT_GRAPH
    config = _config(args)
    if args.model is None and config.head != "tfidf-lr":
        raise KeptError(f"--model is required for --head {config.head} (only tfidf-lr trains without one)")
    print(f"graph: {graph_label(args.graph, graph_source(flag))} (code descriptions)", file=sys.stderr)
    from coder.candidate_training import spec_from_args

    summary = train_coder(args.data, args.model, args.out, config, resume=args.resume,
                          max_docs=args.max_docs, candidates=spec_from_args(args.candidates, args.candidates_k))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 evaluated and reports
        return 0
    print(f"best dev micro-F1 {summary['best_dev_micro_f1']:.4f} after {summary['epochs']} evaluation(s); "
          f"checkpoint {summary['best']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from coder.evaluation.evaluate import evaluate_checkpoint, format_table
    from coder.evaluation.hierarchy_metrics import TABLE_NAMES

    result = evaluate_checkpoint(args.checkpoint, args.data, args.out, split=args.split, ks=args.ks,
                                 system=args.system, device=args.device, max_docs=args.max_docs)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_table(result["metrics"], f"{result['system']} on {result['dataset']}/{args.split} "
                                              f"(threshold {result['threshold']:.3f} tuned on dev; macro over "
                                              f"{result['metrics']['n_codes_macro']} codes with a positive)"))
        hier = result["hierarchical"]
        print()
        print(format_table({n: hier["metrics"][n] for n in TABLE_NAMES if n in hier["metrics"]},
                           f"hierarchical, over graph {hier['graph'] or 'bundled ICD-9-CM'} (all in metrics.json)"))
        print(f"wrote {args.out}/metrics.json and {args.out}/{args.split}_scores.npz")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from coder.models.scorer import load_coder
    from coder.predict import format_predictions, predict_note, read_note

    coder = load_coder(args.checkpoint, args.device)
    text = read_note(args.note)
    if args.index:
        from coder.predict import predict_with_index
        from coder.retrieval.candidates import RetrieveConfig

        config = RetrieveConfig(top_k=args.top_k, method=args.method)
        preds = predict_with_index(coder, args.index, text, config, threshold=args.threshold, top=args.top,
                                   model=args.model, device=args.device)
    else:
        preds = predict_note(coder, text, threshold=args.threshold, top=args.top)
    if args.json:
        from coder.predict import predictions_json

        print(json.dumps(predictions_json(preds), indent=1))
    else:
        print(format_predictions(preds, coder.threshold if args.threshold is None else args.threshold,
                                 tuned=args.threshold is None))
    return 0


def _add_train(coder_sub: argparse._SubParsersAction) -> None:
    p = coder_sub.add_parser("train", help="fine-tune the prompted coder (or the label-attention baseline)")
    p.add_argument("--data", required=True, help="set directory (e.g. DATA/50) with train/dev csv and codes.txt")
    p.add_argument("--model", help="masked-LM checkpoint folder (e.g. from `kept model longify`); "
                                  "not used by --head tfidf-lr")
    p.add_argument("--out", required=True, help="output folder: best/ (the coder), last/ (resume), history.json")
    p.add_argument("--config", help="TOML file of CoderConfig fields; flags override it")
    p.add_argument("--head", choices=("prompt", "label-attention", "tfidf-lr"))
    p.add_argument("--template", choices=("paper", "kept"))
    p.add_argument("--prompt-codes", type=positive_int, help="codes per prompt (default 50)")
    p.add_argument("--global-stride", type=positive_int, help="global attention on every s-th prompt token (default 1)")
    p.add_argument("--max-length", type=positive_int, help="input tokens (default: the model's limit)")
    p.add_argument("--verbalizer", help="positive,negative words (default yes,no)")
    p.add_argument("--verbalizer-form", choices=("spaced", "bare"),
                   help="BPE tokenizers: space-prefixed tokens `Ġyes` (default) or bare `yes` (KEPT's code; use "
                        "it for a KEPT checkpoint); WordPiece: no difference")
    p.add_argument("--threshold-search", choices=("grid", "exact"),
                   help="dev threshold: grid 0.01..0.99 (default) or exact (every distinct dev score)")
    p.add_argument("--train", choices=("all", "lm-head", "first-layer", "last-layer", "bitfit"),
                   help="what to tune: all; lm-head; first-layer / last-layer (+ LM head); bitfit (biases + LM head)")
    p.add_argument("--epochs", type=nonnegative_int, help="0 = zero-shot evaluation on dev (default 20)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--grad-accum", type=positive_int)
    p.add_argument("--eval-batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--device")
    p.add_argument("--seed", type=int)
    graph_option(p, " for code descriptions")
    p.add_argument("--max-docs", type=positive_int, help="use only the first N train and dev notes (smoke runs)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--candidates", metavar="CANDS_DIR",
                   help="train a reranker on first-stage candidates: CANDS_DIR/candidates_{train,dev}.parquet "
                        "(hadm_id, code, score, rank; `kept coder retrieve --splits train dev`); each train note's "
                        "top --candidates-k plus its missed gold codes, shuffled, in prompts of --prompt-codes; "
                        "best epoch and threshold on dev candidates (docs/retrieval.md)")
    p.add_argument("--candidates-k", type=positive_int, help="candidates per note with --candidates (default 300)")
    p.add_argument("--desc-words", type=positive_int,
                   help="cut each prompt description to its first N words (KEPT's full-set code: 15; default: whole)")
    p.add_argument("--note-view", choices=("note", "evidence"),
                   help="what a prompt reads: the note (default, the paper) or, per code, the note's sentence "
                        "that best matches the code's terms in --evidence-index (docs/coder.md)")
    p.add_argument("--evidence-index", metavar="INDEX_DIR",
                   help="term index (`kept coder index`) that finds the evidence of --note-view evidence; its "
                        "path is saved in the checkpoint, so eval, predict and rerank read the same evidence")
    p.set_defaults(func=cmd_train)
    config_defaults(p, "coder.config:CoderConfig", {"train": "train_mode"})


def _add_eval(coder_sub: argparse._SubParsersAction) -> None:
    p = coder_sub.add_parser("eval", help="metrics of a trained coder on a split (threshold tuned on dev)")
    p.add_argument("--checkpoint", required=True, help="a coder folder (OUT/best of `kept coder train`)")
    p.add_argument("--data", required=True, help="set directory")
    p.add_argument("--out", required=True, help="run folder for metrics.json and <split>_scores.npz")
    p.add_argument("--split", default="test", choices=("dev", "test"))
    p.add_argument("--ks", type=positive_int_list, default="5,8,15", help="k of P@k and R@k, comma-separated")
    p.add_argument("--system", help="system name in metrics.json (default kept-prompt / label-attention)")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-docs", type=positive_int, help="score only the first N notes")
    p.add_argument("--json", action="store_true", help="print metrics.json instead of the table")
    p.set_defaults(func=cmd_eval)


def _add_predict(coder_sub: argparse._SubParsersAction) -> None:
    p = coder_sub.add_parser("predict", help="codes of one note, with probabilities and descriptions")
    p.add_argument("note", help="a plain-text note file")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--threshold", type=probability, help="default: the dev-tuned threshold of the checkpoint")
    p.add_argument("--top", type=positive_int, help="print at most this many codes")
    p.add_argument("--index", help="term index (`kept coder index`): code over every indexed code, "
                                   "first-stage candidates with the note span that matched each")
    p.add_argument("--top-k", type=int, default=300, help="first-stage candidates scored (with --index)")
    p.add_argument("--method", default="hybrid", choices=("dense", "lexical", "hybrid", "rrf"),
                   help="first stage (with --index; docs/retrieval.md)")
    p.add_argument("--model", help="encoder for --index (default: the one the index was built with)")
    p.add_argument("--json", action="store_true", help="print a JSON list (code, probability, description, "
                                                       "evidence, start, end, stage1_score, stage1_rank)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="prepare language models (longify)")
    model_sub = model.add_subparsers(dest="model_command", metavar="COMMAND")
    p = model_sub.add_parser("longify", help="BERT/RoBERTa MLM -> Longformer MLM, or a Longformer to more "
                                             "positions (positions tiled)")
    p.add_argument("--model", required=True, help="source checkpoint folder")
    p.add_argument("--max-length", type=positive_int, default=4096, help="tokens of the long model (e.g. 4096, 8192)")
    p.add_argument("--attention-window", type=positive_int,
                   help="sliding window, even (default 512; a Longformer source keeps its own)")
    p.add_argument("--out", required=True)
    force_option(p)
    p.set_defaults(func=cmd_longify)
    model.set_defaults(func=lambda a: model.print_help() or 2)

    coder = subparsers.add_parser("coder", help="train, evaluate and apply the prompted ICD coder")
    coder_sub = coder.add_subparsers(dest="coder_command", metavar="COMMAND")
    # train / eval / predict here; index / retrieve / rerank beside what they drive
    for add in (_add_train, _add_eval, _add_predict, *retrieval_cli.COMMANDS):
        add(coder_sub)
    coder.set_defaults(func=lambda a: coder.print_help() or 2)
