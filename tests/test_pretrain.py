"""Pretraining engine: vocabularies, batching, objectives, LAMB, configs, the trainer (loss falls,
checkpoints reload with plain transformers, exact resume, NaN stop) and 2-process DDP/FSDP parity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from protlm.data.alphabet import ALPHABET
from protlm.data.prepare import PrepareOptions, prepare
from protlm.errors import ConfigError
from protlm.models.architectures import ARCHITECTURES, ModelSpec, build_model
from protlm.models.vocab import VOCABS, build_tokenizer
from protlm.pretrain.batching import BatchPlan
from protlm.pretrain.config import load_config
from protlm.pretrain.metrics import forward_flops, read_metrics
from protlm.pretrain.objectives import IGNORE, make_batch
from protlm.pretrain.optim import Lamb, lr_factor
from protlm.pretrain.config import OptimizerConfig
from protlm.pretrain.trainer import Trainer, TrainingDiverged, token_loss

REPO = Path(__file__).resolve().parents[1]
SHARED_ESM_VOCAB = REPO.parent / "shared" / "data" / "models" / "esm2_t6_8M_UR50D_tokenizer_config" / "vocab.txt"



WORDS = ["MKTAYIAKQR", "GSHMLEDPRV", "WCNFYQTSAE", "PLIKVGHDRM", "ESTRNQYWFC", "AAGLVKTEDL"]


def synthetic_proteins(n: int = 400, seed: int = 0) -> list[str]:
    """Proteins made of six 10-residue words: a masked residue is predictable from its word."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(WORDS, size=int(rng.integers(3, 26)))) for _ in range(n)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pt")
    fasta = folder / "train.fasta"
    fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(synthetic_proteins())))
    prepare(fasta, folder / "shards", PrepareOptions(valid_fraction=0.1))
    return folder / "shards"


def tiny_config(shards: Path, arch: str = "esm", **train) -> dict:
    t = {"seed": 0, "phases": [{"steps": 6, "max_length": 96, "tokens_per_batch": 1024}],
         "log_every": 1, "eval_every": 3, "save_every": 3, "keep_checkpoints": 3, "peak_flops": 1e11,
         "tensorboard": False}
    t.update(train)
    return {"model": {"arch": arch, "preset": "tiny", "max_positions": 300},
            "data": {"shards": str(shards), "valid_sequences": 16},
            "optimizer": {"name": "adamw", "lr": 3e-3, "warmup_steps": 2}, "train": t}


# --------------------------------------------------------------------------- vocabularies


@pytest.mark.parametrize("family", sorted(VOCABS))
def test_tokenizer_matches_the_shard_lookup(family, tmp_path):
    from transformers import AutoTokenizer

    vocab = VOCABS[family]
    tok = build_tokenizer(family)
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    seq = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQX"
    text = " ".join(seq) if vocab.space_separated else seq
    lut_ids = vocab.encode(seq)
    assert reloaded(text)["input_ids"] == lut_ids
    idx = np.frombuffer(seq.encode(), dtype=np.uint8)
    shard = np.array([ALPHABET.index(c) for c in seq], dtype=np.uint8)
    assert vocab.residue_lut[shard].tolist() == [i for i in lut_ids if i not in vocab.special_ids]
    assert len(idx) == len(seq)


def test_layouts_are_the_public_ones():
    assert VOCABS["esm"].size == 33 and VOCABS["protbert"].size == 30 and VOCABS["prott5"].size == 128
    assert VOCABS["protbert"].tokens[:5] == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert VOCABS["prott5"].tokens[:3] == ("<pad>", "</s>", "<unk>")
    if SHARED_ESM_VOCAB.exists():
        assert tuple(SHARED_ESM_VOCAB.read_text().split()) == VOCABS["esm"].tokens


# --------------------------------------------------------------------------- batching


