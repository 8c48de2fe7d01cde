"""The README's user's guide, walked command by command on the project's fixtures, in its order.

The commands are read from the README itself, so the guide cannot drift from the tool: only paths
(fixtures and tiny models in place of UMLS, MIMIC-III and Clinical-Longformer) and budgets (steps,
epochs, notes) are changed. Lines that need a server or several processes (Neo4j push, torchrun)
are tested elsewhere and skipped here.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from kept.cli import build_parser, main
from tests.tiny import FIXTURES

ROOT = Path(__file__).resolve().parents[2]

# Paths in the guide -> the fixtures that stand in for them.
PATHS = {
    "UMLS/2023AB/META/MRCONSO.RRF": FIXTURES / "umls" / "MRCONSO.RRF",
    "/path/to/UMLS/META/MRCONSO.RRF": FIXTURES / "umls" / "MRCONSO.RRF",
    "LEX/LRABR": FIXTURES / "umls" / "LRABR",
    "/path/to/LEX/LRABR": FIXTURES / "umls" / "LRABR",
    "physionet.org/files/mimiciii/1.4": FIXTURES / "mimic",
    "caml-splits/": FIXTURES / "mimic" / "splits",
}
# Budgets: option -> tiny value, wherever the guide gives the option.
BUDGETS = {"--batches": "2", "--steps": "2", "--epochs": "1", "--max-docs": "4", "--docs": "80"}
# Options added per command (tiny budgets, quiet bars).
EXTRA = {
    ("hsap", "eval"): ["--max-candidates", "200", "--quiet"],
    ("hsap", "train"): ["--quiet"],
    ("data", "mimic"): ["--no-progress"],
    ("data", "synth"): ["--no-progress"],
    ("coder", "train"): ["--max-docs", "4", "--prompt-codes", "10"],  # rare50 lists 50 codes; 512 tokens
    ("coder", "eval"): ["--max-docs", "4"],
    ("coder", "index"): ["--no-progress", "--batch-size", "2048"],
    ("coder", "retrieve"): ["--max-docs", "4", "--no-progress"],
    ("coder", "rerank"): ["--max-docs", "4", "--prompt-codes", "5", "--no-progress"],
}
# Parsed, not run: a Neo4j server is needed (tests/test_neo4j.py), or the whole graph's exports take
# minutes on 2 cores (tests/test_rdf.py and test_neo4j.py run them on smaller graphs).
PARSE_ONLY = {("graph", "push"), ("graph", "export")}


def guide_lines() -> list[str]:
    """The shell lines of the guide's code blocks, comments and continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    guide = text[text.index("## User's guide"):text.index("## Tests and benchmarks")]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", guide, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def guide_commands() -> list[list[str] | tuple[str, str]]:
    """`kept` argument lists in guide order, with `for` loops unrolled and $VARS expanded;
    ("env", "NAME=VALUE") for exports."""
    out: list = []
    variables: dict[str, str] = {}
    loop: tuple[str, list[str]] | None = None
    body: list[str] = []

    def emit(line: str) -> None:
        for name, value in variables.items():
            line = line.replace(f"${name}", value)
        words = shlex.split(line, comments=True)
        if not words:
            return
        if words[0] == "export":
            out.append(("env", words[1]))
        elif re.fullmatch(r"[A-Z_]+=\S+", words[0]) and len(words) == 1:
            name, value = words[0].split("=", 1)
            variables[name] = value
        elif words[0] == "kept":
            out.append(words[1:])

    for line in guide_lines():
        m = re.match(r"for (\w+) in ([^;]+); do$", line)
        if m:
            loop, body = (m.group(1), m.group(2).split()), []
        elif line == "done" and loop:
            for value in loop[1]:
                variables[loop[0]] = value
                for b in body:
                    emit(b)
            loop = None
        elif loop:
            body.append(line)
        else:
            emit(line)
    return out


def adapt(args: list[str], tiny: dict[str, Path]) -> list[str]:
    """The guide's arguments with fixture paths, tiny models and tiny budgets."""
    args = [str(PATHS.get(a, a)) for a in args]
    args = [str(tiny["longformer"]) if a == "/models/Clinical-Longformer" else a for a in args]
    for i, a in enumerate(args[:-1]):
        if a in BUDGETS:
            args[i + 1] = BUDGETS[a]
    key = tuple(args[:2])
    if key == ("hsap", "train") and "--model" not in args:
        args += ["--model", str(tiny["bert"])]  # the CPU try's MiniLM, smaller
    extra = EXTRA.get(key, [])
    i = 0
    while i < len(extra):
        opt = extra[i]
        has_value = i + 1 < len(extra) and not extra[i + 1].startswith("--")
        if opt in args:
            if has_value:
                args[args.index(opt) + 1] = extra[i + 1]
        else:
            args += extra[i:i + 1 + has_value]
        i += 1 + has_value
    return args


@pytest.fixture(scope="module")
def tiny(tiny_longformer_dir, tmp_path_factory) -> dict[str, Path]:
    """A tiny Longformer MLM (for Clinical-Longformer) and a tiny BERT MLM with MiniLM's tokenizer
    (for MiniLM: the CPU try's 1,024-token prompts are sized for a real vocabulary)."""
    from transformers import AutoTokenizer

    from kept.hf import default_model_path
    from tests.tiny import tiny_bert

    bert = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(default_model_path())
    tiny_bert(len(tok)).save_pretrained(str(bert))
    tok.save_pretrained(str(bert))
    return {"longformer": tiny_longformer_dir, "bert": bert}


