"""``protlm project``: t-SNE/UMAP keep constructed clusters apart, silhouettes tell real labels from
shuffled ones, outputs are complete, HDF5/FASTA/benchmark inputs, token embeddings, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from protlm.analysis.projection import (
    AA_GROUPS,
    STANDARD_AA,
    ProjectionParams,
    project,
    project_proteins,
    silhouette,
    stratified_subsample,
    token_embedding_matrix,
)
from protlm.cli.main import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAST = ProjectionParams(max_iter=1000)  # 250 would end with the early-exaggeration phase


def blobs(per: int = 20, dim: int = 16, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """Three well-separated Gaussian blobs (centres on different axes, so cosine separates too)."""
    rng = np.random.default_rng(seed)
    x, labels = [], []
    for k, name in enumerate("abc"):
        centre = np.zeros(dim)
        centre[k] = 10.0
        x.append(centre + rng.normal(size=(per, dim)))
        labels += [name] * per
    ids = [f"P{i:03d}" for i in range(3 * per)]
    return ids, np.vstack(x).astype(np.float32), labels


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_h5(path: Path, ids: list[str], x: np.ndarray) -> Path:
    """A per-protein file written by protlm embed's own writer (journal → assemble)."""
    from protlm.embed.store import Journal, assemble, build_keys

    keys, _ = build_keys(ids, "id")
    journal = Journal(path)
    journal.write(keys, ids, None, list(x))
    assemble({"protein": path}, journal, {"model": "blobs", "family": "test", "layer": -1, "key": "id"})
    journal.remove()
    return path


@pytest.fixture(scope="module")
def esm_model(tmp_path_factory) -> Path:
    """A tiny random-weight ESM-2-layout model with protlm's ESM tokenizer."""
    import torch

    from protlm.models.architectures import ModelSpec, build_model
    from protlm.models.vocab import build_tokenizer

    folder = tmp_path_factory.mktemp("models") / "esm"
    torch.manual_seed(0)
    build_model(ModelSpec(arch="esm", preset="tiny")).save_pretrained(folder)
    build_tokenizer("esm").save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- the numbers


def test_silhouette_high_for_clusters_and_near_zero_for_shuffled_labels():
    _, x, labels = blobs()
    assert silhouette(x, labels) > 0.85
    shuffled = list(np.random.default_rng(1).permutation(labels))
    assert abs(silhouette(x, shuffled)) < 0.1


def test_silhouette_skips_unlabelled_and_is_undefined_for_one_class():
    _, x, labels = blobs()
    with_missing = [None if i % 7 == 0 else v for i, v in enumerate(labels)]
    assert silhouette(x, with_missing) > 0.85
    assert silhouette(x, ["a"] * len(labels)) is None
    # a sample cap with a seed is reproducible
    assert silhouette(x, labels, sample=30, seed=3) == silhouette(x, labels, sample=30, seed=3)


def test_tsne_with_the_paper_parameters_keeps_clusters_apart():
    _, x, labels = blobs()
    xy = project(x, "tsne", ProjectionParams())  # perplexity 30, 3,000 iterations, PCA init
    assert xy.shape == (60, 2)
    assert silhouette(xy, labels, metric="euclidean") > 0.5
    assert np.array_equal(xy, project(x, "tsne", ProjectionParams()))  # seeded


def test_umap_keeps_clusters_apart():
    _, x, labels = blobs()
    xy = project(x, "umap")
    assert silhouette(xy, labels, metric="euclidean") > 0.5


def test_perplexity_must_be_below_the_number_of_points():
    from protlm.errors import ConfigError

    _, x, _ = blobs(per=5)
    with pytest.raises(ConfigError, match="perplexity 30 needs more than 30 points, got 15"):
        project(x, "tsne")


def test_stratified_subsample_keeps_class_shares_and_is_seeded():
    strata = ["a"] * 600 + ["b"] * 300 + ["c"] * 90 + [None] * 10
    pick = stratified_subsample(strata, 100, seed=0)
    assert len(pick) == 100 and len(set(pick.tolist())) == 100
    got = [strata[i] for i in pick]
    assert (got.count("a"), got.count("b"), got.count("c"), got.count(None)) == (60, 30, 9, 1)
    assert np.array_equal(pick, stratified_subsample(strata, 100, seed=0))
    assert not np.array_equal(pick, stratified_subsample(strata, 100, seed=1))


# --------------------------------------------------------------------------- the whole job (API)


