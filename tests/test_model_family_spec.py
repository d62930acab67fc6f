"""Issue 21 #4: a new pretraining family is one registered spec in one file.

``tests/toys/toy_family.py`` registers ``toy_bert`` (its own config builder and FLOP count) and
touches nothing else; here it pretrains through the real trainer, which counts its FLOPs with the
toy's count, its folder loads with plain ``transformers``, and ``protlm embed`` embeds with it. A
plug-in package can register one through the ``protlm.plugins`` entry points. Registration
refuses a name another definition holds. Moving the FLOP counts onto the specs kept every
architecture's numbers exactly (values recorded with the code before the move).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from family_checks import cli_embed_matches, family_config, make_shards  # noqa: E402

from protlm.models.architectures import (  # noqa: E402
    ARCHITECTURES, register_architecture, transformer_flops)
from protlm.models.families import FAMILIES, Family  # noqa: E402
from protlm.pretrain.config import load_config  # noqa: E402
from protlm.pretrain.metrics import forward_flops, read_metrics, training_flops  # noqa: E402
from protlm.pretrain.trainer import Trainer  # noqa: E402

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("family"), n=40)


@pytest.fixture(scope="module")
def toy():
    """The toy family, imported as a user's module would be; removed again afterwards, so that
    the registry is what the other test files expect."""
    module = importlib.import_module("toys.toy_family")
    yield module
    ARCHITECTURES.pop(module.TOY.name, None)
    sys.modules.pop("toys.toy_family", None)


# --------------------------------------------------------------------------- the numbers did not move

LENGTHS = {"one": [100], "mixed": [7, 64, 300, 1026], "long": [2048, 33, 512]}
SHAPES = {"tiny": dict(layers=2, hidden=64, ffn=256), "small": dict(layers=6, hidden=320, ffn=1280)}
TXL_ARGS = {"segment": 128, "memory": 64}

#: ``protlm.pretrain.metrics.forward_flops`` of commit 96967ed (before this change: the
#: ``if arch == "xlnet"/"txl"/"t5"`` branches), run on LENGTHS x SHAPES with each architecture's
#: vocabulary size and, for txl, TXL_ARGS (``'one segment'``: txl without them), printed with repr().
OLD_FORWARD_FLOPS = {
    ('albert', 'tiny'): {'one': 25164800.0, 'mixed': 867198208.0, 'long': 2802020608.0},
    ('albert', 'small'): {'one': 1553280000.0, 'mixed': 29434010880.0, 'long': 72519010560.0},
    ('bert', 'tiny'): {'one': 25164800.0, 'mixed': 867198208.0, 'long': 2802020608.0},
    ('bert', 'small'): {'one': 1553280000.0, 'mixed': 29434010880.0, 'long': 72519010560.0},
    ('causal', 'tiny'): {'one': 25203200.0, 'mixed': 867734656.0, 'long': 2803016320.0},
    ('causal', 'small'): {'one': 1553472000.0, 'mixed': 29436693120.0, 'long': 72523989120.0},
    ('esm', 'tiny'): {'one': 25203200.0, 'mixed': 867734656.0, 'long': 2803016320.0},
    ('esm', 'small'): {'one': 1553472000.0, 'mixed': 29436693120.0, 'long': 72523989120.0},
    ('t5', 'tiny'): {'one': 62873600.0, 'mixed': 2425282048.0, 'long': 8078804480.0},
    ('t5', 'small'): {'one': 3679232000.0, 'mixed': 74602938880.0, 'long': 192129866240.0},
    ('txl', 'tiny'): {'one': 27724800.0, 'mixed': 547450368.0, 'long': 960999936.0},
    ('txl', 'small'): {'one': 1591680000.0, 'mixed': 26902717440.0, 'long': 48678574080.0},
    ('xlnet', 'tiny'): {'one': 37683199.99999999, 'mixed': 1729608191.9999998, 'long': 5992619178.666667},
    ('xlnet', 'small'): {'one': 2104661333.3333333, 'mixed': 47449727146.666664, 'long': 129806275413.33331},
    ('txl', 'tiny', 'one segment'): {'one': 27724800.0, 'mixed': 1160784384.0, 'long': 3943150080.0},
}

#: ``Trainer._flops`` of commit 96967ed (before this change: its ``if arch == "txl"`` branch) on the
#: first micro-batch of steps 0 and 1 of TRAINER_RUN on make_shards(n=40): (lengths, FLOPs).
OLD_TRAINER_FLOPS = {
    'albert': [([160, 160, 160, 160, 160, 160, 160], 948756480.0), ([132, 142, 160, 160, 160, 160, 160, 160, 160, 160, 160, 160], 1577869824.0)],
    'bert': [([160, 160, 160, 160, 160, 160, 160], 948756480.0), ([132, 142, 160, 160, 160, 160, 160, 160, 160, 160, 160, 160], 1577869824.0)],
    'causal': [([160, 160, 160, 160, 160, 160, 160], 950046720.0), ([132, 142, 160, 160, 160, 160, 160, 160, 160, 160, 160, 160], 1580028672.0)],
    'esm': [([160, 160, 160, 160, 160, 160, 160], 950046720.0), ([132, 142, 160, 160, 160, 160, 160, 160, 160, 160, 160, 160], 1580028672.0)],
    't5': [([160, 160, 160, 160, 160, 160, 160], 2422210560.0), ([131, 141, 160, 160, 160, 160, 160, 160, 160, 160, 160, 160], 4018701312.0)],
    'txl': [([160, 160, 160, 160, 160, 160, 160], 897490944.0), ([132, 142, 160, 160, 160, 160, 160, 160, 160, 160, 160, 160], 1501751808.0)],
    'xlnet': [([160, 160, 160, 160, 160, 160, 160], 1507000320.0000002), ([132, 142, 160, 160, 160, 160, 160, 160, 160, 160, 160, 160], 2499127296.0000005)],
}
TRAINER_RUN = {"phases": [{"steps": 2, "max_length": 160, "tokens_per_batch": 2048}]}
TXL_EXTRA = {"segment_length": 24, "mem_len": 16}  # several segments with memory per protein


@pytest.mark.parametrize("key", sorted(OLD_FORWARD_FLOPS))
def test_flop_counts_are_the_ones_before_the_spec(key):
    arch, shape = key[0], key[1]
    args = TXL_ARGS if arch == "txl" and len(key) == 2 else {}
    vocab = ARCHITECTURES[arch].vocab.size
    for name, lengths in LENGTHS.items():
        got = forward_flops(np.array(lengths), arch=arch, vocab=vocab, **SHAPES[shape], **args)
        assert got == OLD_FORWARD_FLOPS[key][name], (key, name)
        assert training_flops(np.array(lengths), arch=arch, vocab=vocab, **SHAPES[shape], **args) == 3.0 * got


@pytest.mark.parametrize("arch", sorted(OLD_TRAINER_FLOPS))
def test_the_trainer_counts_what_it_counted_before(arch, shards, tmp_path):
    cfg = load_config(data=family_config(shards, arch, TXL_EXTRA if arch == "txl" else None, **TRAINER_RUN))
    trainer = Trainer(cfg, tmp_path / arch, progress=False)
    for step, (lengths, flops) in enumerate(OLD_TRAINER_FLOPS[arch]):
        batch = trainer.micro_batches(step)[0]
        assert batch.lengths.tolist() == lengths
        assert trainer._flops(batch) == flops


def test_embedding_conventions_are_the_ones_before_the_spec():
    """FAMILIES is made of the specs' ``embedding`` fields: the same table as before, so that
    ``detect_family`` reads ESM, ProtBert, ProtT5 … folders (protlm's or not) as it did."""
    from protlm.models.families import detect_family

    assert FAMILIES == {
        "esm": Family("esm", "esm", "EsmModel", False, False),
        "bert": Family("protbert", "bert", "BertModel", True, True),
        "albert": Family("albert", "albert", "AlbertModel", True, True),
        "t5": Family("prott5", "t5", "T5EncoderModel", True, True),
        "xlnet": Family("xlnet", "xlnet", "XLNetModel", True, True),
        "gpt_neox": Family("causal", "gpt_neox", "GPTNeoXModel", False, False),
    }
    esm1b = detect_family({"model_type": "esm", "position_embedding_type": "absolute"}, "esm1b")
    assert esm1b.max_residues == 1022 and esm1b.name == "esm"
    assert detect_family({"model_type": "bert", "max_position_embeddings": 40000}, "prot_bert").max_residues == 39998
    assert detect_family({"model_type": "t5"}, "prot_t5_xl").encoder_class == "T5EncoderModel"


# --------------------------------------------------------------------------- a new family is one file


def test_a_new_pretraining_family_is_one_file(toy, shards, tmp_path):
    import transformers

    cfg = load_config(data=family_config(shards, "toy_bert", phases=[{"steps": 3, "max_length": 96,
                                                                      "tokens_per_batch": 768}]))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    folder = Path(trainer.run()["model"])

    # the trainer counts with the toy's function, every step of the run
    shape = dict(layers=2, hidden=64, ffn=256, vocab=30)
    batch = trainer.micro_batches(0)[0]
    assert trainer._flops(batch) == 3.0 * toy.toy_flops(batch.lengths.astype(np.float64), **shape)
    assert trainer._flops(batch) > 3.0 * transformer_flops(batch.lengths, **shape)
    expected = sum(trainer._flops(b) for step in range(3) for b in trainer.micro_batches(step))
    assert trainer.flops_seen == pytest.approx(expected, rel=1e-12)
    assert read_metrics(tmp_path / "run")[-1]["flops_seen"] == pytest.approx(expected, rel=1e-12)

    # an ordinary transformers folder: the toy's config, the trained weights
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_act"] == "relu" and config["type_vocab_size"] == 1
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
    assert type(reloaded).__name__ == "BertForMaskedLM"
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok(" ".join("MKTAYIAKQRQISF"))["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trainer.model.eval()(ids).logits, atol=1e-5)

    # protlm embed reads it with the bert family's conventions (spaces, rare residues -> X)
    plain = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPRVUZ", "WCNFYQ"]
    expected = []
    for seq in seqs:
        ids = torch.tensor([tok(" ".join(seq.translate(str.maketrans("UZOB", "XXXX"))))["input_ids"]])
        with torch.no_grad():
            expected.append(plain(ids).last_hidden_state[0, 1:-1].numpy())
    cli_embed_matches(folder, tmp_path, seqs, expected)


def test_a_duplicate_registration_is_refused(toy):
    bert = ARCHITECTURES["bert"]
    with pytest.raises(ValueError, match="architecture 'bert' is registered already"):
        register_architecture(dataclasses.replace(bert, objective="causal"))
    with pytest.raises(ValueError, match="architecture 'toy_bert' is registered already"):
        register_architecture(dataclasses.replace(toy.TOY, description="another toy"))
    with pytest.raises(ValueError, match="model_type 'bert' has embedding conventions already"):
        register_architecture(dataclasses.replace(toy.TOY, name="toy_bert2", embedding=FAMILIES["bert"]))
    with pytest.raises(ValueError, match="unknown vocabulary"):
        register_architecture(dataclasses.replace(toy.TOY, name="toy_bert3", family="nope"))
    with pytest.raises(ValueError, match="unknown objective"):
        register_architecture(dataclasses.replace(toy.TOY, name="toy_bert4", objective="mask"))
    assert "toy_bert2" not in ARCHITECTURES and "toy_bert3" not in ARCHITECTURES and FAMILIES["bert"].name == "protbert"
    # the same definition again (the module imported a second time, new function objects): allowed
    assert register_architecture(toy.TOY) is toy.TOY
    importlib.reload(toy)
    assert ARCHITECTURES["toy_bert"] is toy.TOY and ARCHITECTURES["bert"] is bert


def test_a_plugin_package_registers_an_architecture(tmp_path, shards):
    """An installed package whose ``protlm.plugins`` entry point registers an architecture:
    ``protlm pretrain`` takes its name in a config with no change to protlm."""
    dist = tmp_path / "site" / "protlm_toy_family-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: protlm-toy-family\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[protlm.plugins]\ntoy_family = toys.toy_family\n")
    data = family_config(shards, "toy_bert", phases=[{"steps": 2, "max_length": 64, "tokens_per_batch": 512}],
                         save_every=2, eval_every=2)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "protlm.cli.main", "pretrain", "--config", str(tmp_path / "cfg.yaml"),
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_act"] == "relu"
    assert [x["step"] for x in read_metrics(tmp_path / "run") if x["kind"] == "train"] == [1, 2]


def test_a_model_type_registered_after_the_hf_backend_reaches_it(tmp_path, monkeypatch):
    """A family whose embedding conventions are registered after protlm's HF backend was imported
    (a plug-in's Architecture with a new model_type) is embedded by that backend, not refused."""
    import json

    import protlm.embed.registry as reg
    from protlm.models.families import FAMILIES, Family

    reg._load_backends()
    seen = []
    monkeypatch.setitem(reg._MODEL_TYPES, "__hub__", dataclasses.replace(
        reg._MODEL_TYPES["__hub__"], factory=lambda source, options: seen.append(source) or "hf-backend"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy_late_type"}))
    with pytest.raises(Exception, match="toy_late_type"):
        reg.resolve(str(folder))  # not a family protlm knows yet
    monkeypatch.setitem(FAMILIES, "toy_late_type", Family("toy_late", "toy_late_type", "BertModel", True, True))
    assert reg.resolve(str(folder)) == "hf-backend" and seen == [str(folder)]
    assert "toy_late_type" in reg.model_types()
