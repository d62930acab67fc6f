"""``protlm project`` refuses what it cannot map faithfully, with one line: proteins claimed twice,
too few proteins or dimensions for a map, an unoptimised t-SNE, non-finite vectors (named), and
HDF5 entries that are not vectors (said what they are)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protlm.analysis.projection import MIN_TSNE_ITER, ProjectionParams, project_with_info
from protlm.cli.main import main
from protlm.errors import InputError


def _h5(path: Path, entries: dict[str, object], original: dict[str, str] | None = None) -> Path:
    """A small per-protein-looking HDF5 made by hand (as other tools write them)."""
    import h5py

    with h5py.File(path, "w") as f:
        for key, value in entries.items():
            if isinstance(value, str) and value == "group":
                f.create_group(key)
                continue
            ds = f.create_dataset(key, data=value)
            if original and key in original:
                ds.attrs["original_id"] = original[key]
    return path


def _labels(path: Path, ids: list[str]) -> Path:
    path.write_text("id,cluster\n" + "".join(f"{pid},{'ab'[i % 2]}\n" for i, pid in enumerate(ids)))
    return path


def _vectors(n: int, dim: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=dim).astype(np.float32) for _ in range(n)]


def _one_error(capsys, tmp_path: Path, *argv) -> str:
    code = main(["project", "--threads", "1", "--method", "tsne", "--out", str(tmp_path / "o"), *map(str, argv)])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("protlm: error: "), err
    assert "Traceback" not in err and not (tmp_path / "o" / "projection.json").exists()
    return lines[0]


def test_two_datasets_claiming_one_protein_are_refused(tmp_path, capsys):
    vecs = _vectors(40)
    keys = [f"k{i}" for i in range(40)]
    h5 = _h5(tmp_path / "dup.h5", dict(zip(keys, vecs)), {k: f"q{i % 20}" for i, k in enumerate(keys)})
    line = _one_error(capsys, tmp_path, "--embeddings", h5, "--labels", _labels(tmp_path / "l.csv", [f"q{i}" for i in range(20)]),
                      "--perplexity", 5, "--iterations", 300)
    assert "'q0'" in line and "'k0'" in line and "'k20'" in line, line


def test_one_protein_is_too_few_and_no_impossible_perplexity_is_advised(tmp_path, capsys):
    h5 = _h5(tmp_path / "one.h5", {"p0": _vectors(1)[0]})
    lab = _labels(tmp_path / "l.csv", ["p0"])
    for extra in ([], ["--perplexity", 0.5]):
        line = _one_error(capsys, tmp_path, "--embeddings", h5, "--labels", lab, *extra)
        assert "too few proteins" in line and "at least 2" in line and "below 1" not in line, line


def test_umap_needs_four_points(tmp_path, capsys):
    ids = ["a", "b", "c"]
    h5 = _h5(tmp_path / "three.h5", dict(zip(ids, _vectors(3))))
    code = main(["project", "--threads", "1", "--method", "umap", "--out", str(tmp_path / "o"),
                 "--embeddings", str(h5), "--labels", str(_labels(tmp_path / "l.csv", ids))])
    err = capsys.readouterr().err
    assert code == 2 and "too few proteins for a UMAP map: 3" in err and "below 3" not in err, err


def test_zero_width_and_one_dimensional_vectors_are_refused(tmp_path, capsys):
    ids = [f"p{i}" for i in range(40)]
    lab = _labels(tmp_path / "l.csv", ids)
    h5 = _h5(tmp_path / "zero.h5", {pid: np.zeros(0, np.float32) for pid in ids})
    line = _one_error(capsys, tmp_path, "--embeddings", h5, "--labels", lab, "--perplexity", 5)
    assert "length 0" in line and "zero.h5" in line, line
    with pytest.raises(InputError, match="at least 2 dimensions"):
        project_with_info(np.ones((10, 1), np.float32), "tsne", ProjectionParams(perplexity=2, max_iter=300))


def test_the_minimum_iterations_optimise_the_map(tmp_path, capsys):
    assert MIN_TSNE_ITER > 250
    line = _one_error(capsys, tmp_path, "--token-embeddings", tmp_path / "nomodel", "--iterations", 250)
    assert f"at least {MIN_TSNE_ITER}" in line and "early exaggeration" in line, line
    x = np.vstack(_vectors(30))
    _, info = project_with_info(x, "tsne", ProjectionParams(perplexity=5, max_iter=MIN_TSNE_ITER))
    assert info["iterations_run"] == MIN_TSNE_ITER and info["kl_divergence"] < 100, info


def test_non_finite_vector_names_file_and_protein(tmp_path, capsys):
    ids = [f"p{i}" for i in range(12)]
    vecs = _vectors(12)
    vecs[7][3] = np.nan
    h5 = _h5(tmp_path / "nan.h5", {f"d{i}": v for i, v in enumerate(vecs)}, {f"d{i}": pid for i, pid in enumerate(ids)})
    line = _one_error(capsys, tmp_path, "--embeddings", h5, "--labels", _labels(tmp_path / "l.csv", ids),
                      "--perplexity", 5)
    assert "nan.h5" in line and "'p7'" in line and "NaN" in line, line


@pytest.mark.parametrize("entry, said", [("group", "a group"), (np.float32(1.5), "a single number"),
                                         (np.array([b"MKV", b"AAA"]), "text")])
def test_entries_that_are_not_vectors_are_named_for_what_they_are(tmp_path, capsys, entry, said):
    h5 = _h5(tmp_path / "odd.h5", {"a_first": entry, "b": _vectors(1)[0]})
    line = _one_error(capsys, tmp_path, "--embeddings", h5, "--labels", _labels(tmp_path / "l.csv", ["b"]))
    assert "per-residue" not in line and said in line and "'a_first'" in line, line
