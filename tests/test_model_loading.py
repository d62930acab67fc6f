"""Loading a model folder is all-or-nothing, and ``export`` never writes into what it reads.

- weights that do not fit the architecture config.json describes (another family's
  ``model_type``, renamed tensors, a missing layer, an extra layer) are refused with one line
  naming the folder and a few of the tensors — transformers would otherwise run the model with
  randomly initialised weights (or drop weights) and the command would exit 0; what real
  checkpoints legitimately lack or carry (a task head's tensors, ESM's contact head, buffers
  computed from config.json) still loads;
- ``protlm export`` refuses an output inside the checkpoint folder it reads (even with
  ``--overwrite``), a truncated safetensors file, and encoder layers the config does not have;
- a LoRA adapter whose base model is a hub id fails at once with one line when the hub cannot be
  asked, as ``--model HUB_ID`` does, instead of huggingface_hub's retries.

Every check uses copies of the tiny committed checkpoint in ``tmp_path`` and checks that the input
files are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from protlm.cli.main import main
from protlm.errors import InputError

REPO = Path(__file__).resolve().parents[1]
MASKED = REPO / "checkpoints" / "protlm-swissprot-masked-xs"
COMMITTED = sorted(p.parent for p in (REPO / "checkpoints").glob("**/config.json")
                   if json.loads(p.read_text()).get("model_type") != "protlm_kmer")


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy(tmp_path: Path, name: str = "ckpt") -> Path:
    folder = tmp_path / name
    shutil.copytree(MASKED, folder)
    return folder


def _rewrite_weights(folder: Path, change) -> None:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    save_file(change(state), str(path), metadata={"format": "pt"})


def _fasta(tmp_path: Path) -> Path:
    path = tmp_path / "in.fasta"
    path.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n")
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("protlm: error:"), err
    return lines[0]


# --------------------------------------------------------------------------- D1: weights that do not fit


def _model_type_bert(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(cfg))


def _prefixed(folder: Path) -> None:
    _rewrite_weights(folder, lambda s: {f"x.{k}": v for k, v in s.items()})


def _layer_removed(folder: Path) -> None:
    _rewrite_weights(folder, lambda s: {k: v for k, v in s.items() if not k.startswith("esm.encoder.layer.2.")})


def _layer_added(folder: Path) -> None:
    _rewrite_weights(folder, lambda s: {**s, **{k.replace(".layer.2.", ".layer.3."): v.clone()
                                                for k, v in s.items() if k.startswith("esm.encoder.layer.2.")}})


@pytest.mark.parametrize("tamper, named", [
    (_model_type_bert, "embeddings."),  # every BertModel weight missing
    (_prefixed, "embeddings.word_embeddings.weight"),
    (_layer_removed, "encoder.layer.2."),
    (_layer_added, "esm.encoder.layer.3."),  # an extra layer: tensors that belong to the model's encoder
], ids=["model_type", "renamed", "layer_missing", "layer_extra"])
def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path, capsys, tamper, named):
    folder = _copy(tmp_path)
    tamper(folder)
    fasta, out = _fasta(tmp_path), tmp_path / "out.h5"
    before = _digest(folder), fasta.read_bytes()
    code = main(["embed", "--model", str(folder), "--input", str(fasta), "--out", str(out), "--threads", "1"])
    line = _one_error_line(capsys)
    assert code == 2
    assert str(folder) in line and named in line and "do not fit" in line
    assert not out.exists() and (_digest(folder), fasta.read_bytes()) == before


def test_a_checkpoint_named_as_another_family_says_so(tmp_path):
    from protlm.models.hf import load_hf_lm

    folder = _copy(tmp_path)
    _model_type_bert(folder)
    with pytest.raises(InputError, match="model_type"):
        load_hf_lm(str(folder))


def test_what_real_checkpoints_lack_or_carry_still_loads(tmp_path):
    """ESM's contact head and the rotary inv_freq buffers absent, a classifier head's tensors
    present: none of them is part of the encoder's forward pass, so the model loads."""
    from protlm.models.hf import load_hf_lm

    folder = _copy(tmp_path)
    _rewrite_weights(folder, lambda s: {**{k: v for k, v in s.items() if "contact_head" not in k
                                           and not k.endswith("inv_freq")},
                                        "classifier.dense.weight": torch.zeros(4, 96)})
    lm = load_hf_lm(str(folder))
    reference = load_hf_lm(str(MASKED))
    ref = reference.model.state_dict()
    for key, value in lm.model.state_dict().items():
        if not key.startswith("contact_head."):
            assert torch.equal(value, ref[key]), key
    # a BERT checkpoint of older transformers saved its position_ids buffer (ProtBert's does): computed now, fine
    bert = tmp_path / "bert"
    shutil.copytree(REPO / "checkpoints" / "architectures-xs" / "bert", bert)
    _rewrite_weights(bert, lambda s: {**s, "bert.embeddings.position_ids": torch.arange(64)[None]})
    assert load_hf_lm(str(bert)).model.config.model_type == "bert"


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: str(p.relative_to(REPO / "checkpoints")))
def test_every_committed_checkpoint_fits_its_architecture(folder):
    import transformers

    from protlm.models.families import FAMILIES
    from protlm.models.hf import weight_problems

    cfg = json.loads((folder / "config.json").read_text())
    if cfg["model_type"] == "prottxl":
        from protlm.models.transfo_xl import ProtTXLModel as cls
    else:
        cls = getattr(transformers, FAMILIES[cfg["model_type"]].encoder_class)
    extra = {"add_pooling_layer": False} if cfg["model_type"] in ("esm", "bert", "albert") else {}
    model, info = cls.from_pretrained(str(folder), use_safetensors=True, output_loading_info=True, **extra)
    assert weight_problems(model, info) == ([], [])


