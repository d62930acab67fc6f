"""Fine-tuning the LM with the task head (``finetune:`` of a task config, protlm.tasks.finetune).

What is checked, on tiny random-weight models of every family (20 proteins, 1–4 epochs):

- the gradient reaches the LM, and only the parts the method trains: ``full`` changes every weight
  on the forward path, ``lora`` only the adapter (the base untouched, lora_B non-zero), ``top``
  only the last block;
- what training writes loads back: a LoRA ``lm/`` with plain peft + transformers (same numbers as
  protlm's embedder), the head folder as an embedder, and ``load_head``/``evaluate``/``predict``
  reproduce the metrics (and the best epoch's validation loss) that training recorded;
- every family × method (and every label protocol) runs, ALBERT ``top`` and UniRep ``lora`` are
  refused with a ConfigError before anything is written;
- config errors name the ``finetune`` field; gradient accumulation (``tokens_per_step``) equals one
  big batch for a residue-mean loss; activation checkpointing and warm-up do what they say.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from protlm.embed.registry import resolve
from protlm.embed.spec import EmbedOptions, parse_spec
from protlm.errors import ConfigError, InputError
from protlm.models.architectures import ModelSpec, build_model
from protlm.models.vocab import build_tokenizer
from protlm.tasks.build import load_task_config
from protlm.tasks.finetune import FinetuneConfig, trainable_lm
from protlm.tasks.train import evaluate, load_head, predict, train

AA = "ACDEFGHIKLMNPQRSTVWY"
HELIX, STRAND = set("AELMQKR"), set("VIYFWT")
HYDRO = dict(zip(AA, np.linspace(-1.0, 1.0, len(AA))))
CPU = EmbedOptions(device="cpu")

# a protocol → (data file key, targets, head)
PROTOCOLS = {
    "residue_to_class": ("ss", [{"name": "q3", "label": "target", "classes": ["H", "E", "C"]}], "cnn"),
    "residue_to_value": ("rv", [{"name": "hydro", "label": "target"}], "cnn"),
    "sequence_to_class": ("sc", [{"name": "charge", "label": "target"}], "ffn"),
    "sequence_to_value": ("sv", [{"name": "hydro", "label": "target"}], "ffn"),
    "residues_to_class": ("sc", [{"name": "charge", "label": "target"}], "light_attention"),
}


# --------------------------------------------------------------------------- toy models and data


def _save(model, tokenizer_family: str, folder: Path) -> Path:
    model.save_pretrained(folder)
    build_tokenizer(tokenizer_family).save_pretrained(folder)
    return folder


def _unirep(folder: Path) -> Path:
    from protlm.embed.backends.unirep import UniRepBackend, weights_id
    from protlm.models.unirep import UniRepConfig, UniRepModel

    model = UniRepModel(UniRepConfig(hidden_size=16, num_layers=2))
    with torch.no_grad():  # non-trivial gains and biases (a fresh model has ones and zeros)
        for layer in model.layers:
            for name in ("gmx", "gmh", "gx", "gh", "b"):
                getattr(layer, name).add_(0.3 * torch.randn_like(getattr(layer, name)))
    UniRepBackend("tiny", CPU, model, weights_id(model)).save_lm(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight folders of every family (dropout 0 everywhere: protlm's presets)."""
    from transformers import T5EncoderModel

    root = tmp_path_factory.mktemp("ft_models")
    torch.manual_seed(0)
    out = {
        "esm": _save(build_model(ModelSpec(arch="esm", preset="tiny")), "esm", root / "esm"),
        "bert": _save(build_model(ModelSpec(arch="bert", preset="tiny", max_positions=128)), "protbert",
                      root / "bert"),
        "albert": _save(build_model(ModelSpec(arch="albert", preset="tiny", max_positions=128)), "protbert",
                        root / "albert"),
        "causal": _save(build_model(ModelSpec(arch="causal", preset="tiny")), "esm", root / "causal"),
        "xlnet": _save(build_model(ModelSpec(arch="xlnet", preset="tiny")), "protxlnet", root / "xlnet"),
        # segments of 16 tokens: the training proteins (15-29 residues) span two segments
        "prottxl": _save(build_model(ModelSpec(arch="txl", preset="tiny",
                                               extra={"segment_length": 16, "mem_len": 16})), "protbert",
                         root / "prottxl"),
    }
    t5 = build_model(ModelSpec(arch="t5", preset="tiny"))
    enc = T5EncoderModel(t5.config)
    enc.load_state_dict(t5.state_dict(), strict=False)
    out["t5"] = _save(enc, "prott5", root / "t5")
    out["unirep"] = _unirep(root / "unirep")
    return out


