"""Precision by capability (protlm.embed.precision): bf16 on CPUs that have it, refused with one
line where they do not, ``--dtype auto``, int8 without deprecation warnings, float32 outputs, and
a precision that is part of an embedding's identity (so bf16 and fp32 vectors are never mixed)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from protlm.embed import EmbedOptions, Embedder  # noqa: E402
from protlm.embed import precision  # noqa: E402
from protlm.errors import ConfigError  # noqa: E402

PROTEINS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQ",
            "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "ACDEFGHIKLMNPQRSTVWYX", "MEEPQSDPSVEPPLSQETFSDLWKLLPENNVLSPLPS"]
HAS_BF16, WHY_NOT = precision.cpu_bf16()
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason=f"bf16 accuracy is checked where it runs natively: {WHY_NOT}")


@pytest.fixture(scope="module")
def esm(tmp_path_factory) -> Path:
    from protlm.models.architectures import ModelSpec, build_model
    from protlm.models.vocab import build_tokenizer

    folder = tmp_path_factory.mktemp("prec") / "esm"
    torch.manual_seed(0)
    build_model(ModelSpec(arch="esm", preset="tiny")).save_pretrained(folder)
    build_tokenizer("esm").save_pretrained(folder)
    return folder


def _unirep(root: Path, width: int) -> Path:
    from protlm.models.unirep import UniRepConfig, UniRepModel

    torch.manual_seed(0)
    folder = root / f"unirep{width}"
    UniRepModel(UniRepConfig(hidden_size=width, num_layers=2)).eval().save_pretrained(folder)
    return folder


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse2", "avx2", "fma"}))


@pytest.fixture
def with_bf16(monkeypatch):
    """The probe says yes (bf16 then runs, emulated where the CPU lacks it: same numbers, slower)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))


def _cosine(outs, refs) -> np.ndarray:
    per = [(a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)) for a, b in zip(outs, refs)]
    return np.concatenate(per)


def test_probe_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert precision.bf16_capable("cpu") == (True, "")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    ok, why = precision.bf16_capable("cpu")
    assert not ok and "avx512_bf16" in why


def test_bf16_is_refused_with_one_line_where_the_cpu_lacks_it(esm, no_bf16):
    with pytest.raises(ConfigError) as exc:
        Embedder(str(esm), EmbedOptions(device="cpu", dtype="bf16"))
    msg = str(exc.value)
    assert "no bf16 instructions" in msg and "use fp32" in msg and msg.startswith("dtype: bf16") and "\n" not in msg


def test_cli_exits_2_without_a_traceback_where_bf16_is_missing(esm, no_bf16, tmp_path, capsys):
    from protlm.cli.main import main

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    rc = main(["embed", "--model", str(esm), "--input", str(fasta), "--output", str(tmp_path / "o.h5"),
               "--device", "cpu", "--dtype", "bf16"])
    err = capsys.readouterr().err
    assert rc == 2 and "no bf16 instructions" in err and "Traceback" not in err
    assert "protlm: error: --dtype: bf16" in err  # typed on the command line: named as the flag
    assert not (tmp_path / "o.h5").exists()


def test_a_config_file_setting_is_not_named_as_a_flag(esm, tmp_path, capsys):
    """Issue 21 #3: `protlm train --config` with `embedder: {dtype: fp16}` told a YAML user about
    --dtype; now the message names the setting, not a flag they never typed."""
    import yaml

    from protlm.cli.main import main

    data = tmp_path / "t.fasta"
    data.write_text("".join(f">p{i} TARGET={'HEC'[i % 3] * 12} SET={'train' if i < 6 else 'test'}\nMKTAYIAKQRQI\n"
                            for i in range(8)))
    cfg = tmp_path / "t.yaml"
    src = lambda split: {"file": str(data), "format": "biotrainer", "split": split}  # noqa: E731
    cfg.write_text(yaml.safe_dump({"name": "t", "protocol": "residue_to_class",
                                   "embedder": {"name": str(esm), "dtype": "fp16", "device": "cpu"},
                                   "data": {"train": src("train"), "valid": src("train"),
                                            "test": {"t": src("test")}},
                                   "targets": [{"name": "q3", "label": "target", "classes": list("HEC")}]}))
    rc = main(["train", "--config", str(cfg), "--out", str(tmp_path / "head")])
    err = capsys.readouterr().err
    assert rc == 2 and "fp16 is for GPUs" in err and "--dtype" not in err and "Traceback" not in err


