"""Embedding engine: parity with a direct transformers forward for each family, the HDF5 layout,
keys, resume after SIGKILL, sharding/merge, torchrun, windows, OOM fallback, int8, bad input."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from protlm.embed import EmbedOptions, Embedder, embed_fasta
from protlm.errors import InputError
from protlm.models.architectures import ModelSpec, build_model
from protlm.models.vocab import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_ESM = REPO.parent / "shared" / "data" / "models" / "esm2_t6_8M_UR50D_tokenizer_config"

PROTEINS = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQ",
    "MSTNPKPQRKTKRNTNRRPQDVKFPGG",
    "ACDEFGHIKLMNPQRSTVWYXBZUO",
    "MEEPQSDPSVEPPLSQETFSDLWKLLPENNVLSPLPSQAMDDLMLSPDDIEQWFTEDPGPDEAPRMPEAAPPVAPAPAAPTPAAPAPAPSWPLSSSVPSQKTYQGSYGFRLGFLHSGTAKSVTCTYSPALNKMFCQLAKTCPVQLWVDSTPPPGTRVRAMAIYKQSQHMTEVVRRCPHHERCSDSDGLAPPQHLIRVEGNLRVEYLDDRNTFRHSVVVPYEPPEVGSDCTTIHYNYMCNSSCMGGMNRRPILTIITLEDSSGNLLGRNSFEVRVCACPGRDRRTEEENLRKKGEPHHELPPGSTKRALPNNT",
    "MA",
]


def _save(model, family: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(folder)
    build_tokenizer(family).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight models in the exact layouts of ESM-2, ProtBert and the ProtT5 encoder."""
    from transformers import T5EncoderModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    out = {
        "esm": _save(build_model(ModelSpec(arch="esm", preset="tiny")), "esm", root / "esm2"),
        "protbert": _save(build_model(ModelSpec(arch="bert", preset="tiny", max_positions=1024)), "protbert",
                          root / "protbert"),
        "causal": _save(build_model(ModelSpec(arch="causal", preset="tiny")), "esm", root / "causal"),
        "albert": _save(build_model(ModelSpec(arch="albert", preset="tiny", max_positions=1024)), "protbert",
                        root / "albert"),
    }
    t5 = build_model(ModelSpec(arch="t5", preset="tiny"))
    enc = T5EncoderModel(t5.config)
    enc.load_state_dict(t5.state_dict(), strict=False)
    out["prott5"] = _save(enc, "prott5", root / "prott5")
    # ESM-1b-like: absolute positions with a hard limit (here 60 residues, to test windows cheaply)
    esm1b = build_model(ModelSpec(arch="esm", preset="tiny", max_positions=64,
                                  extra={"position_embedding_type": "absolute"}))
    out["esm1b"] = _save(esm1b, "esm", root / "esm1b")
    return out


def direct(folder: Path, seq: str, text: str, prefix: int) -> np.ndarray:
    """What a user gets with plain transformers, one protein at a time."""
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(folder)
    cls = {"esm": transformers.EsmModel, "bert": transformers.BertModel, "t5": transformers.T5EncoderModel,
           "albert": transformers.AlbertModel, "gpt_neox": transformers.GPTNeoXModel}[cfg.model_type]
    model = cls.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state[0].numpy()
    return h[prefix:prefix + len(seq)]


@pytest.mark.parametrize("name,prefix", [("esm", 1), ("protbert", 1), ("prott5", 0), ("albert", 1), ("causal", 1)])
def test_parity_with_a_direct_transformers_forward(models, name, prefix):
    emb = Embedder(str(models[name]))
    clean = [p.replace("U", "X").replace("Z", "X").replace("O", "X").replace("B", "X")
             if emb.family_info.map_rare else p for p in PROTEINS]
    ours = emb.embed(PROTEINS)  # batched with padding, longest first
    for seq, got, text_seq in zip(PROTEINS, ours, clean):
        text = " ".join(text_seq) if emb.family_info.space_separated else text_seq
        ref = direct(models[name], seq, text, prefix)
        assert got.shape == (len(seq), emb.dim) and got.dtype == np.float32
        assert np.abs(got - ref).max() < 1e-5, name
    means = emb.embed_proteins(PROTEINS)
    assert np.allclose(means, np.stack([a.mean(0) for a in ours]), atol=1e-6)