def _write_biotrainer(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    with open(path, "w") as fh:
        for pid, seq, target, split in rows:
            s = "SET=train VALIDATION=True" if split == "valid" else f"SET={split}"
            fh.write(f">{pid} TARGET={target} {s}\n{seq}\n")
    return path


def _split(i: int) -> str:
    return "train" if i < 12 else "valid" if i < 16 else "test"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """20 short proteins per file (12 train, 4 valid, 4 test), labels learnable from the residues;
    no MASK and no missing labels (every residue is scored)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("ft_data")
    ss, rv, sc, sv = [], [], [], []
    for i in range(20):
        bias = "KR" if i % 2 else "DE"
        seq = "".join(rng.choice(list(AA + bias * 2), int(rng.integers(15, 30))))
        label = "".join("H" if c in HELIX else "E" if c in STRAND else "C" for c in seq)
        ss.append((f"r{i}", seq, label, _split(i)))
        rv.append((f"v{i}", seq, ";".join(f"{HYDRO[c]:.4f}" for c in seq), _split(i)))
        charge = "pos" if sum(c in "KR" for c in seq) > sum(c in "DE" for c in seq) else "neg"
        sc.append((f"c{i}", seq, charge, _split(i)))
        sv.append((f"h{i}", seq, f"{sum(c in 'AILMFVW' for c in seq) / len(seq):.4f}", _split(i)))
    return {"ss": _write_biotrainer(root / "ss.fasta", ss), "rv": _write_biotrainer(root / "rv.fasta", rv),
            "sc": _write_biotrainer(root / "sc.fasta", sc), "sv": _write_biotrainer(root / "sv.fasta", sv)}


def _config(data: dict, embedder, finetune, protocol: str = "residue_to_class", head: dict | None = None,
            **train) -> dict:
    key, targets, head_type = PROTOCOLS[protocol]
    src = lambda split: {"file": str(data[key]), "format": "biotrainer", "split": split}  # noqa: E731
    return {
        "name": f"ft_{protocol}", "protocol": protocol, "embedder": embedder if isinstance(embedder, dict)
        else str(embedder),
        "data": {"train": src("train"), "valid": src("valid"), "test": {"held_out": src("test")}},
        "targets": targets, "head": {"type": head_type, **(head or {})},
        "train": {"epochs": 2, "lr": 0.01, "batch_size": 4, "patience": 5, "bootstrap": 20, **train},
        "finetune": finetune,
    }


def _train(data, out: Path, embedder, finetune, protocol="residue_to_class", head=None, **train_kw) -> dict:
    return train(load_task_config(data=_config(data, embedder, finetune, protocol, head, **train_kw)), out)


def _state(folder) -> dict[str, torch.Tensor]:
    """The weights of the model an embedder folder loads (a LoRA adapter: merged into its base)."""
    return {k: v.detach().clone() for k, v in resolve(str(folder), CPU).module.state_dict().items()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same(a, b, rel: float = 1e-6, path: str = "") -> None:
    """Nested metrics documents agree (numbers to ``rel``, NaN equal to NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(a), sorted(b) if isinstance(b, dict) else b)
        for k in a:
            _same(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, rel, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a is b, path
        elif math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), (path, a, b)
        else:
            assert b == pytest.approx(a, rel=rel, abs=1e-9), (path, a, b)
    else:
        assert a == b, (path, a, b)


def _evaluate_saved(head_dir: Path) -> dict:
    """Score the test sets of a saved head as `protlm evaluate` does."""
    head = load_head(head_dir)
    sets = head.protocol.evaluation_sets(head, {}, None)
    return evaluate(head, sets)


def _valid_loss_of_saved(head_dir: Path) -> float:
    """The validation loss of the saved head on the saved LM's embeddings (runner path)."""
    head = load_head(head_dir)
    config, protocol = head.config, head.protocol
    data = protocol.load_data(config, None)
    with protocol.open_source(config, None) as source:  # the features are read lazily: use them inside
        valid = protocol.inputs(config, source, data.valid)
        state = protocol.fit_state(config, head.model, valid, head.state)
        return protocol.validation(config, head.model, valid, state)


def _lora_target_keys(state: dict, targets: list[str]) -> set[str]:
    out = set()
    for k in state:
        if k.endswith(".weight"):
            name = k[: -len(".weight")]
            if any(name == t or name.endswith("." + t) for t in targets):
                out.add(k)
    return out


#: weights no forward of the embedder touches (so no method can train them): ESM's contact head
#: and rotary buffers, XLNet's segment terms (a protein is one segment) and mask embedding,
#: UniRep's next-residue head.
def _unused(family: str, key: str) -> bool:
    return ((family == "esm" and (key.startswith("contact_head.") or key.endswith("inv_freq")))
            or (family == "xlnet" and (key.endswith((".seg_embed", ".r_s_bias")) or key == "mask_emb"))
            or (family == "unirep" and key.startswith("head.")))


def _block_keys(folder: Path, index: int) -> set[str]:
    backend = resolve(str(folder), CPU)
    names = {id(p): n for n, p in backend.module.named_parameters()}
    return {names[id(p)] for p in backend.blocks()[index].parameters()}


# --------------------------------------------------------------------------- 1. the gradient reaches the LM


def test_full_changes_every_lm_weight_and_saves_a_model_folder(tmp_path, models, data):
    out = tmp_path / "head"
    res = _train(data, out, models["esm"], {"method": "full", "lr": 1e-3})
    from protlm.models.folder import canonical_key

    config = json.loads((models["esm"] / "config.json").read_text())  # the fine-tuned LM is saved canonically
    base = {n.removeprefix("esm."): v for k, v in load_file(str(models["esm"] / "model.safetensors")).items()
            for n in canonical_key(k, config)}
    tuned = load_file(str(out / "lm" / "model.safetensors"))
    assert (out / "lm" / "config.json").is_file() and not (out / "lm" / "adapter_config.json").exists()
    assert set(tuned) <= set(base)
    unchanged = sorted(k for k in tuned if torch.equal(tuned[k], base[k]))
    assert all(_unused("esm", k) for k in unchanged), unchanged  # every weight on the path moved
    assert any(k.startswith("encoder.layer.0.") for k in tuned) and "embeddings.word_embeddings.weight" in tuned
    info = json.loads((out / "head.json").read_text())
    assert info["finetune"]["method"] == "full" and info["finetune"]["lm"] == "lm"
    assert info["finetune"]["lm_trained_parameters"] == info["finetune"]["lm_parameters"] > 0
    assert [h["optimizer_steps"] for h in info["history"]] == [3, 6]  # 12 proteins, batches of 4
    assert res["finetune"]["method"] == "full"


def test_lora_trains_only_the_adapter_and_the_head(tmp_path, models, data):
    spec = parse_spec(str(models["esm"]), "embedder")
    backend = trainable_lm(spec, FinetuneConfig(method="lora"))
    trained = {n for n, p in backend.module.named_parameters() if p.requires_grad}
    frozen = {n for n, p in backend.module.named_parameters() if not p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained), sorted(trained)[:5]
    assert not any(".lora_" in n for n in frozen)
    assert len(trained) == 2 * 4 * 2  # A and B × query/key/value/attention.output.dense × 2 layers

    base_sha = _sha(models["esm"] / "model.safetensors")
    out = tmp_path / "head"
    _train(data, out, models["esm"], {"method": "lora", "lr": 1e-3})
    assert _sha(models["esm"] / "model.safetensors") == base_sha  # the base model's file is untouched
    lm = out / "lm"
    assert (lm / "adapter_config.json").is_file() and (lm / "adapter_model.safetensors").is_file()
    assert not (lm / "model.safetensors").exists()
    adapter = load_file(str(lm / "adapter_model.safetensors"))
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter), sorted(adapter)
    b_weights = [v for k, v in adapter.items() if "lora_B" in k]
    assert len(b_weights) == 8 and all(v.abs().max() > 0 for v in b_weights)  # lora_B starts at 0: it trained
    # merged into the base, the adapter changes exactly the targeted projections
    base, merged = _state(models["esm"]), _state(lm)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    from protlm.embed.backends.hf import LORA_AUTO

    assert changed == _lora_target_keys(base, LORA_AUTO["esm"]) and len(changed) == 8
    # the head trained too: every tensor differs from its initialisation (same seed as fit_head)
    head = load_head(out)
    torch.manual_seed(head.config.train.seed)
    fresh = head.protocol.new_head(head.config, head.dim, head.state).state_dict()
    assert all(not torch.equal(fresh[k], v) for k, v in head.model.state_dict().items())
    info = json.loads((out / "head.json").read_text())
    assert info["finetune"]["lm_trained_parameters"] == sum(p.numel() for p in adapter.values())


