"""protlm checkpoints and files in other tools (issue 24, items 20–22): biotrainer 2.1.1 picks the
right model class, export-fasta writes biotrainer 2.x headers, weights carry the canonical (hub)
key names, and ``protlm export --format fair-esm`` writes fair-esm's ESM2 layout.

The tests marked with the biotrainer venv run biotrainer itself (and fair-esm, where installed
there); they need a Python ≥ 3.12 venv with ``biotrainer==2.1.1`` (docs/interop.md) at
``$PROTLM_BIOTRAINER_PYTHON`` or ``../bt-venv/bin/python`` next to this checkout, and skip otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from protlm.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
BT_PYTHON = Path(os.environ.get("PROTLM_BIOTRAINER_PYTHON") or ROOT.parent / "bt-venv" / "bin" / "python")
needs_biotrainer = pytest.mark.skipif(
    not BT_PYTHON.exists(),
    reason=f"no biotrainer 2.1.1 venv at {BT_PYTHON} (docs/interop.md says how to make one; set PROTLM_BIOTRAINER_PYTHON)")
SEQS = {"p1": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "p2": "ACDEFGHIKLMNPQRSTVWY", "p3": "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEG"}
COMMITTED_ESM = [ROOT / "checkpoints" / "protlm-swissprot-masked-xs", ROOT / "checkpoints" / "architectures-xs" / "esm"]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint folder per architecture, written the way pretraining writes them."""
    from protlm.models.architectures import ARCHITECTURES, ModelSpec, build_model
    from protlm.pretrain.checkpoint import write_hf_folder

    root = tmp_path_factory.mktemp("interop")
    out = {}
    for arch in ("esm", "causal", "bert", "t5", "xlnet"):
        torch.manual_seed(0)
        model = build_model(ModelSpec(arch=arch, preset="tiny", max_positions=300))
        write_hf_folder(root / arch, model, model.state_dict(), ARCHITECTURES[arch].vocab.family, "{}\n")
        out[arch] = root / arch
    return out


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fasta") / "p.fasta"
    path.write_text("".join(f">{k}\n{v}\n" for k, v in SEQS.items()))
    return path


# --------------------------------------------------------------------------- 20. biotrainer's class choice


def biotrainer_choice(folder: Path) -> str:
    """The model class biotrainer 2.1.1 builds for a local folder. Replicates
    ``_determine_tokenizer_and_model`` in biotrainer/embedding/services/embedding_service_factory.py
    (biotrainer 2.1.1): the class name of ``AutoTokenizer.from_pretrained(folder)``, lower-cased,
    containing "t5" → T5EncoderModel, "esm" → EsmModel, "bert" → BertForMaskedLM, "modernprost" →
    AutoModel, anything else → T5EncoderModel."""
    from transformers import AutoTokenizer

    name = type(AutoTokenizer.from_pretrained(folder)).__name__.lower()
    for part, cls in (("t5", "T5EncoderModel"), ("esm", "EsmModel"), ("bert", "BertForMaskedLM"),
                      ("modernprost", "AutoModel")):
        if part in name:
            return cls
    return "T5EncoderModel"


def test_esm_checkpoint_is_what_biotrainer_maps_to_esmmodel(written):
    assert biotrainer_choice(written["esm"]) == "EsmModel"
    assert json.loads((written["esm"] / "tokenizer_config.json").read_text())["tokenizer_class"] == "EsmTokenizer"
    assert biotrainer_choice(written["t5"]) == "T5EncoderModel"  # the ProtT5 encoder: right by default
    # the causal model shares ESM's vocabulary but must never say EsmTokenizer (a random EsmModel)
    assert biotrainer_choice(written["causal"]) != "EsmModel"
    # the committed xs checkpoints keep the fast tokenizer: the repository holds no copy of ESM-2's
    # vocab.txt (byte-identical to the shared data's); a copy given ESM's tokenizer files by protlm's
    # own save_tokenizer (what `protlm pretrain` writes) is what biotrainer maps to EsmModel
    for folder in COMMITTED_ESM:
        assert not (folder / "vocab.txt").exists(), folder.name
        assert biotrainer_choice(_esm_tokenizer_copy(folder, written["esm"].parent / f"bt-{folder.name}")) == \
            "EsmModel", folder.name