def test_cpu_batches_hold_only_equal_lengths(models):
    emb = Embedder(str(models["causal"]))  # a family without packed batches (tests/test_packed.py has those)
    lengths = [50, 50, 50, 40, 40, 7, 300]
    batches = emb.plan(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)
    assert sorted(len(b) for b in batches) == [1, 1, 2, 3]


def test_token_layout_matches_the_tokenizer(models):
    for name in ("esm", "protbert", "prott5"):
        emb = Embedder(str(models[name]))
        seq = "MKTAYIAKQX"
        text = " ".join(seq) if emb.family_info.space_separated else seq
        assert emb.layout.encode(seq).tolist() == emb.tokenizer(text)["input_ids"]


def test_esm_layout_uses_the_public_vocabulary(models):
    if not SHARED_ESM.exists():
        pytest.skip("../shared/data/models/esm2_t6_8M_UR50D_tokenizer_config not present")
    from transformers import AutoTokenizer

    ours = Embedder(str(models["esm"]))
    public = AutoTokenizer.from_pretrained(SHARED_ESM)
    assert ours.layout.encode(PROTEINS[0]).tolist() == public(PROTEINS[0])["input_ids"]


def write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{i}\n{s}\n" for i, s in records))
    return path


def test_hdf5_layout_keys_and_attributes(models, tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", [("sp|P1|A/B", PROTEINS[0]), ("p2", PROTEINS[1].lower())])
    out = tmp_path / "e.h5"
    res = embed_fasta(str(models["esm"]), fasta, out, level="both")
    with h5py.File(out) as f:
        assert sorted(f.keys()) == ["p2", "sp|P1|A_B"]
        assert f["sp|P1|A_B"].attrs["original_id"] == "sp|P1|A/B"
        assert f["p2"].shape == (len(PROTEINS[1]), 64) and f["p2"].dtype == np.float32
        assert f.attrs["level"] == "residue" and f.attrs["family"] == "esm" and f.attrs["layer"] == -1
        assert "protlm_version" in f.attrs and f.attrs["model"] == str(models["esm"])
        residue = f["p2"][()]
    with h5py.File(tmp_path / "e.per_protein.h5") as f:
        assert f["p2"].shape == (64,) and np.allclose(f["p2"][()], residue.mean(0), atol=1e-6)
        assert f.attrs["level"] == "protein"
    assert res["proteins"] == 2 and not list(tmp_path.glob("*.parts"))


def test_hash_keys_are_biotrainers(models, tmp_path):
    raw = "mktAYIAKqr"  # the key is store.hash_key's one rule: upper case, B/Z/U/O kept (issue 16)
    fasta = write_fasta(tmp_path / "in.fa", [("x", raw), ("y", PROTEINS[1]), ("dup", PROTEINS[1])])
    out = tmp_path / "h.h5"
    res = embed_fasta(str(models["esm"]), fasta, out, key="hash", level="protein")
    expected = hashlib.sha256(f"{raw.upper()}_{len(raw)}".encode()).hexdigest()
    with h5py.File(out) as f:
        assert expected in f and f[expected].attrs["original_id"] == "x"
        assert len(f) == 2  # the duplicate sequence shares its key
    assert res["duplicate_sequences_shared"] == 1


def test_id_collision_after_slash_replacement_is_an_error(models, tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", [("a/b", "MKT"), ("a_b", "MKV")])
    with pytest.raises(InputError, match="both become dataset name 'a_b'"):
        embed_fasta(str(models["esm"]), fasta, tmp_path / "o.h5")


def test_float16_output_and_layer_choice(models, tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", [("a", PROTEINS[0])])
    embed_fasta(str(models["esm"]), fasta, tmp_path / "h.h5", half=True, options=EmbedOptions(layer=0))
    with h5py.File(tmp_path / "h.h5") as f:
        assert f["a"].dtype == np.float16 and f.attrs["layer"] == 0
    emb = Embedder(str(models["esm"]), EmbedOptions(layer=0))
    last = Embedder(str(models["esm"])).embed([PROTEINS[0]])[0]
    assert not np.allclose(emb.embed([PROTEINS[0]])[0], last)


def test_long_proteins_get_overlapping_windows_or_a_clear_error(models, tmp_path):
    emb = Embedder(str(models["esm1b"]), EmbedOptions(window_overlap=20))
    assert emb.max_residues == 60
    seq = (PROTEINS[3] * 2)[:170]
    out = emb.embed([seq, PROTEINS[1]])
    assert out[0].shape == (170, 64) and emb.stats.windowed == 1
    first = emb.embed([seq[:60]])[0]
    assert np.allclose(out[0][:40], first[:40], atol=1e-5)  # rows covered by one window only
    with pytest.raises(InputError, match="exceed the model's limit of 60"):
        Embedder(str(models["esm1b"]), EmbedOptions(long_policy="error")).embed([seq])


def test_out_of_memory_splits_the_batch(models, monkeypatch):
    emb = Embedder(str(models["esm"]))
    same_length = [PROTEINS[0][i:i + 40] for i in range(0, 40, 5)]  # on a CPU only equal lengths share a batch
    expected = [emb.embed([s])[0] for s in same_length]
    real = emb.backend.forward

    def limited(seqs, cpu=False):
        if len(seqs) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(seqs, cpu=cpu)

    monkeypatch.setattr(emb.backend, "forward", limited)
    emb.stats.oom_splits = 0
    got = emb.embed(same_length)
    assert emb.stats.oom_splits >= 1 and all(np.allclose(a, b, atol=1e-5) for a, b in zip(got, expected))

    def never(seqs, cpu=False):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 GB")

    monkeypatch.setattr(emb.backend, "forward", never)
    ids = ["p0"]
    list(emb.iter_embed(ids, [PROTEINS[0]]))
    assert emb.stats.skipped[-1]["id"] == "p0" and "out of memory" in emb.stats.skipped[-1]["reason"]


def test_int8_stays_close_to_fp32(tmp_path):
    torch.manual_seed(0)
    folder = _save(build_model(ModelSpec(arch="esm", preset="tiny", hidden=128, heads=8, ffn=512)), "esm",
                   tmp_path / "esm128")
    fp32 = Embedder(str(folder)).embed(PROTEINS[:2])
    int8 = Embedder(str(folder), EmbedOptions(int8=True)).embed(PROTEINS[:2])
    for a, b in zip(fp32, int8):
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() >= 0.99, cos.min()


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "protlm.cli.main", *args], capture_output=True, text=True, **kw)


def test_bad_inputs_give_one_clear_message(models, tmp_path):
    good = write_fasta(tmp_path / "ok.fa", [("a", "MKT")])
    bad = tmp_path / "bad.fa"
    bad.write_text(">a\nMK1T\n")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"model_type": "gpt2"}')
    cases = [
        (["--model", str(models["esm"]), "--input", str(bad)], "invalid character"),
        (["--model", str(tmp_path / "nope"), "--input", str(good)], "no such folder"),
        (["--model", str(tmp_path), "--input", str(good)], "no config.json"),
        (["--model", str(gpt2), "--input", str(good)], "not a protein LM family"),
        (["--model", str(models["esm"]), "--input", str(tmp_path / "missing.fa")], "missing.fa"),
    ]
    for i, (args, text) in enumerate(cases):
        r = _cli("embed", *args, "--output", str(tmp_path / f"o{i}.h5"))
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("protlm: error:") and text in lines[0], r.stderr
    r = _cli("embed", "--model", str(models["esm"]), "--input", str(good), "--output", str(tmp_path / "o.h5"))
    assert r.returncode == 0
    r = _cli("embed", "--model", str(models["esm"]), "--input", str(good), "--output", str(tmp_path / "o.h5"))
    assert r.returncode == 2 and "--resume" in r.stderr