def test_batch_plan_covers_every_sequence_once_within_budget():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 900, size=700)
    plan = BatchPlan(lengths, max_length=256, n_special=2, tokens_per_batch=2048, seed=3)
    n = plan.batches_per_epoch()
    seen = []
    padded_total = real_total = 0
    for k in range(n):
        epoch, _, idx = plan.get(k)
        assert epoch == 0
        padded = np.minimum(lengths[idx], 254) + 2
        assert len(idx) * padded.max() <= 2048
        padded_total += len(idx) * padded.max()
        real_total += padded.sum()
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(700))
    assert 1 - real_total / padded_total < 0.05  # length bucketing: little padding
    assert plan.get(n)[0] == 1  # the next micro-batch starts epoch 2
    again = BatchPlan(lengths, max_length=256, n_special=2, tokens_per_batch=2048, seed=3)
    assert all(np.array_equal(plan.get(k)[2], again.get(k)[2]) for k in (0, 5, n + 2))
    other = BatchPlan(lengths, max_length=256, n_special=2, tokens_per_batch=2048, seed=4)
    assert not all(np.array_equal(plan.get(k)[2], other.get(k)[2]) for k in range(5))


def test_max_sequences_caps_batches():
    plan = BatchPlan(np.full(100, 10), max_length=64, n_special=2, tokens_per_batch=10_000, max_sequences=8)
    assert max(len(plan.get(k)[2]) for k in range(plan.batches_per_epoch())) == 8


# --------------------------------------------------------------------------- objectives


def _seqs(n=64, length=200, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 20, size=length).astype(np.uint8) for _ in range(n)]


def test_mlm_masking_follows_bert_80_10_10():
    vocab = VOCABS["esm"]
    seqs = _seqs(200, 300)
    b = make_batch(seqs, "mlm", vocab, max_length=302, mask_probability=0.15, replace_mask=0.8,
                   replace_random=0.1, rng=np.random.default_rng(0))
    ids = b.inputs["input_ids"]
    sel = b.labels != IGNORE
    residues = 200 * 300
    assert abs(sel.sum().item() / residues - 0.15) < 0.01
    assert not sel[:, 0].any() and not sel[:, -1].any()  # <cls>/<eos> never selected
    masked = (ids == vocab.mask_id) & sel
    kept = (ids == b.labels) & sel
    assert abs(masked.sum().item() / sel.sum().item() - 0.8) < 0.02
    assert abs(kept.sum().item() / sel.sum().item() - (0.1 + 0.1 / 20)) < 0.02  # random may hit itself
    assert set(ids[sel & ~masked].unique().tolist()) <= set(vocab.residue_ids.tolist())