def test_top_trains_only_the_last_block(tmp_path, models, data):
    spec = parse_spec(str(models["esm"]), "embedder")
    last = _block_keys(models["esm"], -1)
    backend = trainable_lm(spec, FinetuneConfig(method="top", top_layers=1))
    assert {n for n, p in backend.module.named_parameters() if p.requires_grad} == last
    both = trainable_lm(spec, FinetuneConfig(method="top", top_layers=2))
    assert {n for n, p in both.module.named_parameters() if p.requires_grad} == last | _block_keys(models["esm"], 0)
    with pytest.raises(ConfigError, match="finetune.top_layers: 3, but .* has 2 layers"):
        trainable_lm(spec, FinetuneConfig(method="top", top_layers=3))

    out = tmp_path / "head"
    _train(data, out, models["esm"], {"method": "top", "top_layers": 1, "lr": 1e-3})
    base, tuned = _state(models["esm"]), _state(out / "lm")
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed == last  # every parameter of the last block, nothing else
    info = json.loads((out / "head.json").read_text())
    assert info["finetune"]["lm_trained_parameters"] == sum(base[k].numel() for k in last)


# --------------------------------------------------------------------------- 2./3. what training writes loads back


@pytest.fixture(scope="module")
def lora_head(tmp_path_factory, models, data) -> Path:
    out = tmp_path_factory.mktemp("ft_lora") / "head"
    # 4 epochs: the validation loss is best in epoch 3, so the restored best weights are what is saved
    _train(data, out, models["esm"], {"method": "lora", "lr": 1e-2, "lora_dropout": 0.1}, epochs=4)
    return out


@pytest.fixture(scope="module")
def full_head(tmp_path_factory, models, data) -> Path:
    out = tmp_path_factory.mktemp("ft_full") / "head"
    _train(data, out, models["esm"], {"method": "full", "lr": 1e-3}, protocol="sequence_to_class", epochs=4)
    return out


SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPRV", "WCNFYQ", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"]


