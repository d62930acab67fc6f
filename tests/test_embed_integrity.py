"""What `protlm embed --resume` and `protlm merge` keep or join is checked first: files of another
run, damaged entries and damaged journal parts are refused (or redone), never passed on with exit 0;
a failed run leaves nothing behind; unwritable outputs are named as such."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from protlm.embed import EmbedOptions, embed_fasta
from protlm.errors import InputError

A = [("A1", "MKTAYIAKQRQISFVKSHFSRQ"), ("A2", "GSHMLEDPVDAFQ")]
B = [("B1", "MSTNPKPQRKTKRNTNRRPQDVKFPGG")]


def write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{i}\n{s}\n" for i, s in records))
    return path


@pytest.fixture
def cli(capsys):
    """``protlm ARGS`` in this process (a subprocess pays seconds of torch import per call)."""
    from protlm.cli.main import main

    def run(*args) -> SimpleNamespace:
        capsys.readouterr()
        code = main([str(a) for a in args])
        return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)

    return run


def _refused(r, text: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("protlm: error:") and text in lines[0], r.stderr


def _embed(cli, tmp_path: Path, name: str, records, *args) -> Path:
    out = tmp_path / name
    r = cli("embed", "--model", "onehot", "--input", write_fasta(tmp_path / f"{name}.fa", records), "--out", out,
             "--threads", "1", *args)
    assert r.returncode == 0, r.stderr
    return out


def _replace(path: Path, key: str, data, attrs: bool = True) -> None:
    """Replace one dataset, keeping its attributes (as an edit by hand would)."""
    with h5py.File(path, "r+") as f:
        kept = dict(f[key].attrs) if attrs else {}
        del f[key]
        f[key] = data
        f[key].attrs.update(kept)


# --------------------------------------------------------------------------- 1. merge


def test_merge_refuses_another_run_and_damaged_entries(tmp_path, cli):
    a = _embed(cli, tmp_path, "a.h5", A)
    b = _embed(cli, tmp_path, "b.h5", B)
    merged = tmp_path / "m.h5"
    r = cli("merge", merged, a, b)
    assert r.returncode == 0, r.stderr
    merged.unlink()
    def refingerprint(p):  # as another --layer of the same model records it
        with h5py.File(p, "r+") as f:
            f.attrs["fingerprint"] = "onehot:onehot|layer=0"

    def add_group(p):
        with h5py.File(p, "r+") as f:
            f.create_group("g")

    cases = {
        "fingerprint": refingerprint, "float16": None, "hash": None,
        "width": lambda p: _replace(p, "B1", np.zeros((27, 5), np.float32)),
        "nan": lambda p: _replace(p, "B1", np.full((27, 21), np.nan, np.float32)),
        "group": add_group,
    }
    expected = {"fingerprint": "fingerprint", "float16": "output_dtype", "hash": "key", "width": "width 5",
                "nan": "non-finite", "group": "'g' is not a dataset"}
    for name, edit in cases.items():
        if name == "float16":
            other = _embed(cli, tmp_path, "b16.h5", B, "--float16")
        elif name == "hash":
            other = _embed(cli, tmp_path, "bh.h5", B, "--key", "hash")
        else:
            other = tmp_path / f"b-{name}.h5"
            shutil.copy(b, other)
            edit(other)
        _refused(cli("merge", merged, a, other), expected[name])
        assert not merged.exists()
    # a plain HDF5 file first: its lack of attributes is not filled in from the second input
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["P1"] = np.zeros((4, 21), np.float32)
    _refused(cli("merge", merged, plain, a), "made by another run")
    assert not merged.exists()


# --------------------------------------------------------------------------- 2. resume into an existing output


def test_resume_refuses_damaged_entries_and_entries_without_a_digest(tmp_path, cli):
    fasta = write_fasta(tmp_path / "a.fa", A)
    good = _embed(cli, tmp_path, "o.h5", A)
    for name, data in (("shape", np.full((5, 3), np.nan, np.float32)),
                       ("nan", np.full((13, 21), np.nan, np.float32)),
                       ("rows", np.zeros((5, 21), np.float32))):
        out = tmp_path / f"{name}.h5"
        shutil.copy(good, out)
        _replace(out, "A2", data)
        before = out.read_bytes()
        r = cli("embed", "--model", "onehot", "--input", fasta, "--out", out, "--resume", "--threads", "1")
        _refused(r, "'A2'")
        assert out.read_bytes() == before
    # a fingerprinted file whose entry lost its digest: its sequence cannot be checked, so no stale vector
    out = tmp_path / "nodigest.h5"
    shutil.copy(good, out)
    with h5py.File(out, "r+") as f:
        del f["A2"].attrs["sequence_digest"]
    changed = write_fasta(tmp_path / "changed.fa", [A[0], ("A2", "GSHMLEDPVDAFW")])
    r = cli("embed", "--model", "onehot", "--input", changed, "--out", out, "--resume", "--threads", "1")
    _refused(r, "does not record the sequence")


# --------------------------------------------------------------------------- 3. the journal


def _interrupted(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A journal left by a run stopped after 3 of its 6 one-protein batches, and the reference file."""
    rng = np.random.default_rng(0)
    records = [(f"r{i}", "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 300))) for i in range(6)]
    fasta = write_fasta(tmp_path / "many.fa", records)
    ref = tmp_path / "ref.h5"
    if not ref.exists():
        embed_fasta("onehot", fasta, ref)
    out = tmp_path / name
    calls = []

    def stop(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_fasta("onehot", fasta, out, options=EmbedOptions(max_sequences=1), progress=stop)
    parts = Path(str(out) + ".parts")
    assert len(list(parts.glob("part-*.npz"))) == 3 and not out.exists()
    return fasta, out, ref


def _rewrite_part(part: Path, edit) -> None:
    with np.load(part) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(part, **arrays)


@pytest.mark.parametrize("damage", ["missing", "nan", "bytes", "truncated"])
def test_a_damaged_journal_part_is_redone_before_the_work(tmp_path, damage):
    fasta, out, ref = _interrupted(tmp_path, "j.h5")
    part = Path(str(out) + ".parts") / "part-000000.npz"
    if damage == "missing":
        _rewrite_part(part, lambda a: a.pop("r0"))
    elif damage == "nan":
        _rewrite_part(part, lambda a: a.__setitem__("r0", np.full((300, 7), np.nan, np.float32)))
    elif damage == "bytes":
        raw = bytearray(part.read_bytes())
        middle = len(raw) // 2  # inside r0, by far the largest member
        raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
        part.write_bytes(bytes(raw))
    else:
        part.write_bytes(part.read_bytes()[:1000])
    seen = []

    def progress(done, total):  # the bad part is gone before the first batch: decided up front
        seen.append(part.exists())

    res = embed_fasta("onehot", fasta, out, options=EmbedOptions(max_sequences=1), resume=True, progress=progress)
    assert seen and not any(seen) and res["already_done"] == 2
    with h5py.File(ref) as a, h5py.File(out) as b:
        assert sorted(a) == sorted(b)
        assert all(np.array_equal(a[k][()], b[k][()]) for k in a)


def test_a_journal_without_run_json_is_not_adopted(tmp_path, cli):
    fasta, out, _ = _interrupted(tmp_path, "j.h5")
    parts = Path(str(out) + ".parts")
    (parts / "run.json").unlink()
    r = cli("embed", "--model", "blosum62", "--input", fasta, "--out", out, "--resume", "--threads", "1")
    _refused(r, "no run.json")
    assert len(list(parts.glob("part-*.npz"))) == 3 and not out.exists()


# --------------------------------------------------------------------------- 4. a failed run


def test_a_failed_run_does_not_block_the_next(tmp_path, monkeypatch):
    from protlm.embed.runner import Embedder

    fasta = write_fasta(tmp_path / "a.fa", A)
    out = tmp_path / "o.h5"

    def broken(self, *args, **kwargs):
        raise InputError("the model produced non-finite values")
        yield

    with monkeypatch.context() as m:
        m.setattr(Embedder, "iter_embed", broken)
        with pytest.raises(InputError):
            embed_fasta("onehot", fasta, out)
    assert not Path(str(out) + ".parts").exists()
    # a journal folder holding only run.json (left by an older protlm) does not block either
    Path(str(out) + ".parts").mkdir()
    (Path(str(out) + ".parts") / "run.json").write_text(json.dumps({"fingerprint": "x"}))
    assert embed_fasta("onehot", fasta, out)["proteins"] == 2


# --------------------------------------------------------------------------- 5.–7. paths


def test_unwritable_outputs_say_so(tmp_path, cli):
    fasta = write_fasta(tmp_path / "a.fa", A)
    _refused(cli("embed", "--model", "onehot", "--input", fasta, "--out", fasta / "x.h5"), "is not a folder")
    if Path("/proc/self").exists():
        r = cli("embed", "--model", "onehot", "--input", fasta, "--out", "/proc/x.h5")
        _refused(r, "cannot write there")
        assert "in use" not in r.stderr
        from protlm.io.outputs import output_lock

        with pytest.raises(InputError, match="cannot write there"):
            with output_lock("/proc/x.h5"):
                pass


def test_the_input_as_output_is_refused(tmp_path, cli):
    fasta = write_fasta(tmp_path / "a.fa", A)
    before = fasta.read_bytes()
    _refused(cli("embed", "--model", "onehot", "--input", fasta, "--out", fasta), "is also an input")
    assert fasta.read_bytes() == before


def test_merge_names_a_folder_input(tmp_path, cli):
    a = _embed(cli, tmp_path, "a.h5", A)
    (tmp_path / "d").mkdir()
    _refused(cli("merge", tmp_path / "m.h5", a, tmp_path / "d"), "is a folder")
