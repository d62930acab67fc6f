"""Pretraining resume integrity (QA pass): `checkpoints/latest` names a folder of the run only,
damaged checkpoint files are one "damaged checkpoint" line (digests recorded at save, checked on
resume), the run is tied to the prepared data's content not its path string, the output is never
inside the data folder, and `--resume` with nothing to resume is refused."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from protlm.data.prepare import PrepareOptions, prepare
from protlm.errors import ConfigError, InputError
from protlm.pretrain.config import load_config
from protlm.pretrain.trainer import Trainer, pretrain

sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import synthetic_proteins, tiny_config  # noqa: E402


def _prepare(folder: Path, seed: int = 0, n: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fasta = folder / f"in{seed}.fasta"
    fasta.write_text("".join(f">p{seed}_{i}\n{s}\n" for i, s in enumerate(synthetic_proteins(n, seed=seed))))
    prepare(fasta, folder / "shards", PrepareOptions(valid_fraction=0.1))
    return folder / "shards"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return _prepare(tmp_path_factory.mktemp("integrity"))


@pytest.fixture(scope="module")
def run0(shards, tmp_path_factory) -> Path:
    """A finished 6-step run (checkpoints at steps 3 and 6)."""
    out = tmp_path_factory.mktemp("run0") / "run"
    Trainer(load_config(data=tiny_config(shards)), out, progress=False).run()
    return out


def _copy(run0: Path, tmp_path: Path, name: str = "rt") -> Path:
    dst = tmp_path / name
    shutil.copytree(run0, dst, ignore=shutil.ignore_patterns(".protlm.lock"))
    return dst


def _resume(shards, out, *overrides):
    cfg = load_config(data=tiny_config(shards), overrides=["train.phases.0.steps=9", *overrides])
    return Trainer(cfg, out, resume=True, progress=False)


def test_latest_must_name_a_checkpoint_folder_of_the_run(shards, run0, tmp_path):
    other = _copy(run0, tmp_path, "rr")
    rt = _copy(run0, tmp_path)
    latest = rt / "checkpoints" / "latest"
    for text, expect in [("../../rr/checkpoints/step-0000006\n", "not a checkpoint folder of this run"),
                         (f"{other / 'checkpoints' / 'step-0000006'}\n", "not a checkpoint folder of this run"),
                         ("step-0000006/../step-0000003\n", "not a checkpoint folder of this run"),
                         ("\n", "empty or damaged")]:
        latest.write_text(text)
        with pytest.raises(InputError, match=expect):
            _resume(shards, rt)
    latest.write_bytes(os.urandom(64) + b"\xff\xfe")  # not text at all: no UnicodeDecodeError
    with pytest.raises(InputError, match="empty or damaged"):
        _resume(shards, rt)
    # a link named like a checkpoint folder is not followed to another run either
    latest.write_text("step-0000009\n")
    (rt / "checkpoints" / "step-0000009").symlink_to(other / "checkpoints" / "step-0000006")
    with pytest.raises(InputError, match="link"):
        _resume(shards, rt)
    # the documented names still resume
    for name, step in [("best", None), ("step-0000003", 3)]:
        latest.write_text(name + "\n")
        tr = _resume(shards, rt)
        assert step is None or tr.step == step


class _Gadget:  # any class: torch.load(weights_only=True) must refuse to build it
    pass


@pytest.mark.parametrize("legacy", [False, True], ids=["with-digests", "without-digests"])
def test_tampered_checkpoint_files_are_one_damaged_checkpoint_line(shards, run0, tmp_path, legacy):
    def truncate(f: Path):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    tampers = {"model.safetensors": truncate, "config.json": Path.unlink, "trainer_state.pt": truncate,
               "trainer_state.json": lambda f: f.write_text("[1")}
    if legacy:  # a pickle that is not plain tensors/containers is refused, never unpickled
        tampers["trainer_state.pt#pickle"] = lambda f: torch.save({"optimizer": _Gadget()}, f)
    for key, tamper in tampers.items():
        name = key.split("#")[0]
        rt = _copy(run0, tmp_path, f"rt-{key.replace('#', '-')}")
        step = rt / "checkpoints" / "step-0000006"
        if legacy:  # a checkpoint written before digests were recorded
            (step / "checksums.json").unlink()
        tamper(step / name)
        with pytest.raises(InputError, match="damaged checkpoint") as info:
            _resume(shards, rt)
        assert name in str(info.value) and "\n" not in str(info.value), key


def test_cli_damaged_checkpoint_is_one_line_exit_2(shards, run0, tmp_path, capsys):
    from protlm.cli.main import main

    rt = _copy(run0, tmp_path)
    (rt / "checkpoints" / "step-0000006" / "trainer_state.json").write_text("[1")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(shards)))
    argv = ["pretrain", "--config", str(cfg), "--out", str(rt), "--resume", "--threads", "1", "train.phases.0.steps=9"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("protlm: error:") and "trainer_state.json" in err[0], err


def test_corrupted_weights_are_a_damaged_checkpoint_not_a_divergence(shards, run0, tmp_path):
    rt = _copy(run0, tmp_path)
    weights = rt / "checkpoints" / "step-0000006" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:  # same size, garbage inside the tensors
        fh.seek(size // 2)
        fh.write(b"\xff" * 1000)
    assert weights.stat().st_size == size
    with pytest.raises(InputError, match="damaged checkpoint") as info:
        _resume(shards, rt)
    assert "model.safetensors" in str(info.value)
    # the digests are written with every checkpoint, and not copied into the final model
    listing = json.loads((run0 / "checkpoints" / "step-0000006" / "checksums.json").read_text())["xxh3_128"]
    assert {"model.safetensors", "config.json", "trainer_state.pt", "trainer_state.json"} <= set(listing)
    assert not (run0 / "model" / "checksums.json").exists()
    # a checkpoint written before digests were recorded still resumes
    old = _copy(run0, tmp_path, "old")
    (old / "checkpoints" / "step-0000006" / "checksums.json").unlink()
    assert _resume(shards, old).step == 6


def test_resume_is_tied_to_the_data_not_the_path_string(shards, run0, tmp_path, monkeypatch):
    # the same folder spelled relative to the working directory resumes
    rt = _copy(run0, tmp_path)
    monkeypatch.chdir(shards.parent)
    assert _resume(shards, rt, "data.shards=shards").step == 6
    # the same data moved elsewhere resumes (the content is compared, not the path)
    moved = tmp_path / "moved"
    shutil.copytree(shards, moved)
    assert _resume(shards, rt, f"data.shards={moved}").step == 6
    # other data prepared into the very same folder is refused, naming the folder
    data = tmp_path / "d"
    own = _prepare(data)
    cfg = load_config(data=tiny_config(own))
    Trainer(cfg, tmp_path / "x", progress=False).run(until=3)
    shutil.rmtree(own)
    _prepare(data, seed=1)
    with pytest.raises(ConfigError, match="other data"):
        Trainer(load_config(data=tiny_config(own)), tmp_path / "x", resume=True, progress=False)
    # a run saved before the data fingerprint existed still resumes, its path compared resolved
    old = _copy(run0, tmp_path, "old")
    step = old / "checkpoints" / "step-0000006"
    (step / "checksums.json").unlink()
    state = json.loads((step / "trainer_state.json").read_text())
    del state["data_fingerprint"]
    (step / "trainer_state.json").write_text(json.dumps(state))
    assert _resume(shards, old, "data.shards=shards").step == 6
    with pytest.raises(ConfigError, match="data.shards"):
        _resume(shards, old, f"data.shards={moved}")


def test_output_inside_the_data_folder_is_refused(shards, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shards, data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    cfg = load_config(data=tiny_config(data, phases=[{"steps": 1, "max_length": 96, "tokens_per_batch": 1024}]))
    for out in (data, data / "chunks", data / "new" / "run"):
        with pytest.raises(InputError, match="inside the prepared data folder"):
            pretrain(cfg, out, progress=False)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_resume_with_nothing_to_resume_is_refused(shards, tmp_path):
    cfg = load_config(data=tiny_config(shards))
    with pytest.raises(InputError, match="nothing to resume"):
        pretrain(cfg, tmp_path / "typo", resume=True, progress=False)
    assert not (tmp_path / "typo").exists()  # no folder made for a typo
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="nothing to resume"):
        pretrain(cfg, tmp_path / "empty", resume=True, progress=False)
    assert not (tmp_path / "empty" / "metrics.jsonl").exists()