def test_causal_targets_are_the_next_residue():
    vocab = VOCABS["esm"]
    seqs = [np.array([0, 1, 2, 3], dtype=np.uint8), np.array([4, 5], dtype=np.uint8)]
    b = make_batch(seqs, "causal", vocab, max_length=10, mask_probability=0.15, replace_mask=0.8,
                   replace_random=0.1, rng=np.random.default_rng(0))
    ids, labels = b.inputs["input_ids"], b.labels
    assert ids[0].tolist()[:6] == [vocab.bos_id, *vocab.residue_lut[[0, 1, 2, 3]], vocab.eos_id]
    assert labels[0, :4].tolist() == ids[0, 1:5].tolist() and labels[0, 4] == IGNORE  # no <eos> target
    assert labels[1, :2].tolist() == ids[1, 1:3].tolist() and (labels[1, 2:] == IGNORE).all()
    assert b.inputs["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0]


def test_t5_span_corruption_reconstructs_the_whole_sequence():
    vocab = VOCABS["prott5"]
    seqs = _seqs(8, 50)
    b = make_batch(seqs, "span", vocab, max_length=51, mask_probability=0.3, replace_mask=0.8,
                   replace_random=0.1, rng=np.random.default_rng(0))
    enc, dec, labels = b.inputs["input_ids"], b.inputs["decoder_input_ids"], b.labels
    assert (labels[:, -1] == vocab.eos_id).all()
    assert labels[:, :50].tolist() == [vocab.residue_lut[s].tolist() for s in seqs]
    assert (dec[:, 0] == vocab.pad_id).all() and torch.equal(dec[:, 1:], labels[:, :-1])
    corrupted = enc != labels
    assert (enc[corrupted] == vocab.mask_id).all() and 0.2 < corrupted.float().mean() < 0.4
    assert torch.equal(b.eval_labels != IGNORE, corrupted)


def test_long_sequences_are_cropped_not_dropped():
    vocab = VOCABS["esm"]
    b = make_batch(_seqs(3, 1000), "mlm", vocab, max_length=128, mask_probability=0.15, replace_mask=0.8,
                   replace_random=0.1, rng=np.random.default_rng(0))
    assert b.inputs["input_ids"].shape == (3, 128) and b.n_tokens == 3 * 128


# --------------------------------------------------------------------------- LAMB, schedule, FLOPs


def test_lamb_first_step_scales_by_the_trust_ratio():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(50, 40))
    w0 = w.detach().clone()
    opt = Lamb([w], lr=0.01, betas=(0.9, 0.999), eps=1e-12, weight_decay=0.0)
    w.grad = torch.randn(50, 40)
    opt.step()
    update = torch.sign(w.grad)  # first Adam step: m/sqrt(v) = g/|g|
    trust = w0.norm() / update.norm()
    assert torch.allclose(w.detach(), w0 - 0.01 * trust * update, atol=1e-6)