def test_lora_lm_loads_with_plain_peft_and_transformers(lora_head, models):
    import peft
    import transformers

    from protlm.embed.runner import Embedder

    cfg = json.loads((lora_head / "lm" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(models["esm"].resolve())
    base = transformers.EsmModel.from_pretrained(models["esm"]).eval()
    model = peft.PeftModel.from_pretrained(base, str(lora_head / "lm")).eval()
    auto = peft.AutoPeftModel.from_pretrained(str(lora_head / "lm")).eval()  # finds the base by itself
    tok = transformers.AutoTokenizer.from_pretrained(models["esm"])
    ours = resolve(str(lora_head / "lm"), CPU).forward(SEQS)
    runner = Embedder(str(lora_head / "lm")).embed(SEQS)
    for seq, got, batched in zip(SEQS, ours, runner):
        with torch.no_grad():
            enc = tok(seq, return_tensors="pt")
            ref = model(**enc).last_hidden_state[0, 1:1 + len(seq)].numpy()
            ref_auto = auto(**enc).last_hidden_state[0, 1:1 + len(seq)].numpy()
        assert got.shape == ref.shape == (len(seq), 64)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(batched, ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(ref_auto, ref, atol=1e-6, rtol=0)
    # and the adapter is not a no-op: the base model alone gives other numbers
    with torch.no_grad():
        plain = transformers.EsmModel.from_pretrained(models["esm"]).eval()
        enc = tok(SEQS[0], return_tensors="pt")
        assert np.abs(plain(**enc).last_hidden_state[0, 1:-1].numpy() - ours[0]).max() > 1e-4


def test_full_lm_loads_with_plain_transformers(full_head):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(full_head / "lm")
    model = transformers.EsmModel.from_pretrained(full_head / "lm").eval()
    ours = resolve(str(full_head / "lm"), CPU).forward(SEQS)
    for seq, got in zip(SEQS, ours):
        with torch.no_grad():
            ref = model(**tok(seq, return_tensors="pt")).last_hidden_state[0, 1:1 + len(seq)].numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_finetune_merge_writes_a_standalone_model_folder(lora_head, full_head, tmp_path, capsys):
    import transformers

    from protlm.cli.main import main

    merged = tmp_path / "merged"
    assert main(["finetune-merge", str(lora_head), "--out", str(merged)]) == 0
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    tok = transformers.AutoTokenizer.from_pretrained(merged)
    model = transformers.EsmModel.from_pretrained(merged).eval()  # no peft needed
    ours = resolve(str(lora_head / "lm"), CPU).forward(SEQS)
    for seq, got, again in zip(SEQS, ours, resolve(str(merged), CPU).forward(SEQS)):
        with torch.no_grad():
            ref = model(**tok(seq, return_tensors="pt")).last_hidden_state[0, 1:1 + len(seq)].numpy()
        np.testing.assert_allclose(ref, got, atol=1e-5, rtol=0)
        np.testing.assert_allclose(again, got, atol=1e-6, rtol=0)
    capsys.readouterr()
    assert main(["finetune-merge", str(full_head), "--out", str(tmp_path / "m2")]) == 2
    assert "already a whole model folder" in capsys.readouterr().err
    # --out is replaced whole: never what the merge reads, even with --overwrite
    base = json.loads((lora_head / "lm" / "adapter_config.json").read_text())["base_model_name_or_path"]
    before = {p: p.read_bytes() for p in sorted(lora_head.rglob("*")) + sorted(Path(base).rglob("*")) if p.is_file()}
    for out, said in ((base, "is inside"), (lora_head / "lm", "is inside"), (lora_head.parent, "holds")):
        assert main(["finetune-merge", str(lora_head), "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert said in err and "which this command reads" in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in before} == before
    # a folder that happens to be named like a temporary one is not someone else's to remove
    (tmp_path / "m3.tmp").mkdir()
    (tmp_path / "m3.tmp" / "keep").write_text("x")
    assert main(["finetune-merge", str(lora_head), "--out", str(tmp_path / "m3")]) == 0
    assert (tmp_path / "m3.tmp" / "keep").read_text() == "x" and (tmp_path / "m3" / "config.json").is_file()
    assert not list(tmp_path.glob(".m3.tmp-*"))
    # an adapter with NaN weights (diverged, damaged): nothing is written
    from safetensors.torch import load_file, save_file

    nan = tmp_path / "nan_head"
    shutil.copytree(lora_head, nan)
    adapter = nan / "lm" / "adapter_model.safetensors"
    weights = load_file(str(adapter))
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, str(adapter))
    capsys.readouterr()
    assert main(["finetune-merge", str(nan), "--out", str(tmp_path / "m4")]) == 2
    assert "NaN or inf" in capsys.readouterr().err and not (tmp_path / "m4").exists()
    assert not list(tmp_path.glob(".m4.tmp-*"))


@pytest.mark.parametrize("which", ["lora", "full"])
def test_head_folder_embeds_like_its_lm_with_its_own_fingerprint(which, lora_head, full_head, models):
    head_dir = lora_head if which == "lora" else full_head
    as_head, as_lm, base = (resolve(str(p), CPU) for p in (head_dir, head_dir / "lm", models["esm"]))
    for a, b in zip(as_head.forward(SEQS), as_lm.forward(SEQS)):
        np.testing.assert_array_equal(a, b)
    assert as_head.fingerprint() == as_lm.fingerprint() != base.fingerprint()
    assert max(np.abs(a - b).max() for a, b in zip(as_lm.forward(SEQS), base.forward(SEQS))) > 1e-4
    info = json.loads((head_dir / "head.json").read_text())
    assert info["finetune"]["base_fingerprint"] == base.fingerprint()
    assert info["embedder_identity"]["fingerprint"] == as_lm.fingerprint()
    # scoring the fine-tuned head on the base model's embeddings is refused (same width, other model)
    head = load_head(head_dir)
    with pytest.raises(InputError, match="fingerprint"):
        predict(head, ["a"], ["MKTAYIAKQ"], embedder=str(models["esm"]))


# --------------------------------------------------------------------------- 4. evaluate / predict reproduce training


@pytest.mark.parametrize("which", ["lora", "full"])
def test_saved_head_reproduces_the_metrics_training_wrote(which, lora_head, full_head, tmp_path):
    head_dir = lora_head if which == "lora" else full_head
    metrics = json.loads((head_dir / "metrics.json").read_text())
    _same(metrics["test"], _evaluate_saved(head_dir))
    # the best epoch's validation loss (FinetunedModel, in training) is what the saved LM + head give
    info = json.loads((head_dir / "head.json").read_text())
    assert info["best_epoch"] < info["epochs_run"] == 4  # (the fixtures' settings): an earlier epoch is restored
    best = info["history"][info["best_epoch"] - 1]
    assert _valid_loss_of_saved(head_dir) == pytest.approx(best["valid_loss"], rel=1e-4, abs=1e-6)
    # predict on the test proteins: the accuracy it implies is the reported one
    head = load_head(head_dir)
    sets = head.protocol.evaluation_sets(head, {}, None)
    test = sets["held_out"]
    rows = predict(head, test.ids, test.sequences)
    target = head.config.targets[0].name
    classes = head.state["classes"][0]
    if which == "lora":  # residue_to_class: one predicted letter per residue
        pred = np.concatenate([[classes.index(c) for c in r["prediction"]] for r in rows])
        truth = np.concatenate([np.asarray(t) for t in test.targets[0]])
        assert (pred == truth).mean() == pytest.approx(metrics["test"]["held_out"][target]["accuracy"]["value"])
    else:
        pred = np.array([classes.index(r["prediction"]) for r in rows])
        assert (pred == np.asarray(test.targets[0])).mean() == pytest.approx(
            metrics["test"]["held_out"][target]["accuracy"]["value"])
    # a head folder moved elsewhere still finds its lm/ and scores the same
    moved = tmp_path / "moved"
    shutil.copytree(head_dir, moved)
    _same(metrics["test"], _evaluate_saved(moved))


def test_retraining_into_the_same_folder_with_a_cache_scores_the_new_lm(tmp_path, models, data):
    """The test sets are embedded by the saved LM with the feature cache: a second run into the same
    out folder (same path, other weights) must not reuse the first run's cached embeddings."""
    out, cache = tmp_path / "head", tmp_path / "cache"
    for lr in (1e-3, 3e-2):
        cfg = load_task_config(data=_config(data, models["esm"], {"method": "full", "lr": lr}))
        res = train(cfg, out, cache_dir=cache)
    _same(res["test"], _evaluate_saved(out))  # evaluated without the cache


# --------------------------------------------------------------------------- 5. every family × method × protocol


RUNS = (
    [("esm", "lora", p) for p in PROTOCOLS]
    + [("esm", "full", "residue_to_class"), ("esm", "top", "sequence_to_value"),
       ("bert", "full", "residue_to_value"), ("bert", "lora", "sequence_to_class"), ("bert", "top", "residue_to_class"),
       ("albert", "full", "residues_to_class"), ("albert", "lora", "sequence_to_value"),
       ("t5", "full", "sequence_to_class"), ("t5", "lora", "residue_to_class"), ("t5", "top", "residues_to_class"),
       ("causal", "full", "sequence_to_value"), ("causal", "lora", "residues_to_class"),
       ("causal", "top", "residue_to_value"),
       ("xlnet", "full", "residue_to_class"), ("xlnet", "lora", "residue_to_value"),
       ("xlnet", "top", "sequence_to_class"),
       ("prottxl", "full", "residues_to_class"), ("prottxl", "top", "sequence_to_value"),
       ("unirep", "full", "residue_to_value"), ("unirep", "top", "residue_to_class")]
)


def _check_run(family: str, method: str, base_dir: Path, out: Path, res: dict) -> None:
    from protlm.embed.backends.hf import LORA_AUTO

    assert (out / "head.json").is_file() and (out / "head.safetensors").is_file() and (out / "lm").is_dir()
    assert res["test"]["held_out"], res["test"]
    lm = out / "lm"
    assert (lm / "adapter_config.json").is_file() == (method == "lora")
    base, tuned = _state(base_dir), _state(lm)
    assert set(base) == set(tuned)
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    if method == "full":
        missed = sorted(k for k in base if k not in changed and not _unused(family, k)
                        and base[k].is_floating_point())
        assert not missed, missed
    elif method == "top":
        last = _block_keys(base_dir, -1)
        assert changed == {k for k in last if not _unused(family, k)}
    else:
        model_type = json.loads((base_dir / "config.json").read_text())["model_type"]
        auto = LORA_AUTO.get(model_type) or resolve(str(base_dir), CPU).lora_targets()  # prottxl: its linear layers
        targets = _lora_target_keys(base, auto)
        assert changed == targets and targets
    _same(res["test"], _evaluate_saved(out))  # the saved head + LM reproduce training's scores
    emb = resolve(str(out), CPU).forward(SEQS[:2])
    assert [e.shape[0] for e in emb] == [len(s) for s in SEQS[:2]]


@pytest.mark.parametrize("family,method,protocol", RUNS, ids=[f"{f}-{m}-{p}" for f, m, p in RUNS])
def test_family_method_protocol_runs(family, method, protocol, tmp_path, models, data):
    out = tmp_path / "head"
    res = _train(data, out, models[family], {"method": method, "lr": 1e-3}, protocol=protocol, epochs=1)
    _check_run(family, method, models[family], out, res)


def test_prottxl_lora_runs(tmp_path, models, data):
    out = tmp_path / "head"
    res = _train(data, out, models["prottxl"], {"method": "lora", "lr": 1e-3}, epochs=1)
    _check_run("prottxl", "lora", models["prottxl"], out, res)


def test_albert_top_and_unirep_lora_are_refused_before_anything_is_written(tmp_path, models, data):
    out = tmp_path / "albert"
    with pytest.raises(ConfigError, match="ALBERT shares one set of weights"):
        _train(data, out, models["albert"], {"method": "top"})
    assert not out.exists()
    out = tmp_path / "unirep"
    with pytest.raises(ConfigError, match="unirep: LoRA is not offered"):
        _train(data, out, models["unirep"], "lora")
    assert not out.exists()


def test_unirep_lora_with_explicit_targets_is_refused_up_front(tmp_path, models, data):
    out = tmp_path / "unirep"
    with pytest.raises(ConfigError, match="LoRA is not offered"):
        _train(data, out, models["unirep"], {"method": "lora", "lora_target_modules": ["embedding"]}, epochs=1)
    assert not out.exists()


# --------------------------------------------------------------------------- 6. config errors


def test_config_errors_name_the_finetune_field(tmp_path, models, data, capsys):
    with pytest.raises(ConfigError, match="finetune") as err:
        _train(data, tmp_path / "a", "onehot", {"method": "lora"})
    assert "onehot" in str(err.value)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="finetune.method: must be one of none, full, lora, top, not 'bogus'"):
        load_task_config(data=_config(data, models["esm"], {"method": "bogus"}))
    with pytest.raises(ConfigError, match="finetune.methd"):
        load_task_config(data=_config(data, models["esm"], {"methd": "lora"}))
    for bad, field in (({"method": "top", "top_layers": 0}, "top_layers"), ({"method": "lora", "lora_r": 0}, "lora_r"),
                       ({"method": "lora", "lora_dropout": 1.0}, "lora_dropout"),
                       ({"method": "full", "tokens_per_step": -1}, "tokens_per_step"),
                       ({"method": "lora", "lora_target_modules": []}, "lora_target_modules"),
                       ({"method": "lora", "lora_bias": "some"}, "lora_bias")):
        with pytest.raises(ConfigError, match=f"finetune.{field}"):
            load_task_config(data=_config(data, models["esm"], bad))
    contacts = {"name": "c", "protocol": "residue_pairs_to_class", "embedder": str(models["esm"]),
                "data": {"train_chains": 10, "eval_chains": 5}, "head": {"type": "attention_lr"},
                "finetune": {"method": "lora"}}  # pair heads fine-tune (tests/test_contacts.py); attention maps do not
    with pytest.raises(ConfigError, match="finetune.method"):
        load_task_config(data=contacts)
    with pytest.raises(ConfigError, match="finetune.lora_target_modules") as err:
        _train(data, tmp_path / "b", models["esm"], {"method": "lora", "lora_target_modules": ["nonexistent"]})
    assert "\n" not in str(err.value) and not (tmp_path / "b").exists()
    # the same through the CLI: one line, exit code 2, no traceback
    import yaml

    from protlm.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config(data, models["esm"], {"method": "lora",
                                                                "lora_target_modules": ["nonexistent"]})))
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "c")]) == 2
    err_text = capsys.readouterr().err
    assert "Traceback" not in err_text and "finetune.lora_target_modules" in err_text.strip().splitlines()[-1]
    # `finetune: lora` is the method alone; `finetune: none` (or no section) trains on frozen features
    bare = load_task_config(data=_config(data, models["esm"], "lora"))
    assert bare.finetuning and bare.finetune.method == "lora" and bare.finetune.lora_r == FinetuneConfig().lora_r
    assert not load_task_config(data=_config(data, models["esm"], "none")).finetuning
    assert not load_task_config(data=_config(data, models["esm"], None)).finetuning


