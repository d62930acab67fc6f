"""docs/architecture.md, tested: a new embedder family is one file that touches no other module."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from protlm.cli.main import main
from protlm.embed import Embedder, EmbedOptions
from protlm.errors import InputError


@pytest.fixture(scope="module")
def toy():
    return importlib.import_module("toys.toy_backend")


def test_a_new_backend_is_one_file_and_gets_the_whole_runner(toy):
    emb = Embedder("toy-positions")
    seqs = ["MKTAYIAKQR", "GW", "A" * 130, "MKTAYIAKQR"]
    out = emb.embed(seqs)
    assert [a.shape for a in out] == [(len(s), 3) for s in seqs]
    np.testing.assert_array_equal(out[1][:, 0], [0, 1])
    # the 130-residue protein was windowed by the runner (the backend's limit is 50): positions restart per window
    assert emb.stats.windowed == 1 and out[2][:, 0].max() < 50
    np.testing.assert_array_equal(out[2][:, 2], 50)
    # batching by the backend's token budget, longest first, equal lengths together (CPU plan)
    plan = emb.plan([len(s) for s in seqs])
    assert plan[0] == [2] and sorted(plan[1]) == [0, 3]
    np.testing.assert_allclose(emb.embed_proteins(["GW"])[0], out[1].mean(axis=0))
    assert emb.fingerprint() == "toy:toy-positions"


def test_a_new_backend_works_in_protlm_embed(toy, tmp_path, capsys):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nGW\n")
    out = tmp_path / "toy.h5"
    assert main(["embed", "--model", "toy-positions", "--input", str(fasta), "--output", str(out)]) == 0, \
        capsys.readouterr().err
    with h5py.File(out) as f:
        assert f["a"].shape == (10, 3) and f.attrs["family"] == "toy" and f.attrs["model_type"] == "toy_positions"


def test_runner_refuses_non_finite_output_naming_the_protein(toy, monkeypatch):
    emb = Embedder("toy-positions")
    real = emb.backend.forward

    def broken(seqs, cpu=False):
        out = real(seqs, cpu=cpu)
        out[0][0, 0] = np.nan
        return out

    monkeypatch.setattr(emb.backend, "forward", broken)
    with pytest.raises(InputError, match="non-finite values .* protein 0"):
        emb.embed(["MKT"])


def test_runner_warns_once_when_embeddings_are_the_same_at_every_residue(toy, monkeypatch, caplog):
    """A collapsed layer (every residue's row nearly equal) is returned, but with one warning
    naming the embedder and the protein; ordinary embeddings give none."""
    import logging

    emb = Embedder("toy-positions")
    with caplog.at_level(logging.WARNING, logger="protlm.embed"):
        emb.embed(["MKTAYIAKQRQISFVKSHFSRQ" * 2])
    assert "nearly the same at every residue" not in caplog.text

    def collapsed(seqs, cpu=False):
        rng = np.random.default_rng(0)
        return [np.ones((len(s), 3), np.float32) * 5 + rng.normal(0, 1e-5, (len(s), 3)).astype(np.float32)
                for s in seqs]

    monkeypatch.setattr(emb.backend, "forward", collapsed)
    with caplog.at_level(logging.WARNING, logger="protlm.embed"):
        out = emb.embed(["MKTAYIAKQRQISFVKSHFSRQ" * 2, "MSHHWGYGKHNGPEHWHKDFPIAKG"])
    assert len(out) == 2 and out[0].shape == (44, 3)
    assert caplog.text.count("nearly the same at every residue") == 1
    assert "toy-positions: the embeddings of 0 are nearly the same" in caplog.text


def test_options_reach_the_runner_through_a_spec(toy):
    emb = Embedder({"name": "toy-positions", "tokens_per_batch": 10, "max_sequences": 1})
    assert emb.plan([3, 3, 3]) == [[0], [1], [2]]
    emb2 = Embedder("toy-positions", EmbedOptions(max_sequences=2))
    assert [len(b) for b in emb2.plan([3, 3, 3])] == [2, 1]


# --------------------------------------------------------------------------- a new protocol, a new head


AA = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def toy_task_file(tmp_path_factory):
    """Proteins whose net charge is biased one way or the other (biotrainer format; the TARGET is a
    placeholder: the toy protocol reads its target from the sequence)."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(160):
        bias = "KR" if i % 2 else "DE"
        seq = "".join(rng.choice(list(AA + bias * 3), int(rng.integers(30, 70))))
        split = "SET=train" if i < 100 else "SET=train VALIDATION=True" if i < 130 else "SET=test"
        lines.append(f">t{i} TARGET=x {split}\n{seq}\n")
    path = tmp_path_factory.mktemp("toy") / "toy.fasta"
    path.write_text("".join(lines))
    return path


def _toy_config(path, protocol: str, head: dict) -> dict:
    src = lambda split: {"file": str(path), "format": "biotrainer", "split": split}  # noqa: E731
    return {"name": f"toy_{protocol}", "protocol": protocol, "embedder": "onehot",
            "data": {"train": src("train"), "valid": src("valid"), "test": {"held_out": src("test")}},
            "targets": [{"name": "charge", "label": "target"}], "head": head,
            "train": {"epochs": 40, "lr": 0.01, "batch_size": 16, "patience": 8, "bootstrap": 50}}


def test_a_new_protocol_is_one_file(toy_task_file, tmp_path, capsys):
    importlib.import_module("toys.toy_protocol")
    from protlm.tasks.build import load_task_config
    from protlm.tasks.suite import results_table
    from protlm.tasks.train import evaluate, load_head, predict, train

    cfg = load_task_config(data=_toy_config(toy_task_file, "sequence_to_charge_sign", {"type": "ffn"}))
    res = train(cfg, tmp_path / "head")
    scored = res["test"]["held_out"]["charge"]
    assert scored["agreement"]["value"] > 0.8 and "predicted_positive" in scored  # the toy's own metric
    head = load_head(tmp_path / "head")
    again = evaluate(head, head.protocol.evaluation_sets(head, {}, None), n_boot=50)
    assert again["held_out"]["charge"]["agreement"] == scored["agreement"]
    rows = predict(head, ["a", "b"], ["KKKRRKAKR", "DDEEDDAED"])
    assert [r["sign"] for r in rows] == ["+", "-"]  # the toy's own prediction rows
    assert "sign agreement" in results_table([res])
    # the CLI runs it too, and writes the toy's CSV columns
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nKKKRRKAKR\n>b\nDDEEDDAED\n")
    out = tmp_path / "p.csv"
    assert main(["predict", "--head", str(tmp_path / "head"), "--input", str(fasta), "--output", str(out)]) == 0, \
        capsys.readouterr().err
    assert out.read_text().splitlines()[0] == "id,target,sign,confidence"


def test_a_new_head_is_one_file(toy_task_file, tmp_path):
    importlib.import_module("toys.toy_head")
    from protlm.errors import ConfigError
    from protlm.tasks.build import load_task_config
    from protlm.tasks.train import load_head, predict, train

    config = _toy_config(toy_task_file, "sequence_to_class", {"type": "mean_max", "scale": 0.5})
    # a sequence_to_class file: the charge class is the TARGET (rewritten from the placeholder)
    text = toy_task_file.read_text().splitlines()
    labelled = tmp_path / "cls.fasta"
    labelled.write_text("".join(
        f"{h.replace('TARGET=x', 'TARGET=' + ('pos' if s.count('K') + s.count('R') > s.count('D') + s.count('E') else 'neg'))}\n{s}\n"
        for h, s in zip(text[::2], text[1::2])))
    for part in ("train", "valid"):
        config["data"][part]["file"] = str(labelled)
    config["data"]["test"]["held_out"]["file"] = str(labelled)
    res = train(load_task_config(data=config), tmp_path / "head")
    assert res["test"]["held_out"]["charge"]["accuracy"]["value"] > 0.8 and res["head"] == "mean_max"
    head = load_head(tmp_path / "head")
    assert head.config.head.scale == 0.5 and head.info["config"]["head"] == {"type": "mean_max", "scale": 0.5}
    assert predict(head, ["k"], ["KKRKKRAK"])[0]["prediction"] == "pos"
    # its own Config: settings of other heads are refused, naming the field
    with pytest.raises(ConfigError, match="head.hidden: unknown field"):
        load_task_config(data={**config, "head": {"type": "mean_max", "hidden": 3}})
    with pytest.raises(ConfigError, match="head.scale: must be positive"):
        load_task_config(data={**config, "head": {"type": "mean_max", "scale": 0}})
    # its level (protein) decides which protocols take it: not a per-residue one
    with pytest.raises(ConfigError, match="head.type: 'mean_max' does not fit residue_to_class"):
        load_task_config(data={**config, "protocol": "residue_to_class"})


def test_a_protein_too_big_for_memory_is_windowed_or_skipped_with_a_record(toy, monkeypatch):
    import protlm.embed.runner as runner

    emb = Embedder("toy-positions", EmbedOptions(window_overlap=4))
    emb.backend.max_residues = None
    monkeypatch.setattr(type(emb.backend), "memory_bytes", lambda self, n: n * 1000, raising=False)
    monkeypatch.setattr(runner, "available_memory", lambda: 200_000)  # budget 140 kB → 140 residues at once
    out = emb.embed(["M" * 100, "A" * 400])
    assert out[1].shape == (400, 3) and emb.stats.windowed == 1
    assert out[1][:, 0].max() < 140  # positions restart in each window: it was not run in one pass
    monkeypatch.setattr(runner, "available_memory", lambda: 2_000)
    list(emb.iter_embed(["big"], ["A" * 400]))
    assert emb.stats.skipped[-1]["id"] == "big" and "GiB" in emb.stats.skipped[-1]["reason"]


def test_a_backend_sets_which_proteins_run_alone(toy):
    emb = Embedder("toy-positions")
    emb.backend.max_residues = None
    emb.backend.default_tokens_per_batch = 10_000
    lengths = [1200, 1200, 30]
    assert emb.plan(lengths)[:2] == [[0], [1]]  # the default: over 1,000 residues alone
    emb.backend.default_alone_above = 10_000
    assert emb.plan(lengths)[0] == [0, 1]
    assert Embedder("toy-positions", EmbedOptions(alone_above=500)).plan([600, 600])[0] == [0]


def test_registries_refuse_a_second_owner_of_a_name():
    """Issue 21 #4: a registry silently overwrote a name registered by another module (TAPE's refuses)."""
    import torch

    from protlm.tasks.heads.base import register_head
    from protlm.tasks.protocols.base import Protocol, register_protocol

    with pytest.raises(ValueError, match="head 'ffn' is registered already"):
        register_head("ffn", config=object, levels=("protein",))(lambda cfg, dim, outputs, level: torch.nn.Identity())
    with pytest.raises(ValueError, match="protocol 'sequence_to_class' is registered already"):
        register_protocol(type("Other", (Protocol,), {"name": "sequence_to_class"}))


def test_the_embedder_registry_refuses_a_second_owner_of_a_name():
    from protlm.embed.registry import _load_backends, register

    _load_backends()
    with pytest.raises(ValueError, match="embedder name 'onehot' is registered already"):
        register(names=("onehot",))(lambda source, options: None)
    with pytest.raises(ValueError, match="embedder model_type 'esm' is registered already"):
        register(model_types=("esm",))(lambda source, options: None)


# --------------------------------------------------------------------------- plug-in packages (issue 21 #4)


PLUGIN = __import__("pathlib").Path(__file__).parent / "toys" / "plugin_pkg"


def _protlm(args, tmp_path, plugin: bool = True):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROTLM_CACHE": str(tmp_path / "cache")}
    if plugin:
        env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "protlm.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)


def test_an_out_of_tree_plugin_package_adds_an_embedder_and_a_label_format(tmp_path):
    """A package installed beside protlm (its dist-info names a module under the protlm.plugins
    entry-point group) adds an embedder and a label file format that every command takes; a
    plug-in that fails to import is one warning line, and protlm goes on."""
    import yaml

    rng = np.random.default_rng(0)
    lines, fasta = [], []
    for i in range(120):
        rich = i % 2 == 0
        pool = "AILMFVW" * 3 + "KDSTGN" if rich else "KDSTGNQE" * 3 + "AL"
        seq = "".join(rng.choice(list(pool), int(rng.integers(30, 80))))
        split = "train" if i < 80 else "valid" if i < 100 else "test"
        lines.append(f"p{i}\t{seq}\t{'oily' if rich else 'polar'}\t{split}")
        fasta.append(f">p{i}\n{seq}\n")
    (tmp_path / "set.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "in.fa").write_text("".join(fasta[:5]))
    src = lambda split: {"file": "set.tsv", "format": "toy_tsv", "split": split}  # noqa: E731
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({
        "name": "oily", "protocol": "sequence_to_class", "embedder": "toy-composition",
        "data": {"train": src("train"), "valid": src("valid"), "test": {"held_out": src("test")}},
        "targets": [{"name": "oily", "label": "target"}], "head": {"type": "ffn"},
        "train": {"epochs": 30, "lr": 0.01, "batch_size": 16, "patience": 5, "bootstrap": 50}}))

    r = _protlm(["embed", "--model", "toy-composition", "--input", "in.fa", "--output", "toy.h5"], tmp_path)
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "toy.h5") as f:
        assert len(f) == 5 and all(f[k].shape[1] == 2 for k in f)
    broken = [ln for ln in r.stderr.splitlines() if "broken" in ln]
    assert len(broken) == 1 and "failed to load and is skipped" in broken[0] and "Traceback" not in r.stderr

    r = _protlm(["train", "--config", "cfg.yaml", "--out", "head"], tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = __import__("json").loads((tmp_path / "head" / "metrics.json").read_text())
    assert metrics["test"]["held_out"]["oily"]["accuracy"]["value"] > 0.8

    # an unknown name says which plug-in failed to load (the name may have been its)
    r = _protlm(["embed", "--model", "toy-nothing", "--input", "in.fa", "--output", "y.h5"], tmp_path)
    assert r.returncode == 2 and "plug-in(s) that failed to load: broken" in r.stderr

    # without the package: the names are unknown, with one line each
    r = _protlm(["embed", "--model", "toy-composition", "--input", "in.fa", "--output", "x.h5"], tmp_path,
                plugin=False)
    assert r.returncode == 2 and "not an embedder name" in r.stderr and "Traceback" not in r.stderr
    r = _protlm(["train", "--config", "cfg.yaml", "--out", "head2", "embedder=onehot"], tmp_path, plugin=False)
    assert r.returncode == 2 and "toy_tsv" in r.stderr and "biotrainer" in r.stderr and "Traceback" not in r.stderr


def test_a_plugin_cannot_take_a_builtin_name():
    from protlm.tasks.formats import register_format

    with pytest.raises(ValueError, match="registered already"):
        register_format("biotrainer")(lambda path, source, per_residue=None: [])


# --------------------------------------------------------------------------- a protocol of a new shape


def _composition(seq: str) -> np.ndarray:
    return np.array([seq.count(a) for a in AA], dtype=float) / len(seq)


@pytest.fixture(scope="module")
def toy_pairs(tmp_path_factory):
    """Proteins drawn from different residue mixes, and tables of pairs with the similarity of their
    compositions (1 − half the L1 distance): a task of protein pairs, written with relative paths
    in a YAML config beside the data."""
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("pairs")
    mixes = [rng.dirichlet(np.full(len(AA), 0.3)) for _ in range(6)]
    seqs = {f"p{i}": "".join(rng.choice(list(AA), int(rng.integers(40, 90)), p=mixes[i % 6])) for i in range(72)}
    (folder / "proteins.fasta").write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    names = list(seqs)

    def table(file, lo, hi, n):
        lines = []
        for _ in range(n):
            a, b = rng.choice(names[lo:hi], 2, replace=False)
            value = 1 - 0.5 * np.abs(_composition(seqs[a]) - _composition(seqs[b])).sum()
            lines.append(f"{a}\t{b}\t{value:.5f}\n")
        (folder / file).write_text("".join(lines))

    table("train.tsv", 0, 48, 600)
    table("valid.tsv", 48, 60, 60)
    table("test.tsv", 60, 72, 66)
    (folder / "tasks").mkdir()
    (folder / "tasks" / "pairs.yaml").write_text(
        "name: pairs\nprotocol: protein_pairs_to_value\nembedder: onehot\n"
        "data: {sequences: ../proteins.fasta, train: ../train.tsv, valid: ../valid.tsv, test: {held_out: ../test.tsv}}\n"
        "head: {type: ffn, hidden: 32, dropout: 0.0}\n"
        "train: {epochs: 60, lr: 0.01, batch_size: 32, patience: 8, bootstrap: 50}\n")
    return folder


def test_a_protocol_of_a_new_shape_is_one_file(toy_pairs, tmp_path, capsys, monkeypatch):
    """``protein_pairs_to_value`` (tests/toys/toy_pair_protocol.py) is not label-shaped — pairs of
    proteins, a head input twice the embedder's width, its own data files and state — and runs
    through train, evaluate, predict and the suite with paired differences, touching no protlm
    module."""
    importlib.import_module("toys.toy_pair_protocol")
    from protlm.tasks.build import load_task_config
    from protlm.tasks.train import load_head, predict, train

    config_file = toy_pairs / "tasks" / "pairs.yaml"
    monkeypatch.chdir(tmp_path)  # relative data paths are read from the config's folder, through the protocol
    cfg = load_task_config(config_file)
    assert Path(cfg.data.train).resolve() == (toy_pairs / "train.tsv").resolve()
    res = train(cfg, tmp_path / "head")
    scored = res["test"]["held_out"]["similarity"]
    assert scored["pairs"] == 66 and scored["spearman"]["value"] > 0.5, scored  # learned from the mean one-hot
    doc = json.loads((tmp_path / "head" / "head.json").read_text())
    assert doc["dim"] == 42  # 2 × one-hot's 21: the protocol's input width
    assert set(doc["protocol_state"]) == {"mean", "std"} and "mean" not in doc  # one opaque field
    assert str((toy_pairs / "test.tsv").resolve()) in doc["data_files"]
    head = load_head(tmp_path / "head")
    rows = predict(head, ["x", "y", "z"], [seqs_like(0), seqs_like(0), seqs_like(5)])
    assert [(r["id_a"], r["id_b"]) for r in rows] == [("x", "y"), ("x", "z"), ("y", "z")]
    assert rows[0]["similarity"] > rows[1]["similarity"]  # x and y share a mix, z does not
    # the CLI: evaluate and predict
    assert main(["evaluate", "--head", str(tmp_path / "head"), "--json"]) == 0, capsys.readouterr().err
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["sets"]["held_out"]["similarity"]["spearman"] == scored["spearman"]
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">x\n{seqs_like(0)}\n>y\n{seqs_like(0)}\n>z\n{seqs_like(5)}\n")
    assert main(["predict", "--head", str(tmp_path / "head"), "--input", str(fasta), "--output",
                 str(tmp_path / "p.csv")]) == 0, capsys.readouterr().err
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "id_a,id_b,similarity"
    # the suite: two embedders, the results table with the protocol's label and count, a paired difference
    assert main(["benchmark", "--suite", str(config_file), "--embedder", "onehot", "--embedder", "blosum62",
                 "--compare", "blosum62:onehot", "--out", str(tmp_path / "suite"), "--no-cache"]) == 0, \
        capsys.readouterr().err
    table = (tmp_path / "suite" / "results.md").read_text()
    assert "Spearman ρ (pairs), n=66" in table
    diff = json.loads((tmp_path / "suite" / "results.json").read_text())["paired_differences"]
    assert [(d["target"], d["set"], d["proteins"]) for d in diff] == [("similarity", "held_out", 66)]


def seqs_like(mix: int) -> str:
    """A protein of residue mix ``mix`` of the toy_pairs fixture (same generator and mixes)."""
    rng = np.random.default_rng(1)
    mixes = [rng.dirichlet(np.full(len(AA), 0.3)) for _ in range(6)]
    return "".join(np.random.default_rng(100 + mix).choice(list(AA), 80, p=mixes[mix]))