def _many(n=300, seed=0):
    rng = np.random.default_rng(seed)
    letters = list("ACDEFGHIKLMNPQRSTVWY")
    return [(f"q{i}", "".join(rng.choice(letters, int(rng.integers(30, 400))))) for i in range(n)]


def test_sigkill_then_resume_gives_the_uninterrupted_file(models, tmp_path):
    fasta = write_fasta(tmp_path / "many.fa", _many())
    ref = tmp_path / "ref.h5"
    embed_fasta(str(models["esm"]), fasta, ref, options=EmbedOptions(tokens_per_batch=600))
    out = tmp_path / "cut.h5"
    cmd = ["embed", "--model", str(models["esm"]), "--input", str(fasta), "--output", str(out),
           "--tokens-per-batch", "600"]
    proc = subprocess.Popen([sys.executable, "-m", "protlm.cli.main", *cmd], stderr=subprocess.DEVNULL)
    parts = Path(str(out) + ".parts")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("part-*.npz"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(list(parts.glob("part-*.npz"))) >= 3
    r = _cli(*cmd, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads(r.stdout)["already_done"] >= 3
    with h5py.File(ref) as a, h5py.File(out) as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(np.allclose(a[k][()], b[k][()], atol=1e-5) for k in a)


def test_shards_and_merge_equal_one_run(models, tmp_path):
    fasta = write_fasta(tmp_path / "many.fa", _many(40, seed=1))
    full = tmp_path / "full.h5"
    embed_fasta(str(models["esm"]), fasta, full, level="protein")
    for i in range(2):
        r = _cli("embed", "--model", str(models["esm"]), "--input", str(fasta), "--output", str(tmp_path / f"s{i}.h5"),
                 "--level", "protein", "--shard", f"{i}/2")
        assert r.returncode == 0, r.stderr
    r = _cli("merge", str(tmp_path / "m.h5"), str(tmp_path / "s0.h5"), str(tmp_path / "s1.h5"))
    assert r.returncode == 0, r.stderr
    with h5py.File(full) as a, h5py.File(tmp_path / "m.h5") as b:
        assert sorted(a.keys()) == sorted(b.keys()) and len(a) == 40
        assert all(np.allclose(a[k][()], b[k][()], atol=1e-5) for k in a)


def test_torchrun_parts_split_the_work_evenly_and_cover_every_protein_once():
    from protlm.embed.pipeline import balanced_part

    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.lognormal(5.8, 0.6, 2000).clip(20, 7000)] + [35213]
    cost = np.array([n * (1 + n / 512) for n in lengths])
    for parts in (2, 3, 8):
        split = [balanced_part(lengths, p, parts) for p in range(parts)]
        assert sorted(i for s in split for i in s) == list(range(len(lengths)))  # each protein in one part
        assert all(s == sorted(s) for s in split)  # the file's order within a part
        loads = [cost[s].sum() for s in split]
        # the 35,213-residue protein alone outweighs an even share at 8 parts: its part holds nothing else
        even = max(cost.sum() / parts, cost.max())
        assert max(loads) <= even * 1.01, (parts, loads)
        rr = [cost[p::parts].sum() for p in range(parts)]  # --shard's i, i+N, … rule
        assert max(loads) < max(rr)
    assert balanced_part(lengths, 1, 3) == balanced_part(list(lengths), 1, 3)  # deterministic: --resume


def test_torchrun_two_processes_write_one_file(models, tmp_path):
    fasta = write_fasta(tmp_path / "many.fa", _many(30, seed=2))
    full = tmp_path / "full.h5"
    embed_fasta(str(models["esm"]), fasta, full)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "tr.h5"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "protlm.cli.main", "embed", "--model", str(models["esm"]), "--input", str(fasta),
                        "--output", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with h5py.File(full) as a, h5py.File(out) as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(np.allclose(a[k][()], b[k][()], atol=1e-5) for k in a)
    assert not list(tmp_path.glob("tr.h5.rank*"))


# --------------------------------------------------------------------------- nothing silently wrong (issue 15)


def _embed_cli(*args):
    from protlm.cli.main import main

    return main(["embed", *args])


def test_resume_refuses_another_model_level_or_sequence(tmp_path, capsys):
    fasta = write_fasta(tmp_path / "in.fa", [("a", "MKTAYIAKQR"), ("b", "GW")])
    out = tmp_path / "o.h5"
    assert _embed_cli("--model", "onehot", "--input", str(fasta), "--output", str(out)) == 0
    capsys.readouterr()
    # another model: refused, the file is untouched
    before = out.read_bytes()
    assert _embed_cli("--model", "blosum62", "--input", str(fasta), "--output", str(out), "--resume") == 2
    err = capsys.readouterr().err
    assert "another run" in err and "fingerprint" in err and "Traceback" not in err
    assert out.read_bytes() == before
    # another level
    assert _embed_cli("--model", "onehot", "--input", str(fasta), "--output", str(out), "--resume",
                      "--level", "protein") == 2
    assert "level" in capsys.readouterr().err
    # a changed sequence under the same id is not kept stale
    fasta2 = write_fasta(tmp_path / "in2.fa", [("a", "MKTAYIAKQW"), ("b", "GW"), ("c", "MKV")])
    assert _embed_cli("--model", "onehot", "--input", str(fasta2), "--output", str(out), "--resume") == 2
    assert "'a' has another sequence" in capsys.readouterr().err
    # the same run resumes and adds what is missing
    fasta3 = write_fasta(tmp_path / "in3.fa", [("a", "MKTAYIAKQR"), ("b", "GW"), ("c", "MKV")])
    assert _embed_cli("--model", "onehot", "--input", str(fasta3), "--output", str(out), "--resume") == 0
    with h5py.File(out) as f:
        assert sorted(f.keys()) == ["a", "b", "c"] and len(f.attrs["fingerprint"]) > 0


def test_a_journal_of_another_run_is_refused(tmp_path, capsys):
    from protlm.embed.store import Journal

    fasta = write_fasta(tmp_path / "in.fa", [("a", "MKT")])
    out = tmp_path / "o.h5"
    journal = Journal(out)
    journal.claim({"fingerprint": "blosum62:blosum62", "level": "residue", "key": "id", "output_dtype": "float32"})
    journal.write(["b"], ["b"], [np.zeros((3, 21), dtype=np.float32)], None, ["0" * 16])
    assert _embed_cli("--model", "onehot", "--input", str(fasta), "--output", str(out), "--resume") == 2
    assert "unfinished parts of another run" in capsys.readouterr().err


def test_a_second_embed_on_the_same_output_is_refused_naming_the_holder(tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", [("a", "MKT")])
    out = tmp_path / "o.h5"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from protlm.io.outputs import output_lock\n"
        f"with output_lock({str(out)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = _cli("embed", "--model", "onehot", "--input", str(fasta), "--output", str(out))
        assert r.returncode == 2 and f"process {holder.pid}" in r.stderr and "Traceback" not in r.stderr
    finally:
        holder.kill()
        holder.wait()
    r = _cli("embed", "--model", "onehot", "--input", str(fasta), "--output", str(out))
    assert r.returncode == 0, r.stderr


def test_rare_residues_are_treated_alike_by_the_cli_and_the_api(models, tmp_path):
    seq = "MKTUZOBAYIAK"
    fasta = write_fasta(tmp_path / "rare.fa", [("r", seq)])
    for name in ("esm", "causal", "protbert"):
        out = tmp_path / f"{name}.h5"
        r = _cli("embed", "--model", str(models[name]), "--input", str(fasta), "--output", str(out))
        assert r.returncode == 0, r.stderr
        api = Embedder(str(models[name])).embed([seq])[0]
        with h5py.File(out) as f:
            np.testing.assert_allclose(f["r"][()], api, atol=1e-5)


def test_safetensors_only(models, tmp_path):
    import shutil

    folder = tmp_path / "bin-only"
    shutil.copytree(models["esm"], folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(InputError, match="safetensors only"):
        Embedder(str(folder))


def test_fingerprint_follows_the_weights_not_the_path(models, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(models["esm"], folder)
    first = Embedder(str(folder)).fingerprint()
    assert Embedder(str(folder)).fingerprint() == first
    assert Embedder(str(folder), EmbedOptions(layer=0)).fingerprint() != first
    shutil.rmtree(folder)
    shutil.copytree(models["causal"], folder)  # re-pretrained into the same folder
    assert Embedder(str(folder)).fingerprint() != first


def test_compressed_output_reads_the_same(tmp_path):
    fasta = write_fasta(tmp_path / "in.fa", [("a", "MKTAYIAKQR" * 20)])
    plain, packed = tmp_path / "p.h5", tmp_path / "c.h5"
    assert _embed_cli("--model", "onehot", "--input", str(fasta), "--output", str(plain)) == 0
    assert _embed_cli("--model", "onehot", "--input", str(fasta), "--output", str(packed), "--compress") == 0
    with h5py.File(plain) as a, h5py.File(packed) as b:
        np.testing.assert_array_equal(a["a"][()], b["a"][()])
        assert b["a"].compression == "gzip" and a["a"].compression is None


def test_hash_keys_keep_rare_residues_like_the_task_readers(tmp_path):
    from protlm.embed.store import hash_key

    seq = "MKTUZOBAYI"
    fasta = write_fasta(tmp_path / "rare.fa", [("r", seq.lower())])
    out = tmp_path / "rare.h5"
    assert _embed_cli("--model", "onehot", "--input", str(fasta), "--output", str(out), "--key", "hash") == 0
    with h5py.File(out) as f:
        assert hash_key(seq) in f  # what protlm's feature reader looks up


def test_an_id_that_names_the_hdf5_root_is_refused_not_dropped(tmp_path, capsys):
    """issue 24 item 9: a record with id '.' was silently missing from the output (it names the root group)."""
    from protlm.cli.main import main

    fasta = tmp_path / "dot.fa"
    fasta.write_text(">a\nMKTAYIAK\n>.\nMKTAYIAKQR\n")
    code = main(["embed", "--model", "onehot", "--input", str(fasta), "--out", str(tmp_path / "o.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "'.'" in err and "--key hash" in err and "Traceback" not in err
    assert not (tmp_path / "o.h5").exists()
    code = main(["embed", "--model", "onehot", "--input", str(fasta), "--out", str(tmp_path / "h.h5"), "--key", "hash"])
    assert code == 0
    with h5py.File(tmp_path / "h.h5") as f:
        assert sorted(f[k].attrs["original_id"] for k in f) == [".", "a"]


def test_the_api_refuses_uncleaned_sequences_with_one_clear_error():
    """issue 24 item 18: lower case reached the HF backends' embedding table as a bare IndexError."""
    import protlm

    emb = protlm.Embedder(str(REPO / "checkpoints" / "protlm-swissprot-masked-xs"))
    for bad, shown in (("mktay", "akmty"), ("MKTA\u00e9", "\u00e9")):
        with pytest.raises(InputError, match=f"no token for: {shown!r}"):
            emb.embed([bad])
    assert emb.embed(["MKTAY"])[0].shape[0] == 5


def test_a_skipped_protein_is_refused_with_the_runners_reason(monkeypatch):
    """Embedder.embed said "out of memory" for any protein the runner skipped; it gives the
    reason the runner recorded."""
    from protlm.embed.runner import Embedder
    from protlm.errors import InputError

    e = Embedder("checkpoints/protlm-swissprot-masked-xs")
    monkeypatch.setattr(Embedder, "_memory_plan", lambda self, pid, seq: ("skip", 0))
    with pytest.raises(InputError, match=r"1 protein\(s\) could not be embedded .*more than this machine has available"):
        e.embed(["MKTAYIAKQR"])