def test_bare_string_lora_trains_and_none_writes_no_lm(tmp_path, models, data):
    res = _train(data, tmp_path / "lora", models["esm"], "lora", epochs=1)
    assert res["finetune"]["method"] == "lora" and (tmp_path / "lora" / "lm" / "adapter_config.json").is_file()
    res = _train(data, tmp_path / "none", models["esm"], "none", epochs=1)
    assert "finetune" not in res and not (tmp_path / "none" / "lm").exists()
    assert "finetune" not in json.loads((tmp_path / "none" / "head.json").read_text())


# --------------------------------------------------------------------------- 7. accumulation, schedule, checkpointing


def _lm_and_head(out: Path) -> dict[str, torch.Tensor]:
    state = {f"lm.{k}": v for k, v in load_file(str(out / "lm" / "model.safetensors")).items()}
    state.update({f"head.{k}": v for k, v in load_file(str(out / "head.safetensors")).items()})
    return state


def test_accumulating_to_the_whole_set_equals_one_big_batch(tmp_path, models, data):
    """residue_to_class's loss is the mean over the batch's labelled residues (here: every residue,
    no MASK); accumulation weights each batch's loss by its residues and divides by their sum, so
    one step over the whole set in batches of 4 is one step on the whole set at once (dropout 0 in
    the LM and the head, full fine-tuning)."""
    records = data["ss"].read_text().splitlines()
    residues = sum(len(seq) for head, seq in zip(records[::2], records[1::2])
                   if "SET=train" in head and "VALIDATION" not in head)
    common = dict(epochs=1, head={"dropout": 0.0})
    ft = {"method": "full", "lr": 1e-3}
    accumulated = _train(data, tmp_path / "acc", models["esm"], {**ft, "tokens_per_step": residues}, **common,
                         batch_size=4)
    whole = _train(data, tmp_path / "whole", models["esm"], {**ft, "tokens_per_step": 0}, **common, batch_size=12)
    huge = _train(data, tmp_path / "huge", models["esm"], {**ft, "tokens_per_step": 10 ** 9}, **common, batch_size=4)
    steps = _train(data, tmp_path / "steps", models["esm"], {**ft, "tokens_per_step": 0}, **common, batch_size=4)

    def n_steps(d):
        return json.loads((tmp_path / d / "head.json").read_text())["history"][-1]["optimizer_steps"]

    assert (n_steps("acc"), n_steps("whole"), n_steps("huge"), n_steps("steps")) == (1, 1, 1, 3)
    a, w, h, s = (_lm_and_head(tmp_path / d) for d in ("acc", "whole", "huge", "steps"))
    assert set(a) == set(w) == set(s)
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), w[k].numpy(), atol=1e-5, rtol=0, err_msg=k)
        np.testing.assert_array_equal(a[k].numpy(), h[k].numpy(), err_msg=k)  # the same single step
    assert max((a[k] - s[k]).abs().max().item() for k in a) > 1e-4  # three steps are not one
    assert accumulated["test"] and whole["test"] and huge["test"] and steps["test"]


