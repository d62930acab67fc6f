"""QA of project / kmer-train / export: bad values get one error line (exit 2, no traceback), an
output never replaces an input or an earlier result without --overwrite, and a model folder whose
config.json does not match its weights is not exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from protlm.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
ESM = ROOT / "checkpoints" / "protlm-swissprot-masked-xs"
FAST = ["--method", "tsne", "--perplexity", "3", "--iterations", "300", "--threads", "1"]


def _one_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("protlm: error: "), err
    return lines[0]


def _emb_and_labels(tmp: Path, n: int = 12) -> tuple[Path, Path]:
    import h5py

    rng = np.random.default_rng(0)
    h5 = tmp / "e.h5"
    with h5py.File(h5, "w") as f:
        for i in range(n):
            f.create_dataset(f"p{i}", data=rng.normal(size=8).astype(np.float32)).attrs["original_id"] = f"p{i}"
        f.attrs["level"] = "protein"
    lab = tmp / "l.csv"
    lab.write_text("id,c\n" + "".join(f"p{i},{'ab'[i % 2]}\n" for i in range(n)))
    return h5, lab


# --------------------------------------------------------------------------- project


def test_project_negative_seed_is_one_error_line(tmp_path, capsys):
    h5, lab = _emb_and_labels(tmp_path)
    line = _one_error(capsys, "project", "--embeddings", h5, "--labels", lab, *FAST, "--seed", "-1",
                      "--out", tmp_path / "o")
    assert "--seed" in line and not (tmp_path / "o" / "projection.json").exists()


def test_project_token_perplexity_error_names_its_flag_before_any_work(tmp_path, capsys):
    h5, lab = _emb_and_labels(tmp_path)
    line = _one_error(capsys, "project", "--embeddings", h5, "--labels", lab, *FAST, "--token-embeddings", ESM,
                      "--token-perplexity", "nan", "--out", tmp_path / "o")
    assert "--token-perplexity" in line, line
    assert not (tmp_path / "o" / "projection.json").exists()  # the protein job did not run first


def test_project_never_overwrites_its_labels_input(tmp_path, capsys):
    h5, lab = _emb_and_labels(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    inside = out / "tsne_coordinates.csv"  # the name the run writes its coordinates to
    shutil.copy(lab, inside)
    before = inside.read_bytes()
    for extra in ([], ["--overwrite"]):
        line = _one_error(capsys, "project", "--embeddings", h5, "--labels", inside, *FAST, "--out", out, *extra)
        assert "tsne_coordinates.csv" in line, line
        assert inside.read_bytes() == before


def test_project_refuses_an_earlier_result_unless_overwrite(tmp_path, capsys):
    h5, lab = _emb_and_labels(tmp_path)
    out = tmp_path / "o"
    assert main(["project", "--embeddings", str(h5), "--labels", str(lab), *FAST, "--out", str(out)]) == 0
    capsys.readouterr()
    first = (out / "projection.json").read_bytes()
    line = _one_error(capsys, "project", "--embeddings", h5, "--labels", lab, *FAST, "--seed", "3", "--out", out)
    assert "--overwrite" in line
    assert (out / "projection.json").read_bytes() == first
    assert main(["project", "--embeddings", str(h5), "--labels", str(lab), *FAST, "--seed", "3", "--out", str(out),
                 "--overwrite"]) == 0
    assert json.loads((out / "projection.json").read_text())["parameters"]["tsne"]["seed"] == 3


# --------------------------------------------------------------------------- kmer-train


def test_kmer_train_negative_seed_is_one_error_line(tmp_path, capsys):
    fasta = tmp_path / "s.fa"
    fasta.write_text(">x\nMKVLAGHHKLW\n>y\nMKKLLAPQRST\n>z\nACDEFGHIKLMNPQ\n")
    line = _one_error(capsys, "kmer-train", fasta, "--out", tmp_path / "k", "--dim", "4", "--seed", "-5")
    assert "--seed" in line and not (tmp_path / "k").exists()


def test_kmer_train_too_small_corpus_names_min_count_when_it_removed_the_3mers(tmp_path, capsys):
    fasta = tmp_path / "s.fa"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n>b\nMKTAYIAKQRQISFVKSHFSRQ\n")
    line = _one_error(capsys, "kmer-train", fasta, "--out", tmp_path / "k", "--dim", "4", "--min-count", "50")
    assert "too small" in line and "--min-count 50" in line and not (tmp_path / "k").exists()


# --------------------------------------------------------------------------- export


def _tampered(tmp: Path, **changes) -> Path:
    folder = tmp / "m"
    shutil.copytree(ESM, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes, said", [
    ({"hidden_size": 48, "intermediate_size": 192}, "(33, 48)"),  # width edited: weights are 96 wide
    ({"num_attention_heads": 4}, "(1, 12)"),  # heads edited: the contact head holds 3 × 6
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"hidden_size": "abc"}, "hidden_size"),
    ({"hidden_size": None}, "hidden_size"),
    ({"layer_norm_eps": "abc"}, "not a number"),
    ({"rope_theta": 500.0}, "rope_theta"),
])
def test_export_refuses_a_config_that_does_not_match_the_weights(tmp_path, capsys, changes, said):
    folder = _tampered(tmp_path, **changes)
    out = tmp_path / "x.safetensors"
    line = _one_error(capsys, "export", folder, "--format", "fair-esm", "--out", out)
    assert said in line, line
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_export_refuses_a_config_that_is_not_an_object(tmp_path, capsys):
    folder = _tampered(tmp_path)
    (folder / "config.json").write_text("[1, 2]\n")
    line = _one_error(capsys, "export", folder, "--format", "fair-esm", "--out", tmp_path / "x.safetensors")
    assert "config.json" in line


def test_export_refuses_non_finite_weights(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = _tampered(tmp_path)
    weights = load_file(folder / "model.safetensors")
    key = "esm.encoder.layer.1.intermediate.dense.weight"
    weights[key][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    line = _one_error(capsys, "export", folder, "--format", "fair-esm", "--out", tmp_path / "x.safetensors")
    assert "layers.1.fc1.weight" in line and "NaN" in line, line


def test_export_of_the_committed_checkpoint_still_works(tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["export", str(ESM), "--format", "fair-esm", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["args"]["attention_heads"] == 6
