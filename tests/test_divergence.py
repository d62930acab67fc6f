"""Issue 15 item 8 (and the checkpoint parts of 9 and 12): a diverging pretraining run stops with
one clear line, the best-validation checkpoint survives rotation, the documented safe changes are
allowed on --resume and recorded, a full disk during a save is one clear error."""

from __future__ import annotations

import json
import math
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from protlm.data.prepare import PrepareOptions, prepare
from protlm.errors import ConfigError, InputError
from protlm.pretrain.config import load_config
from protlm.pretrain.metrics import read_metrics
from protlm.pretrain.trainer import Trainer, TrainingDiverged

sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import synthetic_proteins, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("div")
    fasta = folder / "train.fasta"
    fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(synthetic_proteins(200))))
    prepare(fasta, folder / "shards", PrepareOptions(valid_fraction=0.1))
    return folder / "shards"


def test_huge_learning_rate_stops_with_one_clear_error(shards, tmp_path, capsys):
    """lr=100 with warm-up 40 overflowed math.exp in validation: an OverflowError traceback."""
    import yaml

    from protlm.cli.main import main

    data = tiny_config(shards, "esm", phases=[{"steps": 12, "max_length": 96, "tokens_per_batch": 1024}],
                       eval_every=2, save_every=2)
    data["optimizer"].update(lr=100.0, warmup_steps=40)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    code = main(["pretrain", "--config", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("protlm:")]
    assert code == 2 and lines and lines[-1].startswith("protlm: error: training diverged"), err
    assert "Traceback" not in err and "--resume" in lines[-1]
    # the validation records that were written are finite or inf, never a crash
    for r in read_metrics(tmp_path / "run"):
        if r["kind"] == "valid":
            assert r["val_ppl"] > 0


def test_best_validation_checkpoint_survives_rotation(shards, tmp_path, monkeypatch):
    data = tiny_config(shards, "esm", phases=[{"steps": 6, "max_length": 96, "tokens_per_batch": 1024}],
                       eval_every=1, save_every=1, keep_checkpoints=1)
    cfg = load_config(data=data)
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    losses = iter([5.0, 3.0, 4.0, 6.0, 7.0, 8.0])
    real = tr.evaluate

    def fake():
        out = real()
        out["val_loss"] = next(losses)
        out["val_ppl"] = math.exp(out["val_loss"])
        return out

    monkeypatch.setattr(tr, "evaluate", fake)
    tr.run()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-0000006"]  # rotation kept one
    best = json.loads((root / "best" / "trainer_state.json").read_text())
    assert best["step"] == 2 and best["val_loss"] == 3.0
    assert (root / "best" / "model.safetensors").is_file() and (root / "best" / "trainer_state.pt").is_file()
    # weights and tokenizer files are ordinary 0644 files (safetensors writes 0600)
    for f in (root / "best").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044, f
    # the divergence message points at it
    tr2 = Trainer(cfg, tmp_path / "run", resume=True, progress=False)
    msg = tr2._diverged_message("the loss is nan")
    assert "best-validation checkpoint" in msg and "step 2" in msg
    # resuming from it: the `latest` pointer names a folder of checkpoints/
    (root / "latest").write_text("best\n")
    tr3 = Trainer(cfg, tmp_path / "run", resume=True, progress=False)
    assert tr3.step == 2
    monkeypatch.setattr(tr3, "evaluate", lambda: None)
    tr3.run(until=3)  # rotation must keep the checkpoint just written, not the abandoned step-0000006
    assert (root / "latest").read_text().strip() == "step-0000003"
    assert (root / "step-0000003" / "trainer_state.json").is_file()
    tr4 = Trainer(cfg, tmp_path / "run", resume=True, progress=False)
    assert tr4.step == 3
    monkeypatch.setattr(tr4, "evaluate", lambda: None)
    tr4.run()
    assert sorted(p.name for p in root.glob("step-*")) == ["step-0000006"]
    assert (root / "latest").read_text().strip() == "step-0000006"
    state = json.loads((root / "step-0000006" / "trainer_state.json").read_text())
    assert state["step"] == 6 and (root / "step-0000006" / "model.safetensors").is_file()


def test_lower_lr_and_longer_schedule_are_allowed_on_resume_and_recorded(shards, tmp_path):
    data = tiny_config(shards, "esm", phases=[{"steps": 6, "max_length": 96, "tokens_per_batch": 1024}],
                       eval_every=3, save_every=3)
    Trainer(load_config(data=data), tmp_path / "run", progress=False).run(until=3)
    changed = load_config(data=data, overrides=["optimizer.lr=1e-4", "train.phases.0.steps=8",
                                                "optimizer.clip_grad_norm=0.5"])
    tr = Trainer(changed, tmp_path / "run", resume=True, progress=False)
    assert tr.step == 3
    from protlm.pretrain.optim import lr_factor

    expected = 1e-4 * lr_factor(3, changed.optimizer, 8)
    assert [g["lr"] for g in tr.optimizer.param_groups] == pytest.approx([expected] * len(tr.optimizer.param_groups))
    tr.run()
    records = read_metrics(tmp_path / "run")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert train[3]["lr"] == pytest.approx(expected)  # step 4 ran with the new learning rate
    starts = [r for r in records if r["kind"] == "start"]
    change = starts[-1]["config_changes"][-1]
    assert change["step"] == 3 and change["changes"]["optimizer.lr"] == [3e-3, 1e-4]
    assert change["changes"]["train.phases.0.steps"] == [6, 8]
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-0000008" / "trainer_state.json").read_text())
    assert state["config_changes"][-1]["changes"]["optimizer.clip_grad_norm"] == [1.0, 0.5]
    # what would rewrite the past stays refused, naming the setting
    for override, needle in (("model.dropout=0.2", "model.dropout"), ("train.phases.0.steps=5", "phases.0.steps"),
                             ("train.seed=3", "train.seed")):
        with pytest.raises(ConfigError, match=needle):
            Trainer(load_config(data=data, overrides=["train.phases.0.steps=10", override]
                                if "phases" not in override else [override]),
                    tmp_path / "run", resume=True, progress=False)


def test_full_disk_during_a_checkpoint_save_is_one_line(shards, tmp_path, monkeypatch):
    import torch

    data = tiny_config(shards, "esm", phases=[{"steps": 2, "max_length": 96, "tokens_per_batch": 1024}],
                       eval_every=2, save_every=1)
    tr = Trainer(load_config(data=data), tmp_path / "run", progress=False)
    calls = {"n": 0}
    real = torch.save

    def full(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(28, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(InputError) as err:
        tr.run()
    msg = str(err.value)
    assert "No space left on device" in msg and str(tmp_path / "run" / "checkpoints") in msg
    assert "step-0000001" not in msg or "latest" in msg
    root = tmp_path / "run" / "checkpoints"
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]  # no half-written folder left
    assert (root / "latest").read_text().strip() == "step-0000001"


def test_perplexity_of_a_huge_loss_is_inf_not_an_overflow():
    from protlm.pretrain.trainer import _exp

    assert _exp(1e4) == math.inf and _exp(1.0) == pytest.approx(math.e)
    assert np.isfinite(_exp(700.0))


def test_full_disk_while_publishing_the_final_model(shards, tmp_path, monkeypatch):
    import shutil

    from protlm.errors import ProtlmError

    data = tiny_config(shards, "esm", phases=[{"steps": 2, "max_length": 96, "tokens_per_batch": 1024}],
                       eval_every=2, save_every=2)
    tr = Trainer(load_config(data=data), tmp_path / "run", progress=False)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", full)
    with pytest.raises(ProtlmError, match="No space left on device") as err:
        tr.run()
    assert str(tmp_path / "run" / "model") in str(err.value) and "step-0000002" in str(err.value)
    assert not (tmp_path / "run" / ".model.tmp").exists() and not (tmp_path / "run" / "model").exists()