def test_lm_has_its_own_learning_rate_and_warmup(tmp_path, models, data):
    from protlm.models.folder import canonical_key

    config = json.loads((models["esm"] / "config.json").read_text())  # the fine-tuned LM is saved canonically
    base = {n.removeprefix("esm."): v for k, v in load_file(str(models["esm"] / "model.safetensors")).items()
            for n in canonical_key(k, config)}

    def lm_moved(d: Path) -> float:
        tuned = load_file(str(d / "lm" / "model.safetensors"))
        return max((tuned[k] - base[k]).abs().max().item() for k in tuned)

    def head_moved(d: Path) -> float:
        head = load_head(d)
        torch.manual_seed(head.config.train.seed)
        fresh = head.protocol.new_head(head.config, head.dim, head.state).state_dict()
        return max((v - fresh[k]).abs().max().item() for k, v in head.model.state_dict().items())

    _train(data, tmp_path / "slow_lm", models["esm"], {"method": "full", "lr": 1e-9}, epochs=1)
    assert lm_moved(tmp_path / "slow_lm") < 1e-6 < 1e-3 < head_moved(tmp_path / "slow_lm")
    _train(data, tmp_path / "warm", models["esm"], {"method": "full", "lr": 1e-2, "warmup_steps": 10 ** 8}, epochs=1)
    assert lm_moved(tmp_path / "warm") < 1e-6 and head_moved(tmp_path / "warm") < 1e-6  # both rates warm up
    _train(data, tmp_path / "cold", models["esm"], {"method": "full", "lr": 1e-2}, epochs=1)
    assert lm_moved(tmp_path / "cold") > 1e-3