def _esm_tokenizer_copy(folder: Path, dest: Path) -> Path:
    """A copy of a committed ESM folder with ESM's own tokenizer files (docs/interop.md's recipe)."""
    import shutil

    from protlm.models.vocab import save_tokenizer

    if not dest.exists():
        shutil.copytree(folder, dest)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (dest / name).unlink(missing_ok=True)
        save_tokenizer("esm", dest, model_type="esm")
    return dest


def test_esm_tokenizer_ids_equal_the_fast_tokenizer(written):
    from transformers import AutoTokenizer

    from protlm.models.vocab import VOCABS, build_tokenizer

    assert (written["esm"] / "vocab.txt").read_text().split() == list(VOCABS["esm"].tokens)
    slow, fast = AutoTokenizer.from_pretrained(written["esm"]), build_tokenizer("esm")
    for text in ("MKTAYIAKQRQISFVKSHFSRQUZBOX", "ACDEFGHIKLMNPQRSTVWY", "A<mask>C", ""):
        assert slow(text)["input_ids"] == fast(text)["input_ids"], text
    assert slow.get_special_tokens_mask(slow("MK")["input_ids"], already_has_special_tokens=True) == [1, 0, 0, 1]


# --------------------------------------------------------------------------- 22. canonical weight names


def _saved_keys(folder: Path) -> set[str]:
    from safetensors import safe_open

    keys = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            keys |= set(fh.keys())
    return keys


def test_saved_weights_carry_the_hub_names(written):
    """The names transformers 4.x and the hub's ESM-2 files use: LayerNorm weight/bias, one
    rotary inv_freq per layer; no gamma/beta, no wildcard."""
    from protlm.models.architectures import ModelSpec, build_model

    for arch, folder in written.items():
        keys = _saved_keys(folder)
        assert not [k for k in keys if k.endswith((".gamma", ".beta")) or "*" in k], arch
    keys = _saved_keys(written["esm"])
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="esm", preset="tiny", max_positions=300))
    layers = model.config.num_hidden_layers
    expected = {k for k in model.state_dict() if k != "lm_head.decoder.weight" and not k.endswith("inv_freq")}
    expected |= {f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq" for i in range(layers)}
    assert keys == expected
    assert "esm.encoder.layer.0.attention.LayerNorm.weight" in keys and "esm.encoder.emb_layer_norm_after.bias" in keys
    for folder in COMMITTED_ESM:
        committed = _saved_keys(folder)
        assert not [k for k in committed if k.endswith((".gamma", ".beta")) or "*" in k], folder.name
        assert "esm.encoder.layer.0.attention.self.rotary_embeddings.inv_freq" in committed


def test_canonical_folder_loads_with_identical_outputs(written):
    from transformers import AutoModel

    from protlm.models.architectures import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="esm", preset="tiny", max_positions=300)).eval()
    ids = torch.tensor([[0, 20, 15, 11, 5, 19, 12, 5, 15, 16, 2]])
    with torch.no_grad():
        want = model.esm(ids).last_hidden_state
        got = AutoModel.from_pretrained(written["esm"]).eval()(ids).last_hidden_state
    assert torch.equal(want, got)


def test_canonical_weights_rewrites_a_transformers5_save(tmp_path):
    """A folder saved by plain transformers 5.x (gamma/beta, wildcard) is rewritten in place with
    the same tensors under the canonical names."""
    from safetensors.torch import load_file

    from protlm.models.architectures import ModelSpec, build_model
    from protlm.models.folder import canonical_weights

    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="esm", preset="tiny", max_positions=300))
    model.save_pretrained(tmp_path, safe_serialization=True)
    before = load_file(tmp_path / "model.safetensors")
    assert any(k.endswith(".gamma") for k in before) and any("*" in k for k in before)  # what 5.x writes
    assert canonical_weights(tmp_path) is True
    after = load_file(tmp_path / "model.safetensors")
    for k, v in before.items():
        if "*" in k:
            for i in range(model.config.num_hidden_layers):
                assert torch.equal(after[k.replace(".layer.*.", f".layer.{i}.")], v)
        else:
            assert torch.equal(after[k.replace(".gamma", ".weight").replace(".beta", ".bias")], v)
    assert canonical_weights(tmp_path) is False  # already canonical


# --------------------------------------------------------------------------- 22. fair-esm export


