"""Scoring on someone else's test set: CSV columns named on the command line, DeepLoc headers
with a set name of their own (setHARD), and test sets that are not part of what a head depends
on (adding one to a finished suite scores it with the saved heads, no retraining)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from protlm.cli.main import main
from protlm.errors import ConfigError, InputError

AA = "ACDEFGHIKLMNPQRSTVWY"


def _value(seq: str) -> float:
    return sum(ch in "KR" for ch in seq) / len(seq)


def _seqs(rng, n: int) -> list[str]:
    out = []
    for i in range(n):
        extra = "KR" * (i % 5)
        out.append("".join(rng.choice(list(AA + extra * 3), int(rng.integers(30, 60)))))
    return out


@pytest.fixture()
def value_task(tmp_path):
    """A sequence_to_value task on a plain seq,label CSV, and someone else's test table with other
    column names (Name, Sequence, y) and another column order."""
    rng = np.random.default_rng(0)
    train = tmp_path / "train.csv"
    train.write_text("seq,label\n" + "".join(f"{s},{_value(s):.4f}\n" for s in _seqs(rng, 120)))
    theirs = tmp_path / "theirs.csv"
    theirs.write_text("Name,y,Sequence\n" + "".join(f"p{i},{_value(s):.4f},{s}\n" for i, s in enumerate(_seqs(rng, 30))))
    config = {"name": "kr", "protocol": "sequence_to_value", "embedder": "onehot",
              "data": {"train": {"file": str(train), "format": "csv", "kind": "float", "label": "kr"},
                       "test": {"own": {"file": str(train), "format": "csv", "kind": "float", "label": "kr",
                                        "part": {"fraction": 0.2}}}},
              "targets": [{"name": "kr", "label": "kr"}],
              "head": {"type": "ffn"}, "train": {"epochs": 3, "bootstrap": 50}}
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "kr.yaml").write_text(yaml.safe_dump(config))
    return suite, theirs


def test_extra_test_names_the_csv_columns(value_task, tmp_path):
    from protlm.tasks.suite import run_suite

    suite, theirs = value_task
    res = run_suite(suite, [], tmp_path / "out", None,
                    extra_tests=[f"kr:theirs={theirs}:csv:seq_column=Sequence,label_column=y,id_column=Name"])
    (doc,) = res["results"]
    # the label went under the task's label and was read as a number (a *_to_value task)
    scored = doc["test"]["theirs"]["kr"]
    assert scored["proteins"] == 30 and np.isfinite(scored["spearman"]["value"])
    assert "test: theirs" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.parametrize("item, needle", [
    ("kr:t={theirs}:csv:seq_column=Sequence", "label"),  # the label column is not 'label' or 'target'
    ("kr:t={theirs}:csv:seq_column=Sequence,label_column=Y2", "'Y2' is not a column"),
    ("kr:t={theirs}:csv:sequence=Sequence", "unknown option 'sequence'"),
    ("kr:t={theirs}:csv:seq_column=Sequence,label_column=y,kind=complex", "kind"),
    ("kr:t={theirs}:biotrainer:label_column=y", "only for format: csv"),
    ("kr:t={theirs}", "expected TASK:NAME=PATH:FORMAT"),
])
def test_extra_test_mistakes_are_one_clear_error(value_task, tmp_path, item, needle):
    from protlm.tasks.suite import run_suite

    suite, theirs = value_task
    with pytest.raises((ConfigError, InputError), match=None) as err:
        run_suite(suite, [], tmp_path / "out", None, extra_tests=[item.format(theirs=theirs)])
    assert needle in str(err.value)


def test_evaluate_a_csv_with_other_column_names(value_task, tmp_path, capsys):
    suite, theirs = value_task
    head = tmp_path / "head"
    assert main(["train", "--config", str(suite / "kr.yaml"), "--out", str(head), "--no-cache"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--head", str(head), "--file", str(theirs), "--format", "csv", "--seq-column",
                 "Sequence", "--label-column", "y", "--json", "--no-cache"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sets"]["theirs"]["kr"]["proteins"] == 30


def test_deeploc_headers_with_a_set_name_of_their_own(tmp_path):
    from protlm.data.benchmarks import load_deeploc
    from protlm.tasks.config import SourceConfig
    from protlm.tasks.data import load_source

    path = tmp_path / "setHARD.fasta"
    path.write_text(">P1 Cell.membrane-M new_test_set\nMKVL\n>P2 Nucleus-U new_test_set\nMKV\n"
                    ">P3 Cytoplasm-S\nMKVA\n")
    records = load_source(SourceConfig(file=str(path), format="deeploc"), None, "t")
    assert [(r.id, r.split, r.labels) for r in records] == [
        ("P1", "new_test_set", {"location": "Cell.membrane", "membrane": "M"}),
        ("P2", "new_test_set", {"location": "Nucleus"}),
        ("P3", None, {"location": "Cytoplasm", "membrane": "S"})]
    picked = load_source(SourceConfig(file=str(path), format="deeploc", split="new_test_set"), None, "t")
    assert [r.id for r in picked] == ["P1", "P2"]
    with pytest.raises(InputError, match="'new_test_set'"):  # the benchmark files keep refusing it
        load_deeploc(path)
    two = tmp_path / "two.fasta"
    two.write_text(">P1 Nucleus-M set_a set_b\nMKV\n")
    with pytest.raises(InputError, match="'set_b'"):  # one set name per header
        load_source(SourceConfig(file=str(two), format="deeploc"), None, "t")


def test_adding_a_test_set_keeps_the_heads(value_task, tmp_path):
    from protlm.tasks.suite import run_suite

    suite, theirs = value_task
    out = tmp_path / "out"
    trained, rescored = [], []

    def progress(kind, info):
        if kind == "task":
            trained.append(info["task"])
        if kind == "rescore":  # the long silent step of scoring a new set is announced
            rescored.append((info["task"], info["set"], info["proteins"]))

    first = run_suite(suite, [], out, None, progress=progress)
    assert trained == ["kr"]
    weights = next(out.glob("kr/*/head.safetensors"))
    metrics = weights.with_name("metrics.json")
    stamp, own = weights.stat().st_mtime_ns, first["results"][0]["test"]["own"]

    extra = [f"kr:theirs={theirs}:csv:seq_column=Sequence,label_column=y"]
    second = run_suite(suite, [], out, None, extra_tests=extra, progress=progress)
    assert trained == ["kr"], "a new test set retrained the head"
    assert rescored == [("kr", "theirs", 30)]
    assert weights.stat().st_mtime_ns == stamp
    doc = second["results"][0]
    assert doc["test"]["own"] == own and doc["test"]["theirs"]["kr"]["proteins"] == 30
    assert doc["proteins"]["test:theirs"] == 30
    assert json.loads(metrics.read_text())["test"]["theirs"] == doc["test"]["theirs"]
    # head.json names the added set, so `protlm evaluate --head` alone scores the same sets, same numbers
    head_json = weights.with_name("head.json")
    assert set(json.loads(head_json.read_text())["config"]["data"]["test"]) == {"own", "theirs"}
    from protlm.tasks.commands import evaluate_command

    _, again = evaluate_command(weights.parent, {})
    assert set(again["sets"]) == {"own", "theirs"}
    assert again["sets"]["theirs"]["kr"]["spearman"]["value"] == doc["test"]["theirs"]["kr"]["spearman"]["value"]

    # the same call again: nothing to do, nothing written
    written = metrics.stat().st_mtime_ns
    run_suite(suite, [], out, None, extra_tests=extra, progress=progress)
    assert trained == ["kr"] and metrics.stat().st_mtime_ns == written and len(rescored) == 1

    # the same content with a new modification time (a copied or re-mounted data folder): not scored
    # again; other content is
    import os

    from protlm.tasks.build import load_task_config
    from protlm.tasks.suite import add_tests, parse_extra_tests, test_digests

    text = theirs.read_text()
    os.utime(theirs, ns=(theirs.stat().st_atime_ns, theirs.stat().st_mtime_ns + 5 * 10**9))
    run_suite(suite, [], out, None, extra_tests=extra, progress=progress)
    assert len(rescored) == 1
    # a cell finished by protlm 0.4 recorded size + modification time: still reused, its digests rewritten
    config = load_task_config(suite / "kr.yaml")
    add_tests(config, parse_extra_tests(extra)["kr"])
    old = json.loads(metrics.read_text())
    assert old["test_digests"] == test_digests(config)
    metrics.write_text(json.dumps({**old, "test_digests": test_digests(config, by_stat=True)}))
    run_suite(suite, [], out, None, extra_tests=extra, progress=progress)
    assert len(rescored) == 1 and json.loads(metrics.read_text())["test_digests"] == test_digests(config)
    theirs.write_text(text.replace("\np0,", "\nq0,"))  # an id changed: the file is re-made
    run_suite(suite, [], out, None, extra_tests=extra, progress=progress)
    assert len(rescored) == 2
    theirs.write_text(text)
    run_suite(suite, [], out, None, extra_tests=extra, progress=progress)
    assert len(rescored) == 3

    # the test set leaves the results when it leaves the command line
    third = run_suite(suite, [], out, None, progress=progress)
    assert trained == ["kr"] and set(third["results"][0]["test"]) == {"own"}
    assert "test:theirs" not in third["results"][0]["proteins"]
    assert set(json.loads(head_json.read_text())["config"]["data"]["test"]) == {"own"}

    # what the head depends on (training settings) still retrains it
    run_suite(suite, [], out, None, overrides=["train.epochs=2"], progress=progress)
    assert trained == ["kr", "kr"]


def test_suites_finished_before_test_sets_left_the_digest_are_reused(value_task, tmp_path):
    """metrics.json of protlm 0.4 holds config_digest (the whole config, test sets included)."""
    import hashlib

    from protlm.tasks.build import load_task_config
    from protlm.tasks.features import identity_digest
    from protlm.tasks.suite import run_suite

    suite, theirs = value_task
    out = tmp_path / "out"
    run_suite(suite, [], out, None)
    metrics = next(out.glob("kr/*/metrics.json"))
    doc = json.loads(metrics.read_text())
    # the 0.4 digest, as 0.4 computed it: the config tree before the CSV column fields existed
    tree = {**load_task_config(suite / "kr.yaml").as_dict(), "embedder": identity_digest(doc["embedder_identity"])}
    for src in [*tree["data"]["train"], *tree["data"]["test"].values()]:
        for key in ("seq_column", "label_column", "id_column"):
            del src[key]
    del tree["finetune"]  # 0.4 configs had no finetune: section
    for key in ("early_stopping", "checkpoint_seconds", "clip_grad_norm"):  # nor these train: fields
        del tree["train"][key]
    doc["config_digest"] = hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]
    del doc["head_digest"], doc["test_digests"]
    metrics.write_text(json.dumps(doc))

    trained = []
    res = run_suite(suite, [], out, None, extra_tests=[f"kr:theirs={theirs}:csv:seq_column=Sequence,label_column=y"],
                    progress=lambda kind, info: trained.append(kind) if kind == "task" else None)
    assert trained == [] and set(res["results"][0]["test"]) == {"own", "theirs"}
    assert "head_digest" in json.loads(metrics.read_text())


def test_an_extra_test_named_like_a_config_test_set_is_refused(value_task, tmp_path):
    """issue 24 item 4: `--extra-test kr:own=…` silently replaced the config's own test set `own`."""
    from protlm.tasks.suite import run_suite

    suite, theirs = value_task
    with pytest.raises(ConfigError, match="already has a test set named 'own'"):
        run_suite(suite, [], tmp_path / "out", None,
                  extra_tests=[f"kr:own={theirs}:csv:seq_column=Sequence,label_column=y"])
    assert not list((tmp_path / "out").glob("kr/*/metrics.json"))


def test_a_training_file_rewritten_in_place_trains_the_head_again(value_task, tmp_path):
    """issue 24 item 3: the suite reused heads after the training file was rewritten at the same path."""
    from protlm.tasks.build import load_task_config
    from protlm.tasks.suite import run_suite

    suite, _ = value_task
    train_file = Path(load_task_config(suite / "kr.yaml").data.train[0].file)
    original = train_file.read_bytes()
    out = tmp_path / "out"
    trained = []

    def count(kind, info):
        if kind == "task":
            trained.append(info)

    try:
        run_suite(suite, [], out, None, progress=count)
        run_suite(suite, [], out, None, progress=count)
        assert len(trained) == 1  # unchanged: reused
        lines = original.decode().splitlines()
        header, rows = lines[0], lines[1:]
        labels = [r.split(",")[-1] for r in rows]
        shuffled = [",".join(r.split(",")[:-1] + [labels[(i + 7) % len(rows)]]) for i, r in enumerate(rows)]
        train_file.write_text("\n".join([header, *shuffled]) + "\n")
        run_suite(suite, [], out, None, progress=count)
        assert len(trained) == 2  # other labels at the same path: trained again
    finally:
        train_file.write_bytes(original)