@pytest.mark.parametrize("method", ["full", "lora"])
def test_activation_checkpointing_gives_the_same_weights(method, tmp_path, models, data):
    spec = parse_spec(str(models["esm"]), "embedder")
    on = trainable_lm(spec, FinetuneConfig(method=method, checkpointing=True)).module
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in on.modules())  # it is really on
    ft = {"method": method, "lr": 1e-3, "lora_dropout": 0.0}
    _train(data, tmp_path / "plain", models["esm"], {**ft, "checkpointing": False}, epochs=1, head={"dropout": 0.0})
    _train(data, tmp_path / "ckpt", models["esm"], {**ft, "checkpointing": True}, epochs=1, head={"dropout": 0.0})
    if method == "lora":
        a, b = (load_file(str(tmp_path / d / "lm" / "adapter_model.safetensors")) for d in ("plain", "ckpt"))
        assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)
    else:
        a, b = _lm_and_head(tmp_path / "plain"), _lm_and_head(tmp_path / "ckpt")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, rtol=0, err_msg=k)


def test_unirep_refuses_activation_checkpointing(tmp_path, models, data):
    with pytest.raises(ConfigError, match="checkpointing is not offered"):
        _train(data, tmp_path / "u", models["unirep"], {"method": "full", "checkpointing": True}, epochs=1)


def test_token_budget_and_oom_halving_keep_the_gradient(tmp_path, models, data, monkeypatch):
    """A batch cut to finetune.tokens_per_batch, or split in halves after an out-of-memory error,
    gives the weights of the whole batch (each piece weighted by its residues)."""
    common = dict(epochs=1, head={"dropout": 0.0}, batch_size=6)
    ft = {"method": "full", "lr": 1e-3}
    whole = _train(data, tmp_path / "whole", models["esm"], ft, **common)
    cut = _train(data, tmp_path / "cut", models["esm"], {**ft, "tokens_per_batch": 120}, **common)
    from protlm.embed.backends.hf import HFBackend

    real = HFBackend.forward_tokens
    calls = {"oom": 0}

    def small_memory(self, seqs, **kw):
        if torch.is_grad_enabled() and len(seqs) > 2:
            calls["oom"] += 1
            raise RuntimeError("CPU: out of memory (simulated)")
        return real(self, seqs, **kw)

    monkeypatch.setattr(HFBackend, "forward_tokens", small_memory)
    halved = _train(data, tmp_path / "halved", models["esm"], ft, **common)
    monkeypatch.setattr(HFBackend, "forward_tokens", real)
    assert calls["oom"] >= 2
    w, c, h = (_lm_and_head(tmp_path / d) for d in ("whole", "cut", "halved"))
    # the same gradient up to summation order; AdamW divides by sqrt(v), which magnifies float noise
    # in near-zero gradients (rarely used token embeddings) to ~1e-5 after two steps
    for k in w:
        np.testing.assert_allclose(c[k].numpy(), w[k].numpy(), atol=1e-4, rtol=0, err_msg=k)
        np.testing.assert_allclose(h[k].numpy(), w[k].numpy(), atol=1e-4, rtol=0, err_msg=k)
    assert whole["test"] and cut["test"] and halved["test"]


def test_length_groups_give_the_whole_batch_numbers(models):
    """On a CPU a batch runs through the LM as pieces of similar length (max_padding): the head's
    inputs and the gradients equal those of the whole padded batch."""
    from protlm.embed.spec import parse_spec
    from protlm.tasks.finetune import FinetuneConfig, FinetunedModel, TokenBatch, length_groups, trainable_lm
    from protlm.tasks.heads.base import make_head
    from protlm.tasks.heads.cnn import Config as CnnConfig

    assert length_groups([10, 100, 11, 98, 12], 0.1) == [[0, 2, 4], [3, 1]]
    assert length_groups([10, 100], 1.0) == [[0, 1]]
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MKT", "ACDEFGHIKLMNPQRSTVWY", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV"]
    mb = torch.zeros(len(seqs), max(map(len, seqs)))
    for i, s in enumerate(seqs):
        mb[i, :len(s)] = 1
    grads = []
    for padding in (1.0, 0.1):
        torch.manual_seed(0)
        backend = trainable_lm(parse_spec({"name": str(models["esm"]), "device": "cpu"}), FinetuneConfig(method="full"))
        torch.manual_seed(1)
        model = FinetunedModel(backend, make_head(CnnConfig(type="cnn", dropout=0.0), backend.dim, [3], "residue"),
                               -1, padding)
        model.eval()
        out = model(TokenBatch(seqs), mb)[0]
        (out * mb[..., None]).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = grads
    torch.testing.assert_close(a * mb[..., None], b * mb[..., None], rtol=0, atol=1e-5)
    assert set(ga) == set(gb)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-4, atol=1e-5)