def test_fair_esm_key_mapping_round_trips(written):
    from protlm.cli.export import fair_esm_key, fair_esm_state_dict, hf_esm_key

    state, args = fair_esm_state_dict(written["esm"])
    assert args == {"num_layers": 2, "embed_dim": 64, "attention_heads": 4, "alphabet": "ESM-1b",
                    "token_dropout": args["token_dropout"]}
    # fair-esm's ESM2 names (esm/model/esm2.py, esm/modules.py): embed_tokens, layers.N.{self_attn.
    # {q,k,v,out}_proj, self_attn.rot_emb.inv_freq, self_attn_layer_norm, fc1, fc2, final_layer_norm},
    # emb_layer_norm_after, contact_head.regression, lm_head.{dense, layer_norm, weight, bias}
    per_layer = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                 "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"]
    expected = {f"layers.{i}.{m}.{p}" for i in range(2) for m in per_layer for p in ("weight", "bias")}
    expected |= {f"layers.{i}.self_attn.rot_emb.inv_freq" for i in range(2)}
    expected |= {"embed_tokens.weight", "emb_layer_norm_after.weight", "emb_layer_norm_after.bias",
                 "contact_head.regression.weight", "contact_head.regression.bias", "lm_head.dense.weight",
                 "lm_head.dense.bias", "lm_head.layer_norm.weight", "lm_head.layer_norm.bias", "lm_head.weight",
                 "lm_head.bias"}
    assert set(state) == expected
    for key in state:
        hf = hf_esm_key(key)
        assert hf is not None and (fair_esm_key(hf) == key), key
    assert torch.equal(state["lm_head.weight"], state["embed_tokens.weight"])  # tied in both projects
    # an old-layout (gamma/beta, wildcard) committed folder gives the same key set shape
    old, _ = fair_esm_state_dict(COMMITTED_ESM[0])
    assert "layers.2.self_attn_layer_norm.weight" in old and not [k for k in old if "*" in k]