def test_project_proteins_writes_everything(tmp_path):
    ids, x, labels = blobs()
    cls = {pid: lab for pid, lab in zip(ids, labels) if pid != "P000"}  # one protein unlabelled
    parity = [str(i % 2) for i in range(len(ids))]  # a label unrelated to the clusters
    res = project_proteins(ids, x, {"cluster": cls, "parity": parity}, tmp_path, ["tsne"], FAST)
    s = res["silhouette"]
    assert s["cluster"]["embedding_cosine"] > 0.85 and s["cluster"]["tsne_2d_euclidean"] > 0.5
    assert abs(s["parity"]["embedding_cosine"]) < 0.1
    assert s["cluster"]["unlabelled"] == 1 and s["cluster"]["labelled"] == 59
    assert res["counts"]["unlabelled"] == {"cluster": 1, "parity": 0}
    for name in ("tsne_cluster.png", "tsne_parity.png", "tsne.html", "tsne_coordinates.csv", "projection.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    html = (tmp_path / "tsne.html").read_text()
    assert all(f'"{pid}"' in html for pid in ids)
    assert "unlabelled" in html and "parity" in html  # the dropdown offers both columns
    rows = list(csv.DictReader((tmp_path / "tsne_coordinates.csv").open()))
    assert [r["id"] for r in rows] == ids and rows[0]["cluster"] == "" and rows[1]["cluster"] == "a"
    saved = json.loads((tmp_path / "projection.json").read_text())
    assert saved["silhouette"] == s and saved["parameters"]["tsne"]["max_iter"] == 1000
    assert 250 < saved["runs"]["tsne"]["iterations_run"] <= 1000
    assert not list(tmp_path.glob("*.tmp*"))


def test_continuous_labels_get_a_colour_scale_and_no_silhouette(tmp_path):
    ids, x, _ = blobs()
    values = list(np.linspace(0.0, 1.0, len(ids)))
    res = project_proteins(ids, x, {"stability": values}, tmp_path, ["tsne"], FAST)
    assert res["silhouette"]["stability"]["kind"] == "continuous"
    assert "embedding_cosine" not in res["silhouette"]["stability"]
    assert (tmp_path / "tsne_stability.png").exists()


# --------------------------------------------------------------------------- the command


def labels_csv(path: Path, rows: list[tuple[str, ...]], header=("id", "cluster"), sep=",") -> Path:
    path.write_text("\n".join(sep.join(r) for r in [header, *rows]) + "\n")
    return path


def test_cli_hdf5_and_labels(tmp_path, capsys):
    ids, x, labels = blobs()
    ids[5] = "sp/P005"  # stored as dataset 'sp_P005'; matched through attrs["original_id"]
    h5 = write_h5(tmp_path / "emb.h5", ids, x)
    rows = [(pid, lab) for pid, lab in zip(ids, labels) if pid != "P001"] + [("NOT_EMBEDDED", "a")]
    lab = labels_csv(tmp_path / "labels.csv", rows)
    out = tmp_path / "proj"
    code, stdout, err = run_cli(capsys, "project", "--embeddings", h5, "--labels", lab, "--out", out,
                                "--method", "tsne", "--iterations", 300, "--json")
    assert code == 0, err
    res = json.loads(stdout)["proteins"]
    assert res["counts"]["label_ids_without_embedding"] == 1
    assert res["counts"]["unlabelled"] == {"cluster": 1}
    assert res["source"]["model"] == "blobs"
    assert res["silhouette"]["cluster"]["embedding_cosine"] > 0.85
    assert "silhouette per label" in err and "label ids without an embedding: 1" in err
    assert (out / "tsne_cluster.png").exists() and (out / "projection.json").exists()
    assert "sp/P005" in [r["id"] for r in csv.DictReader((out / "tsne_coordinates.csv").open())]


def test_cli_tsv_color_by_and_max_proteins(tmp_path, capsys):
    ids, x, labels = blobs()
    h5 = write_h5(tmp_path / "emb.h5", ids, x)
    rows = [(pid, lab, str(i % 2)) for i, (pid, lab) in enumerate(zip(ids, labels))]
    lab = labels_csv(tmp_path / "labels.tsv", rows, header=("protein", "cluster", "parity"), sep="\t")
    code, stdout, err = run_cli(capsys, "project", "--embeddings", h5, "--labels", lab, "--id-column", "protein",
                                "--color-by", "cluster", "--max-proteins", 45, "--out", tmp_path / "p",
                                "--method", "tsne", "--iterations", 300, "--perplexity", 10, "--json")
    assert code == 0, err
    res = json.loads(stdout)["proteins"]
    assert list(res["silhouette"]) == ["cluster"]
    assert res["counts"]["projected"] == 45 and res["counts"]["available"] == 60
    assert res["sampling"]["stratified_by"] == "cluster"
    rows = list(csv.DictReader((tmp_path / "p" / "tsne_coordinates.csv").open()))
    assert sorted(r["cluster"] for r in rows).count("a") == 15  # 45 of 60, stratified: 15 per blob


def test_cli_model_fasta_and_token_embeddings(tmp_path, capsys, esm_model):
    rng = np.random.default_rng(0)
    seqs = {f"S{i}": "".join(rng.choice(list(STANDARD_AA), size=30 + i)) for i in range(12)}
    fasta = tmp_path / "s.fasta"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    lab = labels_csv(tmp_path / "l.csv", [(k, "long" if i >= 6 else "short") for i, k in enumerate(seqs)],
                     header=("id", "length"))
    out = tmp_path / "both"
    code, stdout, err = run_cli(capsys, "project", "--model", esm_model, "--input", fasta, "--labels", lab,
                                "--perplexity", 5, "--iterations", 300, "--method", "tsne",
                                "--token-embeddings", esm_model, "--out", out, "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["proteins"]["counts"]["projected"] == 12 and res["proteins"]["counts"]["dim"] == 64
    tok = res["tokens"]
    assert tok["tokens"] == 20 and tok["silhouette"]["group"]["classes"] == len(AA_GROUPS)
    assert tok["parameters"]["tsne"]["perplexity"] == 5.0
    html = (out / "tokens_tsne.html").read_text()
    assert all(f'"{c}"' in html for c in STANDARD_AA)
    coords = list(csv.DictReader((out / "tokens_tsne.csv").open()))
    assert {r["residue"]: r["group"] for r in coords}["W"] == "aromatic"
    assert (out / "tokens_tsne.png").exists() and (out / "tokens.json").exists()
    assert "biochemical groups" in err


def test_token_rows_are_the_tokenizer_ids(esm_model):
    import transformers

    letters, m = token_embedding_matrix(esm_model)
    tok = transformers.AutoTokenizer.from_pretrained(esm_model)
    weight = transformers.EsmModel.from_pretrained(esm_model).get_input_embeddings().weight.detach().numpy()
    assert letters == list(STANDARD_AA)
    assert np.array_equal(m, weight[tok.convert_tokens_to_ids(letters)])
    assert sorted("".join(AA_GROUPS.values())) == sorted(STANDARD_AA)


@pytest.mark.skipif(not (DATA / "localization" / "deeploc_our_val_set.fasta").exists(),
                    reason=f"benchmark data not found at {DATA}")
def test_cli_benchmark_with_model(tmp_path, capsys, esm_model):
    code, stdout, err = run_cli(capsys, "project", "--benchmark", "deeploc_val", "--data", DATA,
                                "--model", esm_model, "--max-proteins", 40, "--method", "tsne",
                                "--iterations", 300, "--perplexity", 10, "--out", tmp_path, "--json")
    assert code == 0, err
    res = json.loads(stdout)["proteins"]
    assert set(res["silhouette"]) == {"location", "membrane"}
    assert res["counts"]["available"] == 1678 and res["counts"]["projected"] == 40


# --------------------------------------------------------------------------- bad input


def _bad_cases(tmp: Path) -> dict[str, tuple[list, list[str]]]:
    ids, x, labels = blobs(per=4)
    h5 = write_h5(tmp / "small.h5", ids, x)
    lab = labels_csv(tmp / "l.csv", list(zip(ids, labels)))
    no_id = labels_csv(tmp / "noid.csv", list(zip(ids, labels)), header=("name", "cluster"))
    return {
        "missing_h5": (["--embeddings", tmp / "nope.h5", "--labels", lab], ["nope.h5", "no such file"]),
        "missing_labels": (["--embeddings", h5, "--labels", tmp / "nope.csv"], ["nope.csv", "no such file"]),
        "unknown_column": (["--embeddings", h5, "--labels", lab, "--color-by", "fold"], ["'fold'", "cluster"]),
        "too_few_for_perplexity": (["--embeddings", h5, "--labels", lab], ["perplexity 30", "got 12"]),
        "labels_without_id": (["--embeddings", h5, "--labels", no_id], ["noid.csv", "'id'", "--id-column"]),
        "no_matching_ids": (["--embeddings", h5, "--labels", labels_csv(tmp / "other.csv", [("X1", "a")])],
                            ["none of the 1 ids"]),
        "labels_and_benchmark": (["--embeddings", h5, "--labels", lab, "--benchmark", "scop"], ["choose one"]),
        "nothing": ([], ["nothing to project"]),
        "input_without_model": (["--input", tmp / "x.fasta", "--labels", lab], ["--embeddings H5"]),
        "not_hdf5": (["--embeddings", lab, "--labels", lab], ["not a readable HDF5 file"]),
        "token_perplexity": (["--token-embeddings", tmp / "nomodel", "--token-perplexity", 25], ["perplexity 25"]),
    }


@pytest.mark.parametrize("case", ["missing_h5", "missing_labels", "unknown_column", "too_few_for_perplexity",
                                  "labels_without_id", "no_matching_ids", "labels_and_benchmark", "nothing",
                                  "input_without_model", "not_hdf5", "token_perplexity"])
def test_bad_input_is_one_error_line(tmp_path, capsys, case):
    argv, parts = _bad_cases(tmp_path)[case]
    code, _, err = run_cli(capsys, "project", *argv, "--method", "tsne", "--out", tmp_path / "out")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("protlm: error: ") and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert not (tmp_path / "out" / "projection.json").exists()