def test_bf16_trains_where_the_cpu_has_it_and_is_refused_otherwise(tmp_path, models, data):
    from protlm.tasks.finetune import bf16_capable

    ok, why = bf16_capable("cpu")
    if ok:
        res = _train(data, tmp_path / "bf16", models["esm"], {"method": "lora", "precision": "bf16"}, epochs=1)
        assert res["test"]["held_out"]
    else:
        with pytest.raises(ConfigError, match="no bf16 instructions"):
            _train(data, tmp_path / "bf16", models["esm"], {"method": "lora", "precision": "bf16"}, epochs=1)
        assert why
    with pytest.raises(ConfigError, match="precision"):
        _train(data, tmp_path / "u", models["unirep"], {"method": "full", "precision": "bf16"}, epochs=1)


def test_predict_never_writes_into_the_head_it_reads(lora_head, tmp_path, capsys):
    """issue 24 item 10: `predict --out HEAD/head.json --overwrite` overwrote the head it read."""
    from protlm.cli.main import main

    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    before = (lora_head / "head.json").read_bytes()
    for target in ("head.json", "lm/adapter_config.json", "preds.csv"):
        code = main(["predict", "--head", str(lora_head), "--input", str(fasta), "--out", str(lora_head / target),
                     "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and "inside the head folder" in err and "Traceback" not in err
    assert (lora_head / "head.json").read_bytes() == before and not (lora_head / "preds.csv").exists()


def test_a_config_name_never_leaves_the_runs_folder(tmp_path, monkeypatch):
    """issue 24 item 11: `protlm train` without --out built the folder from `name: ../../x`."""
    from protlm.cli.common import safe_folder_name

    for name in ("../../../x", "/etc/passwd", "..", "a/b"):
        safe = safe_folder_name(name)
        assert "/" not in safe and not safe.startswith(".") and safe
        monkeypatch.chdir(tmp_path)
        assert (Path("runs/heads") / safe).resolve().is_relative_to((tmp_path / "runs" / "heads").resolve())
    assert safe_folder_name("secondary_structure") == "secondary_structure"


def test_an_absurd_bootstrap_is_refused_before_any_work(lora_head, tmp_path, capsys):
    """issue 24 item 15: --bootstrap 10^12 ended in a MemoryError traceback (for train: after training)."""
    from protlm.cli.main import main

    code = main(["evaluate", "--head", str(lora_head), "--bootstrap", str(10 ** 12)])
    err = capsys.readouterr().err
    assert code == 2 and "--bootstrap must be in [0, 100,000]" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="train.bootstrap"):
        load_task_config(data={"protocol": "sequence_to_class", "embedder": "onehot", "head": {"type": "ffn"},
                               "data": {"train": {"benchmark": "deeploc_train"}}, "train": {"bootstrap": 10 ** 12}})


def test_predict_reads_an_empty_device_as_empty_and_help_shows_percent(lora_head, tmp_path, capsys):
    """issue 24 item 18: `predict --input /dev/null` said "no such file"; `--help` showed "95%%"."""
    from protlm.cli.main import main

    code = main(["predict", "--head", str(lora_head), "--input", "/dev/null", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "no such file" not in err and "empty" in err
    for command in ("evaluate", "benchmark"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "95% CI" in out and "%%" not in out


def test_finetuning_can_stop_early_on_the_headline_metric(tmp_path, models, data):
    out = tmp_path / "head"
    res = _train(data, out, models["esm"], {"method": "full", "lr": 1e-3}, epochs=4, early_stopping="metric")
    info = json.loads((out / "head.json").read_text())
    values = [h["valid_accuracy"] for h in info["history"]]
    assert len(values) == 4 and all("valid_loss" not in h for h in info["history"])
    assert values[info["best_epoch"] - 1] == max(values)
    # the LM and head kept are the best epoch's: the saved pair scores what the history says
    assert res["valid"]["q3"]["accuracy"]["value"] == pytest.approx(values[info["best_epoch"] - 1], abs=1e-9)


def test_fine_tuning_clips_the_mean_gradient_of_a_step():
    """train.clip_grad_norm when the LM trains: the gradient of the step (the mean over every
    batch accumulated) is clipped to the norm, then the optimizer steps; 0 leaves it."""
    from types import SimpleNamespace

    import torch

    from protlm.tasks.train import Accumulator

    ft = SimpleNamespace(batches_per_step=1, tokens_per_batch=0, tokens_per_step=0, warmup_steps=0)
    protocol = SimpleNamespace(output_level="protein")
    batch = (None, None, torch.ones(1, 4))
    moved = {}
    for clip in (0.0, 0.5):
        w = torch.nn.Parameter(torch.zeros(3))
        acc = Accumulator(torch.optim.SGD([w], lr=1.0), ft, protocol, world=1, clip=clip)
        acc.add((w * torch.tensor([3.0, 4.0, 0.0])).sum(), 2.0, batch)  # a mean loss over 2: gradient (3, 4, 0), norm 5
        acc.step()
        moved[clip] = -w.detach()
    assert torch.allclose(moved[0.0], torch.tensor([3.0, 4.0, 0.0]))
    assert torch.allclose(moved[0.5], torch.tensor([0.3, 0.4, 0.0]), atol=1e-6)