def test_guide_runs_as_written_on_the_fixtures(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEPT_GRAPH", raising=False)
    (tmp_path / "note.txt").write_text("Admitted with heart failure and edema; lasix given. Hypertension.\n",
                                       encoding="utf-8")
    ran: list[list[str]] = []
    for cmd in guide_commands():
        if cmd[0] == "env":
            name, value = cmd[1].split("=", 1)
            monkeypatch.setenv(name, value)
            continue
        args = adapt(cmd, tiny)
        if tuple(cmd[:2]) in PARSE_ONLY:
            build_parser().parse_args(args)  # its options still exist
            continue
        rc = main(args)
        out, err = capsys.readouterr()
        assert rc == 0, f"kept {' '.join(args)}\n{out}\n{err}"
        ran.append(args)
        if args[:2] == ["data", "mimic"]:
            # rare50 comes from KEPT's released lists (the fixture holds a few of their admissions);
            # the fixture's 50 set is written smaller, with the option to change named.
            assert (tmp_path / "data/mimic3/full/train.csv").is_file() and "--top-n" in err
            assert (tmp_path / "data/mimic3/rare50/codes.txt").is_file()
        if args[:1] in (["triplets"], ["hsap"]) or args[:2] in (["data", "synth"], ["coder", "train"],
                                                                   ["coder", "index"]):
            assert "graph: graph/ (from $KEPT_GRAPH)" in err, args  # every later command uses it
    kinds = {tuple(a[:2]) for a in ran}
    assert {("graph", "build"), ("hsap", "train"), ("data", "mimic"), ("coder", "train"), ("coder", "eval"),
            ("coder", "predict"), ("data", "synth"), ("model", "longify"), ("coder", "index"),
            ("coder", "retrieve"), ("coder", "rerank"), ("report", "--runs")} <= kinds
    # What each command recorded about the graph.
    assert json.loads(Path("models/hsap-cl/hsap_config.json").read_text())["graph"] == "graph/"
    assert json.loads(Path("models/synth-hsap/hsap_config.json").read_text())["graph"] == "graph/"
    assert json.loads(Path("data/synth/dataset.json").read_text())["graph"] == "graph/"
    assert json.loads(Path("runs/kept-50/best/kept_coder.json").read_text())["config"]["graph"] == "graph/"
    index = json.loads(Path("index/index.json").read_text())
    assert index["graph"] == "graph/" and {"synonym", "abbreviation"} <= set(index["term_kinds"])
    # Before and after HSAP pool alike (the guide compares them).
    assert json.loads(Path("models/hsap-cl/hsap_config.json").read_text())["pooling"] == "cls"
    # The CPU try never touches the MIMIC runs.
    assert json.loads(Path("runs/kept-50/eval/metrics.json").read_text())["data_source"] == "mimic-iii"


def test_a_bad_graph_fails_every_command_the_same_way(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEPT_GRAPH", str(tmp_path / "nonexistent"))
    data = tmp_path / "data"
    commands = [
        ["graph", "stats"], ["graph", "show", "250.01"],
        ["triplets", "export", "--out", "t.jsonl", "--batches", "1"],
        ["hsap", "train", "--model", str(tiny["bert"]), "--out", "h", "--steps", "1", "--quiet"],
        ["hsap", "eval", "--model", str(tiny["bert"]), "--quiet"],
        ["data", "synth", "--out", str(data), "--docs", "5", "--no-progress"],
        ["coder", "train", "--data", str(data / "50"), "--model", str(tiny["longformer"]), "--out", "r"],
        ["coder", "index", "--model", str(tiny["bert"]), "--out", "i"],
    ]
    for args in commands:
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert "nonexistent: the graph named by $KEPT_GRAPH does not exist" in err, (args, err)
    assert not (tmp_path / "h").exists() and not data.exists()


def test_help_shows_the_defaults_that_matter(capsys):
    def help_of(*command: str) -> str:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    assert "this file only wires them" not in help_of()
    assert "(default: 4096)" in help_of("model", "longify")
    retrieve = help_of("coder", "retrieve")
    assert "default: 300" in retrieve and "default: ['dev', 'test']" in retrieve
    assert "default: test" in help_of("coder", "eval")
    train = help_of("coder", "train")
    assert "--batch-size BATCH_SIZE default: 1" in train and "--lr LR default: 1.5e-05" in train
    assert "auto (default" in help_of("hsap", "train") and "auto (default)" in help_of("hsap", "eval")


def test_clear_messages_before_work(tiny, tmp_path, capsys):
    from tests.tiny import write_set

    assert main(["hsap", "eval", "--model", str(tmp_path / "no-such-model"), "--quiet"]) == 1
    assert "no-such-model: no such model folder" in capsys.readouterr().err
    set_dir = write_set(tmp_path / "50", ["401.9"], {"train": [("high blood pressure", ["401.9"])], "dev": [],
                                                      "test": [("pressure", ["401.9"])]})
    assert main(["coder", "train", "--data", str(set_dir), "--model", str(tiny["longformer"]),
                 "--out", str(tmp_path / "run")]) == 1
    assert "no dev notes" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_new_training_run_removes_the_old_models_evaluations(tmp_path):
    from coder.training import clear_stale_evaluations

    for p in ("eval/metrics.json", "eval/test_scores.npz", "best/kept_coder.json"):
        (tmp_path / p).parent.mkdir(exist_ok=True)
        (tmp_path / p).write_text("{}")
    assert {p.name for p in clear_stale_evaluations(tmp_path)} == {"metrics.json", "test_scores.npz"}
    assert (tmp_path / "best/kept_coder.json").is_file() and not (tmp_path / "eval/metrics.json").exists()