def test_fp16_and_int8_with_bf16_are_refused_on_a_cpu(esm, with_bf16):
    with pytest.raises(ConfigError, match="fp16 is for GPUs"):
        Embedder(str(esm), EmbedOptions(device="cpu", dtype="fp16"))
    with pytest.raises(ConfigError, match="two precisions"):
        Embedder(str(esm), EmbedOptions(device="cpu", dtype="bf16", int8=True))


@needs_bf16
def test_bf16_on_a_cpu_with_it_is_close_to_fp32_and_returns_float32(esm):
    ref = Embedder(str(esm), EmbedOptions(device="cpu")).embed(PROTEINS)
    emb = Embedder(str(esm), EmbedOptions(device="cpu", dtype="bf16"))
    out = emb.embed(PROTEINS)
    assert all(a.dtype == np.float32 and a.shape == b.shape for a, b in zip(out, ref))
    cos = _cosine(out, ref)
    assert cos.mean() >= 0.999 and cos.min() >= 0.99
    assert emb.embed_proteins(PROTEINS).dtype == np.float32
    # the weights stay fp32 (bf16 autocast): fine-tuning and the fp32 CPU fallback see fp32 parameters
    assert all(p.dtype == torch.float32 for p in emb.backend.model.parameters())
    h = emb.backend.forward_tokens(PROTEINS[:2], layers=(-1, 1)).hidden
    assert all(t.dtype == torch.float32 for t in h.values())