# --------------------------------------------------------------------------- D2/D5: export


@pytest.mark.parametrize("target", ["model.safetensors", "sub/fair.safetensors"])
def test_export_never_writes_into_the_checkpoint_it_reads(tmp_path, capsys, target):
    folder = _copy(tmp_path)
    before = _digest(folder)
    code = main(["export", "--format", "fair-esm", str(folder), "--out", str(folder / target), "--overwrite"])
    line = _one_error_line(capsys)
    assert code == 2 and "inside the checkpoint folder" in line
    assert _digest(folder) == before and not (folder / "sub").exists()


def test_export_of_a_truncated_file_is_one_line(tmp_path, capsys):
    folder = _copy(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = _digest(folder)
    out = tmp_path / "fair.safetensors"
    code = main(["export", "--format", "fair-esm", str(folder), "--out", str(out)])
    line = _one_error_line(capsys)
    assert code == 2 and str(weights) in line
    assert _digest(folder) == before and not out.exists() and not out.with_suffix(".json").exists()


def test_export_of_an_encoder_saved_alone_says_what_it_is(tmp_path, capsys):
    """EsmModel.save_pretrained (a fine-tuned or merged LM) writes the encoder without `esm.` and
    without the LM head: one line saying so, not "the weights lack emb_layer_norm_after.weight"."""
    import transformers

    encoder = tmp_path / "encoder"
    transformers.EsmModel.from_pretrained(MASKED, add_pooling_layer=False).save_pretrained(encoder)
    out = tmp_path / "fair.safetensors"
    code = main(["export", "--format", "fair-esm", str(encoder), "--out", str(out)])
    line = _one_error_line(capsys)
    assert code == 2 and "encoder alone" in line and "lack" not in line and not out.exists()


def test_export_refuses_layers_the_config_does_not_have(tmp_path, capsys):
    folder = _copy(tmp_path)
    _layer_added(folder)
    out = tmp_path / "fair.safetensors"
    code = main(["export", "--format", "fair-esm", str(folder), "--out", str(out)])
    line = _one_error_line(capsys)
    assert code == 2 and "esm.encoder.layer.3." in line and not out.exists()


# --------------------------------------------------------------------------- D8: a hub base, offline


@pytest.fixture
def hub_down(monkeypatch):
    """The hub unreachable and nothing cached; huggingface_hub's downloader records any call (it
    would retry for about 30 s and print its own lines)."""
    import huggingface_hub

    from protlm.io import resources

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(resources, "hub_reachable", lambda timeout=resources.HUB_TIMEOUT_S: False)
    monkeypatch.setattr(resources, "_cached", lambda model: False)
    calls = []

    def download(*args, **kwargs):
        calls.append(args)
        import sys

        print("Max retries exceeded: [Errno -2] Name or service not known", file=sys.stderr)
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def test_an_adapter_whose_base_is_an_unreachable_hub_id_fails_at_once(tmp_path, capsys, hub_down):
    import peft
    import transformers

    base = transformers.EsmModel.from_pretrained(str(MASKED), add_pooling_layer=False)
    adapter = tmp_path / "adapter"
    peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["query", "value"])).save_pretrained(str(adapter))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "facebook/esm2_t6_8M_UR50D"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    fasta, out = _fasta(tmp_path), tmp_path / "out.h5"
    before = _digest(adapter), fasta.read_bytes()
    code = main(["embed", "--model", str(adapter), "--input", str(fasta), "--out", str(out), "--threads", "1"])
    line = _one_error_line(capsys)
    assert code == 2 and "facebook/esm2_t6_8M_UR50D" in line and "unreachable" in line
    assert hub_down == []  # the hub was never asked
    assert not out.exists() and (_digest(adapter), fasta.read_bytes()) == before


def test_a_hub_id_given_to_the_loader_directly_fails_at_once(hub_down):
    from protlm.models.hf import load_hf_lm

    with pytest.raises(InputError, match="unreachable"):
        load_hf_lm("facebook/esm2_t6_8M_UR50D")
    assert hub_down == []