def test_lamb_minimises_a_quadratic():
    torch.manual_seed(0)
    target = torch.randn(20, 20)
    w = torch.nn.Parameter(torch.randn(20, 20))
    opt = Lamb([w], lr=0.05, weight_decay=0.0)
    start = ((w - target) ** 2).mean().item()
    for _ in range(300):
        opt.zero_grad()
        loss = ((w - target) ** 2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * start


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = OptimizerConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    f = [lr_factor(s, cfg, 110) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b - 1e-12 for a, b in zip(f[10:], f[11:]))
    assert f[110] == pytest.approx(0.1)
    lin = OptimizerConfig(warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(50, lin, 100) == pytest.approx(0.5)


def test_forward_flops_match_the_parameter_count_rule():
    model = build_model(ModelSpec(arch="esm", preset="small"))
    n_body = sum(p.numel() for name, p in model.named_parameters()
                 if ".layer." in name and "LayerNorm" not in name and "bias" not in name)
    flops = forward_flops(np.array([100]), arch="esm", layers=6, hidden=320, ffn=1280, vocab=33)
    expected = 2 * n_body * 100 + 4 * 6 * 320 * 100 * 100 + 2 * 320 * 33 * 100
    assert flops == pytest.approx(expected, rel=1e-3)


# --------------------------------------------------------------------------- configs


def test_config_errors_name_the_field(tmp_path, shards):
    base = tiny_config(shards)
    cases = [
        ({"model": {"arch": "gpt9"}}, "model.arch"),
        ({"model": {"preset": "huge"}}, "model.preset"),
        ({"model": {"hidden": 30, "heads": 4}}, "model.hidden"),
        ({"optimizer": {"name": "sgd"}}, "optimizer.name"),
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr"),
        ({"train": {"phases": [{"steps": 5, "max_length": 512, "tokens_per_batch": 100}]}},
         "train.phases[0].tokens_per_batch"),
        ({"train": {"phases": []}}, "train.phases"),
        ({"train": {"cpu_offload": True}}, "train.cpu_offload"),
        ({"train": {"colour": "red"}}, "train.colour"),
        ({"model": {"arch": "albert"}, "train": {"activation_checkpointing": True}},
         "train.activation_checkpointing"),
    ]
    for patch, field in cases:
        data = json.loads(json.dumps(base))
        for section, values in patch.items():
            data[section].update(values)
        with pytest.raises(ConfigError) as err:
            load_config(data=data)
        assert f"config {field}" in str(err.value), (field, str(err.value))


def test_overrides_are_validated_like_the_file(shards):
    cfg = load_config(data=tiny_config(shards), overrides=["train.phases.0.steps=9", "model.arch=bert"])
    assert cfg.train.phases[0].steps == 9 and cfg.model.arch == "bert"
    with pytest.raises(ConfigError, match="train.phases\\[0\\].steps"):
        load_config(data=tiny_config(shards), overrides=["train.phases.0.steps=-1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(data=tiny_config(shards), overrides=["train.seed"])


def test_shipped_recipes_are_valid():
    for path in sorted((REPO / "configs" / "pretrain").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.model.arch in ARCHITECTURES


def test_cli_config_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: esm\n  layers: two\n")
    r = subprocess.run([sys.executable, "-m", "protlm.cli.main", "pretrain", "--config", str(bad),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["protlm: error: config model.layers: must be an integer, not 'two'"]


# --------------------------------------------------------------------------- models learn


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_loss_falls_on_a_fixed_batch(arch):
    torch.manual_seed(0)
    a = ARCHITECTURES[arch]
    model = build_model(ModelSpec(arch=arch, preset="tiny", max_positions=300))
    batch = make_batch(_seqs(8, 60, seed=1), a.objective, a.vocab, max_length=64, mask_probability=0.15,
                       replace_mask=0.8, replace_random=0.1, rng=np.random.default_rng(0))
    # XLNet and Transformer-XL (post-LN, relative positions only, as in the papers) memorise a
    # random batch more slowly: a larger step; same 40 steps and threshold.
    opt = torch.optim.AdamW(model.parameters(), lr={"txl": 1e-2, "xlnet": 5e-3}.get(arch, 3e-3))
    losses = []
    for _ in range(40):
        loss = token_loss(model(**batch.inputs).logits, batch.labels) / batch.n_targets
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_trainer_checkpoint_reloads_with_plain_transformers(arch, shards, tmp_path):
    import transformers

    cfg = load_config(data=tiny_config(shards, arch))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    result = trainer.run()
    folder = Path(result["model"])
    assert {"config.json", "model.safetensors", "protlm_pretrain.yaml"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    from protlm.models.architectures import model_class

    reloaded = model_class(arch).from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    seq = "MKTAYIAKQRQISFVKSHF"
    text = " ".join(seq) if ARCHITECTURES[arch].vocab.space_separated else seq
    ids = torch.tensor([tok(text)["input_ids"]])
    kwargs = {"decoder_input_ids": ids} if arch == "t5" else {}
    ours = trainer.model.eval()  # the weights as trained, in memory
    with torch.no_grad():
        assert torch.allclose(reloaded(ids, **kwargs).logits, ours(ids, **kwargs).logits, atol=1e-5)
    records = read_metrics(tmp_path / "run")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and 0 < r["mfu"] for r in train)
    assert any(r["kind"] == "valid" for r in records)


def test_training_reduces_validation_perplexity(shards, tmp_path):
    cfg = load_config(data=tiny_config(shards, "esm", phases=[{"steps": 100, "max_length": 300, "tokens_per_batch": 4096}],
                                       eval_every=50, save_every=100, log_every=10))
    Trainer(cfg, tmp_path / "run", progress=False).run()
    ppl = [r["val_ppl"] for r in read_metrics(tmp_path / "run") if r["kind"] == "valid"]
    text = "".join(synthetic_proteins())
    _, counts = np.unique(list(text), return_counts=True)
    p = counts / counts.sum()
    unigram = float(np.exp(-(p * np.log(p)).sum()))  # the best a context-free model can do
    assert ppl[-1] < ppl[0] and ppl[-1] < unigram, (ppl, unigram)


# --------------------------------------------------------------------------- resume, NaN, curriculum


def test_resume_reproduces_the_uninterrupted_run(shards, tmp_path):
    data = tiny_config(shards, "esm", phases=[{"steps": 4, "max_length": 64, "tokens_per_batch": 512},
                                              {"steps": 4, "max_length": 128, "tokens_per_batch": 512}],
                       save_every=2)
    data["model"]["dropout"] = 0.1  # RNG state must be restored too
    cfg = load_config(data=data)
    Trainer(cfg, tmp_path / "full", progress=False).run()
    Trainer(cfg, tmp_path / "cut", progress=False).run(until=3)
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(cfg, tmp_path / "cut", progress=False)
    Trainer(load_config(data=data), tmp_path / "cut", resume=True, progress=False).run()
    full = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "full") if r["kind"] == "train"]
    cut = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "cut") if r["kind"] == "train"]
    assert [s for s, _ in cut] == list(range(1, 9))
    assert np.allclose([l for _, l in cut], [l for _, l in full], rtol=0, atol=1e-6)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the learning rate may change on resume (tests/test_divergence.py); the model may not
    changed = load_config(data=data, overrides=["model.dropout=0.2"])
    with pytest.raises(ConfigError, match="config differs"):
        Trainer(changed, tmp_path / "cut", resume=True, progress=False)


def test_a_folder_in_use_or_holding_another_runs_output_is_refused(shards, tmp_path):
    """A second pretraining into the same --out stops at once (the first holds the folder's lock);
    a fresh run into a folder with another run's metrics but no checkpoint is refused instead of
    truncating them (found when two jobs trained one folder and the first one's curve was cut)."""
    from protlm.errors import InputError
    from protlm.io.outputs import output_lock
    from protlm.pretrain.trainer import pretrain

    cfg = load_config(data=tiny_config(shards, "esm"))
    out = tmp_path / "run"
    out.mkdir()
    with output_lock(out, what="pretraining output"):  # as a running `protlm pretrain` holds it
        with pytest.raises(InputError, match="in use by process"):
            pretrain(cfg, out, progress=False)
    assert not (out / "metrics.jsonl").exists()
    (out / "metrics.jsonl").write_text('{"kind": "start", "step": 0}\n{"kind": "train", "step": 5, "loss": 3.0}\n')
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="another run's output"):
        pretrain(cfg, out, progress=False)
    assert (out / "metrics.jsonl").read_text() == before


def test_curriculum_switches_length_and_budget(shards, tmp_path):
    cfg = load_config(data=tiny_config(shards, "esm", phases=[
        {"steps": 3, "max_length": 48, "tokens_per_batch": 480},
        {"steps": 3, "max_length": 200, "tokens_per_batch": 2000}]))
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    widths = [max(b.inputs["input_ids"].shape[1] for b in tr.micro_batches(s)) for s in range(6)]
    assert max(widths[:3]) <= 48 < max(widths[3:]) <= 200
    assert all(b.n_padded <= 480 for s in range(3) for b in tr.micro_batches(s))
    tr.run()
    phases = [r["phase"] for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert phases == [0, 0, 0, 1, 1, 1]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(shards, tmp_path, monkeypatch):
    import protlm.pretrain.trainer as trainer_mod

    cfg = load_config(data=tiny_config(shards, "esm", save_every=2))
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    real = trainer_mod.token_loss
    calls = {"n": 0}

    def poisoned(logits, labels):
        calls["n"] += 1
        out = real(logits, labels)
        return out * float("nan") if tr.step >= 3 else out

    monkeypatch.setattr(trainer_mod, "token_loss", poisoned)
    with pytest.raises(TrainingDiverged) as err:
        tr.run()
    msg = str(err.value)
    assert "step 4" in msg and "step-0000002" in msg
    assert (tmp_path / "run" / "checkpoints" / "step-0000002" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "checkpoints" / "step-0000004").exists()


def test_sigint_saves_a_checkpoint_and_resume_finishes(shards, tmp_path):
    import yaml

    data = tiny_config(shards, "esm", phases=[{"steps": 150, "max_length": 96, "tokens_per_batch": 1024}],
                       save_every=1000, eval_every=1000)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "protlm.cli.main", "pretrain", "--config", str(cfg_path), "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = tmp_path / "o" / "metrics.jsonl"
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count('"train"') < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    latest = (tmp_path / "o" / "checkpoints" / "latest").read_text().strip()
    stopped = int(latest.split("-")[1])
    assert 3 <= stopped < 150
    r = subprocess.run(cmd + ["train.seed=1"], capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines() if '"train"' in l]
    assert steps == list(range(1, 151))


# --------------------------------------------------------------------------- distributed


def _torchrun(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "protlm.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_training_matches_one_process(parallel, shards, tmp_path):
    import yaml

    data = tiny_config(shards, "esm", phases=[{"steps": 5, "max_length": 96, "tokens_per_batch": 768}],
                       save_every=5, eval_every=5, parallel=parallel)
    one = json.loads(json.dumps(data))
    one["train"]["grad_accum"] = 2  # same global batch as 2 processes × 1 micro-batch
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(one))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r1 = subprocess.run([sys.executable, "-m", "protlm.cli.main", "pretrain", "--config", str(tmp_path / "one.yaml"),
                         "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env)
    assert r1.returncode == 0, r1.stderr
    r2 = _torchrun(["pretrain", "--config", str(tmp_path / "two.yaml"), "--out", str(tmp_path / "two")], 2)
    assert r2.returncode == 0, r2.stderr[-3000:]
    m1 = read_metrics(tmp_path / "one")
    m2 = read_metrics(tmp_path / "two")
    l1 = [r["loss"] for r in m1 if r["kind"] == "train"]
    l2 = [r["loss"] for r in m2 if r["kind"] == "train"]
    assert len(l1) == len(l2) == 5
    assert np.allclose(l1, l2, rtol=0, atol=1e-4), (l1, l2)
    assert [r["tokens_seen"] for r in m1 if r["kind"] == "train"] == [r["tokens_seen"] for r in m2 if r["kind"] == "train"]
    v1 = [r["val_ppl"] for r in m1 if r["kind"] == "valid"]
    v2 = [r["val_ppl"] for r in m2 if r["kind"] == "valid"]
    assert np.allclose(v1, v2, rtol=1e-4)
    assert next(r for r in m2 if r["kind"] == "start")["world"] == 2


def test_fsdp_under_torchrun_shards_and_offloads_with_one_process(shards, tmp_path):
    """`torchrun --nproc_per_node 1` with train.parallel: fsdp used to train unsharded (and ignore
    train.cpu_offload); now it shards with a one-process group, with the same losses as a plain
    run. cpu_offload is refused with one line without torchrun, and on a CPU (nothing to offload:
    FSDP's offload crashed there with a traceback)."""
    import yaml

    data = tiny_config(shards, "esm", phases=[{"steps": 3, "max_length": 96, "tokens_per_batch": 768}],
                       save_every=3, eval_every=3)
    fsdp = json.loads(json.dumps(data))
    fsdp["train"].update(parallel="fsdp")
    offload = json.loads(json.dumps(fsdp))
    offload["train"]["cpu_offload"] = True
    (tmp_path / "offload.yaml").write_text(yaml.safe_dump(offload))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(fsdp))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r1 = subprocess.run([sys.executable, "-m", "protlm.cli.main", "pretrain", "--config", str(tmp_path / "plain.yaml"),
                         "--out", str(tmp_path / "plain")], capture_output=True, text=True, env=env)
    assert r1.returncode == 0, r1.stderr
    r2 = _torchrun(["pretrain", "--config", str(tmp_path / "fsdp.yaml"), "--out", str(tmp_path / "fsdp")], 1)
    assert r2.returncode == 0, r2.stderr[-3000:]
    m1, m2 = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "fsdp")
    assert next(r for r in m1 if r["kind"] == "start")["parallel"] == "none"
    assert next(r for r in m2 if r["kind"] == "start")["parallel"] == "fsdp"
    l1 = [r["loss"] for r in m1 if r["kind"] == "train"]
    l2 = [r["loss"] for r in m2 if r["kind"] == "train"]
    assert len(l1) == 3 and np.allclose(l1, l2, rtol=0, atol=1e-5), (l1, l2)
    r3 = subprocess.run([sys.executable, "-m", "protlm.cli.main", "pretrain", "--config",
                         str(tmp_path / "offload.yaml"), "--out", str(tmp_path / "offload")], capture_output=True,
                        text=True, env=env)
    assert r3.returncode == 2 and "train.cpu_offload" in r3.stderr and "torchrun" in r3.stderr
    assert "Traceback" not in r3.stderr and not (tmp_path / "offload").exists()
    r4 = _torchrun(["pretrain", "--config", str(tmp_path / "offload.yaml"), "--out", str(tmp_path / "offload")], 1)
    assert r4.returncode != 0 and "train.cpu_offload" in r4.stderr and "host memory" in r4.stderr
    # torchrun prints its own ChildFailedError traceback for a failed worker; protlm's worker none
    assert "src/protlm/" not in r4.stderr and "RuntimeError" not in r4.stderr


@pytest.mark.parametrize("arch", ["esm", "t5"])
def test_activation_checkpointing_gives_the_same_losses(arch, shards, tmp_path):
    plain = load_config(data=tiny_config(shards, arch, phases=[{"steps": 3, "max_length": 96, "tokens_per_batch": 1024}]))
    ckpt = load_config(data=tiny_config(shards, arch, phases=[{"steps": 3, "max_length": 96, "tokens_per_batch": 1024}],
                                        activation_checkpointing=True))
    Trainer(plain, tmp_path / "a", progress=False).run()
    Trainer(ckpt, tmp_path / "b", progress=False).run()
    la = [r["loss"] for r in read_metrics(tmp_path / "a") if r["kind"] == "train"]
    lb = [r["loss"] for r in read_metrics(tmp_path / "b") if r["kind"] == "train"]
    assert np.allclose(la, lb, atol=1e-5)


@pytest.mark.parametrize("arch, override", [("esm", "model.hidden=48"), ("esm", "optimizer.name=lamb"),
                                            ("xlnet", "model.layers=3"), ("txl", "model.hidden=48")])
def test_resume_with_another_model_shape_or_optimizer_is_one_line(shards, tmp_path, arch, override):
    """Issue 24 #14: a changed shape or optimizer name gave a size mismatch / KeyError traceback;
    it is the one-line "config differs" refusal, given before any weight is loaded."""
    data = tiny_config(shards, arch, phases=[{"steps": 2, "max_length": 64, "tokens_per_batch": 512}], save_every=1)
    if arch != "esm":
        data["model"]["max_positions"] = 64
    Trainer(load_config(data=data), tmp_path / "run", progress=False).run(until=1)
    changed = load_config(data=data, overrides=[override])
    with pytest.raises(ConfigError, match=f"config differs from the checkpoint's in {override.split('=')[0]}"):
        Trainer(changed, tmp_path / "run", resume=True, progress=False)


def test_sigterm_during_pretraining_exits_143_with_a_checkpoint(shards, tmp_path, monkeypatch, capsys):
    """Issue 24 #18: pretrain exited 130 on SIGTERM (the README and every other command: 143)."""
    import os
    import signal

    import yaml

    from protlm.cli.main import main

    data = tiny_config(shards, "esm", phases=[{"steps": 6, "max_length": 64, "tokens_per_batch": 512}], save_every=3)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    step = Trainer.train_step

    def stop_after_two(self):
        out = step(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", stop_after_two)
    code = main(["pretrain", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 143 and "terminated" in err and "Traceback" not in err, err
    assert (tmp_path / "run" / "checkpoints" / "step-0000002").is_dir()