def test_auto_resolves_to_what_the_machine_has_and_records_it(esm, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    fp32 = Embedder(str(esm), EmbedOptions(device="cpu"))
    auto = Embedder(str(esm), EmbedOptions(device="cpu", dtype="auto"))
    assert auto.describe()["dtype"] == "fp32" and auto.fingerprint() == fp32.fingerprint()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    bf16 = Embedder(str(esm), EmbedOptions(device="cpu", dtype="bf16"))
    auto = Embedder(str(esm), EmbedOptions(device="cpu", dtype="auto"))
    assert auto.describe()["dtype"] == "bf16" and auto.fingerprint() == bf16.fingerprint()
    assert bf16.fingerprint() != fp32.fingerprint() and bf16.fingerprint().endswith("|bf16")
    # int8 is asked for explicitly; auto keeps it, on an fp32 base
    int8 = Embedder(str(esm), EmbedOptions(device="cpu", dtype="auto", int8=True))
    assert int8.describe()["dtype"] == "int8-dynamic" and int8.fingerprint().endswith("|int8")
    # an embedder without a precision takes auto as fp32 (bf16 stays refused for it)
    assert Embedder("onehot", EmbedOptions(dtype="auto")).embed(["MKV"])[0].shape == (3, 21)
    with pytest.raises(ConfigError, match="baseline"):
        Embedder("onehot", EmbedOptions(dtype="bf16"))


def test_an_output_made_in_bf16_is_not_resumed_in_fp32(esm, with_bf16, tmp_path, capsys):
    from protlm.cli.main import main

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMSTNPKPQRK\n")
    out = tmp_path / "o.h5"
    common = ["embed", "--model", str(esm), "--input", str(fasta), "--output", str(out), "--device", "cpu"]
    assert main(common + ["--dtype", "bf16"]) == 0
    capsys.readouterr()
    before = out.read_bytes()
    assert main(common + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "fingerprint" in err and "Traceback" not in err
    assert out.read_bytes() == before
    import h5py

    with h5py.File(out, "r") as f:
        assert f.attrs["dtype"] == "bf16" and f.attrs["fingerprint"].endswith("|bf16")


def test_int8_runs_without_deprecation_warnings_and_stays_close(esm):
    ref = Embedder(str(esm), EmbedOptions(device="cpu")).embed(PROTEINS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb = Embedder(str(esm), EmbedOptions(device="cpu", int8=True))
        out = emb.embed(PROTEINS)
    assert all(a.dtype == np.float32 for a in out)
    assert _cosine(out, ref).mean() >= 0.99
    # the filter is scoped to the call: other deprecation warnings still show
    with pytest.warns(DeprecationWarning):
        warnings.warn("something else is deprecated", DeprecationWarning)


def test_unirep_bf16_gemms_are_close_to_fp32_and_auto_follows_the_measured_width(tmp_path, with_bf16):
    small, wide = _unirep(tmp_path, 64), _unirep(tmp_path, 256)
    assert Embedder(str(small), EmbedOptions(device="cpu", dtype="auto")).describe()["dtype"] == "fp32"
    auto = Embedder(str(wide), EmbedOptions(device="cpu", dtype="auto"))
    assert auto.describe()["dtype"] == "bf16" and auto.fingerprint().endswith("|bf16")
    ref = Embedder(str(wide), EmbedOptions(device="cpu"))
    out = auto.embed(PROTEINS)
    cos = _cosine(out, ref.embed(PROTEINS))
    assert all(a.dtype == np.float32 for a in out)
    assert cos.mean() >= 0.999, cos.mean()
    h_ref = Embedder(str(wide), EmbedOptions(device="cpu", pooling="h_avg")).embed_proteins(PROTEINS)
    h_bf16 = Embedder(str(wide), EmbedOptions(device="cpu", dtype="bf16", pooling="h_avg")).embed_proteins(PROTEINS)
    assert h_bf16.dtype == np.float32 and _cosine([h_bf16], [h_ref]).min() >= 0.999
    assert auto.fingerprint() != ref.fingerprint()


def test_unirep_bf16_is_refused_where_the_cpu_lacks_it(tmp_path, no_bf16):
    with pytest.raises(ConfigError, match="no bf16 instructions"):
        Embedder(str(_unirep(tmp_path, 64)), EmbedOptions(device="cpu", dtype="bf16"))


def test_option_errors_name_the_setting_as_the_user_gave_it():
    """Issue 21 #3: library messages named CLI flags (a YAML user was told about --dtype). An
    option error names the flag only when it was typed, else the config field, else the name."""
    from protlm.embed.spec import EmbedOptions, parse_spec
    from protlm.errors import cli_flags

    cli_flags([])
    with pytest.raises(ConfigError) as lib:
        EmbedOptions(dtype="fp64").validate()
    assert str(lib.value).startswith("dtype: must be one of") and "--" not in str(lib.value)
    with pytest.raises(ConfigError) as yaml_:
        parse_spec({"name": "onehot", "tokens_per_batch": 0}, "embedder")
    assert str(yaml_.value) == "config embedder.tokens_per_batch: must be positive, not 0"
    try:
        cli_flags(["embed", "--tokens-per-batch=0", "--model", "onehot"])
        with pytest.raises(ConfigError) as cli:
            EmbedOptions(tokens_per_batch=0).validate()
        assert str(cli.value) == "--tokens-per-batch: must be positive, not 0"
        with pytest.raises(ConfigError) as other:  # typed flags don't rename a setting the file gave
            parse_spec({"name": "onehot", "window_overlap": -1}, "embedder")
        assert str(other.value).startswith("config embedder.window_overlap:")
    finally:
        cli_flags([])
    with pytest.raises(ConfigError) as fp16:
        precision.resolve_dtype("fp16", "cpu")
    assert str(fp16.value).startswith("dtype: fp16 is for GPUs") and "--" not in str(fp16.value)


@pytest.mark.parametrize("family", ["esm", "bert", "albert", "causal", "xlnet", "txl"])
def test_bf16_really_runs_in_bf16_for_every_family_that_accepts_it(family, with_bf16):
    """Every family that accepts --dtype bf16 computes in bf16 — its vectors differ from fp32's by
    bf16 rounding and stay close — rather than running fp32 under a bf16 label (ProtTXL's segment
    walk did, until it ran under autocast too)."""
    folder = Path(__file__).resolve().parents[1] / "checkpoints" / "architectures-xs" / family
    ref = Embedder(str(folder), EmbedOptions(device="cpu")).embed(PROTEINS)
    emb = Embedder(str(folder), EmbedOptions(device="cpu", dtype="bf16"))
    out = emb.embed(PROTEINS)
    assert emb.fingerprint().endswith("|bf16")
    assert max(float(np.abs(a - b).max()) for a, b in zip(out, ref)) > 1e-4, "bf16 gave fp32's exact numbers"
    assert _cosine(out, ref).mean() >= 0.999


def _task(tmp_path: Path) -> Path:
    from cli_checks import tiny_task

    return tiny_task(tmp_path)


def test_train_with_embedder_keeps_the_embedder_options_given_beside_it(esm, with_bf16, tmp_path, capsys):
    """`--embedder X embedder.dtype=bf16`: the option applies to X (it was dropped, exit 0, fp32)."""
    import json

    from protlm.cli.main import main

    config = _task(tmp_path)
    assert main(["train", "--config", str(config), "--embedder", str(esm), "--out", str(tmp_path / "h"),
                 "embedder.dtype=bf16"]) == 0
    head = json.loads((tmp_path / "h" / "head.json").read_text())
    assert "|bf16" in json.dumps(head) and "|fp32" not in json.dumps(head)
    # and an option the new embedder cannot take is refused, not dropped
    assert main(["train", "--config", str(config), "--embedder", "onehot", "--out", str(tmp_path / "o"),
                 "embedder.dtype=bf16"]) == 2
    assert "--embedder onehot is a baseline embedder" in capsys.readouterr().err


def test_an_embeddings_file_refuses_precision_options(tmp_path, capsys):
    """An HDF5 file is read as written: dtype / int8 / compile asked of it are refused, not ignored
    and recorded in the head."""
    from protlm.cli.main import main

    config = _task(tmp_path)
    h5 = tmp_path / "e.h5"
    fasta = tmp_path / "seqs.fa"
    fasta.write_text("".join(f">s{i}\n{line}\n" for i, line in
                             enumerate(l for l in (tmp_path / "task.fasta").read_text().splitlines()
                                       if not l.startswith(">"))))
    assert main(["embed", "--model", "onehot", "--input", str(fasta), "--output", str(h5)]) == 0
    capsys.readouterr()
    for option in ("embedder.dtype=bf16", "embedder.int8=true", "embedder.compile=true"):
        code = main(["train", "--config", str(config), "--out", str(tmp_path / "h"), f"embedder.name={h5}", option])
        err = capsys.readouterr().err
        assert code == 2 and "a file of embeddings is read as it was written" in err, (option, err)
        assert not (tmp_path / "h" / "head.json").exists()


def test_a_compiled_precision_is_named_as_a_precision():
    from protlm.errors import InputError
    from protlm.tasks.features import _precision_of, check_identity

    assert _precision_of("esm:ab|layer=-1|bf16+compiled") == ("esm:ab|layer=-1", "bf16+compiled")
    with pytest.raises(InputError, match="made by the head's model in bf16, but the head was trained on its "
                                         "bf16\\+compiled features"):
        check_identity({"fingerprint": "esm:ab|layer=-1|bf16+compiled", "dim": 8},
                       {"fingerprint": "esm:ab|layer=-1|bf16", "dim": 8}, "x.h5")