def test_export_fair_esm_writes_safetensors_and_args(written, tmp_path, capsys):
    out = tmp_path / "esm2.safetensors"
    assert main(["export", "--format", "fair-esm", str(written["esm"]), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert json.loads(out.with_suffix(".json").read_text())["args"] == res["args"]
    from safetensors import safe_open

    with safe_open(str(out), "pt") as fh:
        assert json.loads(fh.metadata()["fair_esm_args"]) == res["args"]
    assert main(["export", "--format", "fair-esm", str(written["esm"]), "--out", str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["causal", "bert", "t5", "xlnet"])
def test_export_refuses_other_families(written, tmp_path, capsys, arch):
    code = main(["export", "--format", "fair-esm", str(written[arch]), "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "ESM models only" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- 21. export-fasta headers


def _biotrainer_attrs(header: str) -> dict:
    """biotrainer_core 2.1.1's header parsing (biotrainer_core/input_files/fasta.py, read_FASTA):
    attributes are ``([A-Z_]+)=([^ ]+)`` in what follows the id — upper-case keys only."""
    import re

    return dict(re.findall(r"([A-Z_]+)=([^ ]+)", header.split(maxsplit=1)[1] if " " in header else ""))


def _exported(tmp_path) -> Path:
    from protlm.tasks.commands import export_fasta

    proteins = [("a", "MKT", "train"), ("b", "ACD", "valid"), ("c", "GHI", "test"), ("d", "KLM", "new364")]
    config = SimpleNamespace(protocol_obj=SimpleNamespace(proteins=lambda config, data_dir, split: proteins))
    out = tmp_path / "e.fasta"
    export_fasta(config, out)
    return out


def test_export_fasta_writes_biotrainer2_sets(tmp_path):
    lines = _exported(tmp_path).read_text().splitlines()
    headers = [ln[1:] for ln in lines if ln.startswith(">")]
    assert headers == ["a SET=train", "b SET=val", "c SET=test", "d SET=new364"]
    # biotrainer_core/input_files/utils.py get_split_lists: train, val, pred; any other value is a test set
    sets = [_biotrainer_attrs(h).get("SET") for h in headers]
    assert sets == ["train", "val", "test", "new364"]


def test_protlm_reads_old_and_new_biotrainer_headers(tmp_path):
    from protlm.data.benchmarks import load_biotrainer_fasta

    new = tmp_path / "new.fasta"
    new.write_text(">a SET=train TARGET=x\nMKT\n>b SET=val TARGET=y\nACD\n>c SET=test TARGET=x\nGHI\n")
    old = tmp_path / "old.fasta"
    old.write_text(">a SET=train VALIDATION=False TARGET=x\nMKT\n>b SET=train VALIDATION=True TARGET=y\nACD\n"
                   ">c SET=test VALIDATION=False TARGET=x\nGHI\n")
    protlm_old = tmp_path / "lower.fasta"
    protlm_old.write_text(">a set=train TARGET=x\nMKT\n>b set=valid TARGET=y\nACD\n>c set=test TARGET=x\nGHI\n")
    for path in (new, old, protlm_old):
        assert [r.split for r in load_biotrainer_fasta(path)] == ["train", "valid", "test"], path.name


# --------------------------------------------------------------------------- with biotrainer itself


def _check(folder: Path, fasta: Path) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "biotrainer_check.py"), str(folder), str(fasta),
                        "--biotrainer-python", str(BT_PYTHON), "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    return json.loads(r.stdout)


@needs_biotrainer
def test_biotrainer_embeds_an_esm_checkpoint_with_esmmodel(fasta, tmp_path):
    """biotrainer builds EsmModel with protlm's weights: the residue rows equal `protlm embed`'s.
    It still keeps the <cls>/<eos>/padding rows of every EsmTokenizer folder (docs/interop.md)."""
    res = _check(_esm_tokenizer_copy(COMMITTED_ESM[0], tmp_path / "esm"), fasta)
    assert res["model_class"] == "EsmModel" and res["tokenizer_class"] == "EsmTokenizer", res.get("error")
    assert res["residue_rows_equal"] and res["max_abs_diff"] <= 1e-4 and res["min_cosine"] > 0.99999


@needs_biotrainer
def test_biotrainer_embeds_a_t5_checkpoint_exactly(written, fasta):
    res = _check(written["t5"], fasta)
    assert res["model_class"] == "T5EncoderModel", res.get("error")
    assert res["equal"] and res["extra_rows"] == [0] and res["max_abs_diff"] <= 1e-4


@needs_biotrainer
def test_biotrainers_own_parser_reads_export_fasta(tmp_path):
    code = ("import json, sys\nfrom biotrainer_core.input_files import read_FASTA, get_split_lists\n"
            "recs = read_FASTA(sys.argv[1])\n"
            "tr, va, te, pr = get_split_lists({r.seq_id: r.get_set() for r in recs})\n"
            "print(json.dumps([tr, va, te, pr]))")
    r = subprocess.run([str(BT_PYTHON), "-c", code, str(_exported(tmp_path))], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [["a"], ["b"], {"test": ["c"], "new364": ["d"]}, []]


FAIR_ESM = r"""
import json, sys, torch
from esm.model.esm2 import ESM2
from esm.data import Alphabet
from safetensors.torch import load_file
path, seqs = sys.argv[1], json.loads(sys.argv[2])
args = json.load(open(path[:-len(".safetensors")] + ".json"))["args"]
model = ESM2(**args).eval()
model.load_state_dict(load_file(path))
convert = Alphabet.from_architecture("ESM-1b").get_batch_converter()
out = {}
for pid, seq in seqs.items():
    _, _, toks = convert([(pid, seq)])
    with torch.no_grad():
        rep = model(toks, repr_layers=[args["num_layers"]])["representations"][args["num_layers"]]
    out[pid] = rep[0, 1:len(seq) + 1].tolist()
print(json.dumps(out))
"""


@needs_biotrainer
def test_fair_esm_reproduces_protlm_embeddings(written, fasta, tmp_path):
    """fair-esm's own ESM2, built from the exported arguments and state dict, gives `protlm
    embed`'s embeddings (fair-esm installed with --no-deps in the biotrainer venv; skipped if not)."""
    probe = subprocess.run([str(BT_PYTHON), "-c", "import esm.model.esm2"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"fair-esm is not installed in {BT_PYTHON} (pip install --no-deps fair-esm)")
    import h5py

    folder = COMMITTED_ESM[0]
    out = tmp_path / "esm2.safetensors"
    assert main(["export", "--format", "fair-esm", str(folder), "--out", str(out)]) == 0
    assert main(["embed", "--model", str(folder), "--input", str(fasta), "--out", str(tmp_path / "p.h5"),
                 "--key", "id"]) == 0
    r = subprocess.run([str(BT_PYTHON), "-c", FAIR_ESM, str(out), json.dumps(SEQS)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = json.loads(r.stdout.strip().splitlines()[-1])
    with h5py.File(tmp_path / "p.h5") as f:
        for pid in SEQS:
            np.testing.assert_allclose(np.asarray(theirs[pid]), np.asarray(f[pid]), atol=1e-5, rtol=0)
