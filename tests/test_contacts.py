"""Contact prediction: maps from coordinates (CA fallback, offsets, ranges), metrics on constructed
maps with known precision, APC and the attention regression on planted contacts, the pair heads,
and the CLI end to end on a tiny model and a tiny data set in the shared npz layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protlm.errors import ConfigError, InputError
from protlm.tasks.contacts.attention import AttentionLogReg, apc, symmetrize_apc
from protlm.tasks.contacts.data import (Chain, contact_map, load_chains, locate_stretch, scored_pairs, separation,
                                        to_stretch, write_chains)
from protlm.tasks.contacts.metrics import evaluate_maps, per_protein_precisions, precision_at
from protlm.tasks.heads.pair_mlp import PairMLP
from protlm.tasks.heads.resnet2d import ResNet2D

AA = "ACDEFGHIKLMNPQRSTVWY"


# --------------------------------------------------------------------------- contact maps


def test_contact_map_by_hand_with_ca_fallback_and_unobserved_residues():
    # CB on a line at x = 0, 5, 12, 19.9, 27 Å; residue 2 has no CB (glycine) → its CA (x = 7) counts
    cb = np.array([[0, 0, 0], [5, 0, 0], [np.nan] * 3, [19.9, 0, 0], [27, 0, 0], [np.nan] * 3], dtype=np.float32)
    ca = np.array([[0, 1, 0], [5, 1, 0], [7, 0, 0], [19, 0, 0], [26, 0, 0], [np.nan] * 3], dtype=np.float32)
    contacts, observed = contact_map(ca, cb)
    assert observed.tolist() == [True, True, True, True, True, False]
    expect = {(0, 1), (0, 2), (1, 2), (3, 4)}  # 5, 7, 2, 7.1 Å; 0–3 is 19.9, 2–3 is 12.9
    got = {(i, j) for i, j in zip(*np.nonzero(np.triu(contacts, 1)))}
    assert got == expect
    assert (contacts == contacts.T).all() and contacts.diagonal()[:5].all()
    assert not contacts[5].any() and not contacts[:, 5].any()
    # exactly 8 Å is not a contact (strict <)
    two = np.array([[0, 0, 0], [8, 0, 0]], dtype=np.float32)
    assert not contact_map(two, two)[0][0, 1]


def test_separation_ranges_and_scored_pairs():
    sep = separation(30)
    assert sep[3, 9] == 6 and sep[9, 3] == 6
    observed = np.ones(30, dtype=bool)
    observed[10] = False
    m = scored_pairs(observed)
    assert m[0, 6] and not m[0, 5] and not m[10, 20] and not m[20, 10]
    # the ranges are inclusive: 11 short, 12 medium, 23 medium, 24 long
    probs = np.zeros((40, 40))
    contacts = np.zeros((40, 40), dtype=bool)
    for sep_, rng in ((11, "short"), (12, "medium"), (23, "medium"), (24, "long")):
        c = contacts.copy()
        c[0, sep_] = c[sep_, 0] = True
        p = probs.copy()
        p[0, sep_] = p[sep_, 0] = 1.0
        assert precision_at(p, c, rng=rng, divisor=40) == 1.0
        others = {"short", "medium", "long"} - {rng}
        assert all(precision_at(p, c, rng=o, divisor=40) == 0.0 for o in others)


def test_offsets_map_full_sequence_predictions_to_the_stretch():
    full = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQ"
    stretch = full[7:30]
    assert locate_stretch(full, stretch, 7) == 7
    assert locate_stretch(full, stretch, 3) == 7  # a wrong recorded offset is repaired by the unique match
    with pytest.raises(InputError, match="not a stretch"):
        locate_stretch(full, "WWWWW", 0)
    with pytest.raises(InputError, match="more than once"):
        locate_stretch("AAAAAAAA", "AAA", None)
    pred = np.arange(len(full) ** 2, dtype=float).reshape(len(full), len(full))
    cut = to_stretch(pred, 7, len(stretch))
    assert cut.shape == (23, 23) and cut[0, 0] == pred[7, 7] and cut[2, 5] == pred[9, 12]
    with pytest.raises(InputError):
        to_stretch(pred, 40, 23)


def _walk(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A compact random chain: CA steps of 3.8 Å, CB 1.5 Å off each CA."""
    steps = rng.normal(size=(n, 3))
    steps = 3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True)
    ca = np.cumsum(steps, axis=0)
    off = rng.normal(size=(n, 3))
    cb = ca + 1.5 * off / np.linalg.norm(off, axis=1, keepdims=True)
    return ca.astype(np.float32), cb.astype(np.float32)


def _tiny_set(path: Path, n_train: int = 10, n_valid: int = 8, seed: int = 0) -> tuple[Path, dict[str, str]]:
    rng = np.random.default_rng(seed)
    chains, full = [], {}
    for k in range(n_train + n_valid):
        n = int(rng.integers(40, 60))
        ca, cb = _walk(n, rng)
        seq = "".join(rng.choice(list(AA), size=n))
        pre = "".join(rng.choice(list(AA), size=k % 4))
        cid = f"c{k:02d}-A"
        chains.append(Chain(cid, seq, ca, cb, split="train" if k < n_train else "valid", offset=len(pre)))
        full[cid] = pre + seq + "MK"
    return write_chains(path, chains), full


def test_loader_reads_the_npz_layout_with_split_caps_and_full_sequences(tmp_path):
    npz, full = _tiny_set(tmp_path / "coords_ca_cb.npz")
    assert np.load(npz, allow_pickle=False)["seq"].dtype == np.dtype("S1")
    train = load_chains(tmp_path, "train")
    assert len(train) == 10 and all(c.split == "train" for c in train)
    assert len(load_chains(tmp_path, "validation")) == 8
    capped = load_chains(tmp_path, "train", max_chains=4, seed=1)
    assert len(capped) == 4 and [c.id for c in capped] == sorted(c.id for c in capped)
    assert [c.id for c in capped] == [c.id for c in load_chains(tmp_path, "train", max_chains=4, seed=1)]
    assert all(len(c) <= 45 for c in load_chains(tmp_path, "train", max_length=45))
    with_full = load_chains(tmp_path, "train", full_sequences=full)
    for c in with_full:
        assert c.model_input[c.offset:c.offset + len(c)] == c.seq and c.model_input == full[c.id]
    with pytest.raises(InputError, match="no chains in split"):
        load_chains(tmp_path, "test")
    with pytest.raises(InputError, match="no such file"):
        load_chains(tmp_path / "missing", "train")


# --------------------------------------------------------------------------- metrics


def test_precision_on_constructed_maps_with_known_values():
    length = 50  # top L/5 = 10, L/2 = 25, L = 50
    contacts = np.zeros((length, length), dtype=bool)
    probs = np.zeros((length, length))
    long_pairs = [(i, i + 30) for i in range(20)]  # 20 long-range candidates we rank first
    for rank, (i, j) in enumerate(long_pairs):
        probs[i, j] = probs[j, i] = 1.0 - rank * 0.01
        if rank in (0, 1, 2, 4, 5, 8, 9):  # 7 of the top 10 are true contacts
            contacts[i, j] = contacts[j, i] = True
    assert precision_at(probs, contacts, rng="long", divisor=5) == pytest.approx(0.7)
    # L/2 = 25 picks the 20 ranked pairs + 5 zero-probability ones (no contacts): 7 / 25
    assert precision_at(probs, contacts, rng="long", divisor=2) == pytest.approx(7 / 25)
    # short range: no predicted signal, one true contact; ties keep (i, j) order → (0, 6) comes first
    contacts[0, 6] = contacts[6, 0] = True
    assert precision_at(probs, contacts, rng="short", divisor=5) == pytest.approx(1 / 10)
    # a residue without coordinates removes its pairs from the candidates
    observed = np.ones(length, dtype=bool)
    observed[0] = False
    assert precision_at(probs, contacts, observed, rng="long", divisor=5) == pytest.approx(6 / 10)


def test_fewer_candidates_than_k_and_too_short_proteins():
    # L = 26: long-range candidates are (0,24), (0,25), (1,25) only; k = 26 // 5 = 5 → all 3 are taken
    contacts = np.zeros((26, 26), dtype=bool)
    contacts[0, 25] = contacts[25, 0] = True
    assert precision_at(np.zeros((26, 26)), contacts, rng="long", divisor=5) == pytest.approx(1 / 3)
    assert precision_at(np.zeros((20, 20)), np.zeros((20, 20), dtype=bool), rng="long") is None
    table = per_protein_precisions([np.zeros((20, 20)), np.zeros((26, 26))],
                                   [np.zeros((20, 20), dtype=bool), contacts])
    assert np.isnan(table["long"]["L/5"][0]) and table["long"]["L/5"][1] == pytest.approx(1 / 3)


def test_mean_over_proteins_bootstrap_and_headline():
    rng = np.random.default_rng(0)
    probs, maps, per = [], [], []
    for k in range(30):
        n = 60
        c = np.zeros((n, n), dtype=bool)
        p = rng.random((n, n))
        p = (p + p.T) / 2
        i, j = np.triu_indices(n, 24)
        top = np.argsort(-p[i, j], kind="stable")[:12]
        hits = top[: k % 13]  # protein k: k % 13 of its top 12 long-range pairs are contacts
        c[i[hits], j[hits]] = True
        c = c | c.T
        probs.append(p)
        maps.append(c)
        per.append((k % 13) / 12)
    summary = evaluate_maps(probs, maps, n_boot=1000, seed=0)
    head = summary["headline"]
    assert head["name"].startswith("P@L/5, long") and head["n_proteins"] == 30
    assert head["value"] == pytest.approx(np.mean(per))
    lo, hi = head["ci"]
    assert lo < head["value"] < hi and hi - lo < 0.3
    assert summary["n_boot"] == 1000 and summary["averaging"] == "mean over proteins"
    assert set(summary["precision"]) == {"short", "medium", "long", "all"}


# --------------------------------------------------------------------------- attention


def test_apc_matches_the_formula_and_symmetrises():
    rng = np.random.default_rng(0)
    a = rng.random((2, 7, 7)).astype(np.float32)
    out = symmetrize_apc(a)
    f = a[1] + a[1].T
    expect = f - np.outer(f.sum(1), f.sum(0)) / f.sum()
    assert np.allclose(out[1], expect, atol=1e-5)
    assert np.allclose(out, np.swapaxes(out, 1, 2), atol=1e-6)
    assert np.allclose(apc(np.ones((5, 5))), 0)


def _planted_attention(contacts: np.ndarray, rng: np.random.Generator, n_maps: int = 6, signal: int = 2) -> np.ndarray:
    """Row-normalised attention maps; map ``signal`` attends to contact partners, the others to noise."""
    n = contacts.shape[0]
    maps = rng.random((n_maps, n, n)) ** 4
    maps[signal] = 0.05 * rng.random((n, n)) + contacts * (np.abs(np.subtract.outer(range(n), range(n))) >= 6)
    return maps / maps.sum(-1, keepdims=True)


def test_logistic_regression_recovers_planted_contacts():
    rng = np.random.default_rng(1)

    def chain_maps(n: int):
        ca, cb = _walk(n, rng)
        contacts, observed = contact_map(ca, cb)
        feats = np.moveaxis(symmetrize_apc(_planted_attention(contacts, rng)), 0, -1)
        return feats, contacts, observed

    xs, ys = [], []
    for _ in range(5):
        feats, contacts, observed = chain_maps(60)
        m = np.triu(scored_pairs(observed))
        xs.append(feats[m])
        ys.append(contacts[m])
    model = AttentionLogReg(6).fit(np.concatenate(xs), np.concatenate(ys))
    assert int(np.argmax(np.abs(model.coef))) == 2 and model.coef[2] > 0
    held = [chain_maps(70) for _ in range(4)]
    probs = [model.predict_proba(f) for f, _, _ in held]
    summary = evaluate_maps(probs, [c for _, c, _ in held], [o for _, _, o in held], n_boot=0)
    assert summary["precision"]["all"]["L/5"]["mean"] > 0.9
    assert all(np.allclose(p, p.T) for p in probs)
    again = AttentionLogReg.from_state(model.state(), model.hparams())
    assert np.allclose(again.predict_proba(held[0][0]), probs[0], atol=1e-5)


@pytest.fixture(scope="module")
def tiny_esm(tmp_path_factory) -> Path:
    from protlm.models.architectures import ModelSpec, build_model
    from protlm.models.vocab import build_tokenizer

    folder = tmp_path_factory.mktemp("tiny_esm") / "esm"
    torch.manual_seed(0)
    build_model(ModelSpec(arch="esm", preset="tiny")).save_pretrained(folder)
    build_tokenizer("esm").save_pretrained(folder)
    return folder


def test_attention_maps_drop_special_tokens(tiny_esm):
    import transformers

    from protlm.tasks.contacts.attention import attention_features, attention_maps, load_lm

    lm = load_lm(str(tiny_esm))
    seq = "MKTAYIAKQRQISFVKSHFSRQ"
    maps = attention_maps(lm, seq)
    assert maps.shape == (lm.layers * lm.heads, len(seq), len(seq))
    model = transformers.EsmModel.from_pretrained(tiny_esm, attn_implementation="eager", add_pooling_layer=False)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_esm)
    with torch.inference_mode():
        out = model(**tok(seq, return_tensors="pt"), output_attentions=True)
    direct = torch.cat([a[0] for a in out.attentions]).numpy()[:, 1:-1, 1:-1]
    assert np.allclose(maps, direct, atol=1e-5)
    # a stretch inside a longer sequence: features of the full sequence, cut to the stretch
    chain = Chain("x", seq[5:17], np.zeros((12, 3)), np.zeros((12, 3)), offset=5, full_seq=seq)
    feats = attention_features(lm, chain)
    assert feats.shape == (12, 12, lm.n_maps)
    assert np.allclose(feats, np.moveaxis(symmetrize_apc(maps), 0, -1)[5:17, 5:17], atol=1e-5)
    rand = load_lm(f"random-init:{tiny_esm}", seed=3)
    assert not np.allclose(attention_maps(rand, seq), maps)


# --------------------------------------------------------------------------- heads


def test_pair_mlp_rows_in_blocks_equal_one_block_and_pairs():
    torch.manual_seed(0)
    head = PairMLP(8, hidden=16, dropout=0.0).eval()
    emb = torch.randn(23, 8)
    with torch.no_grad():
        whole = head(emb, pair_budget=10_000)
        blocks = head(emb, pair_budget=23 * 3)  # three rows at a time
        i, j = torch.triu_indices(23, 23, 1)
        pairs = head.pair_logits(head.norm(emb), i, j)
    assert torch.allclose(whole, blocks, atol=1e-6)
    assert torch.allclose(whole, whole.T)
    assert torch.allclose(whole[i, j], pairs, atol=1e-6)


def test_pair_mlp_training_blocks_equal_the_pairwise_definition():
    """train_logits computes blocks of rows by broadcasting: the same logits, in m.nonzero()'s
    order, and the same gradients (weights and embedding, as when the LM trains) as pair by pair,
    for a mask with gaps (unobserved residues, empty rows) and blocks of a few rows."""
    from protlm.tasks.heads import pair_mlp

    torch.manual_seed(0)
    n = 40
    head = PairMLP(8, hidden=16, dropout=0.0).train()
    emb = torch.randn(n, 8, requires_grad=True)
    m = torch.triu(torch.rand(n, n) < 0.5, diagonal=3)
    m[5] = False
    m[:, 17] = False
    i, j = torch.nonzero(m, as_tuple=True)
    results = []
    for block in (pair_mlp.BLOCK_PAIRS, 3 * n):  # one block; three rows at a time
        pair_mlp.BLOCK_PAIRS, saved = block, pair_mlp.BLOCK_PAIRS
        try:
            head.zero_grad()
            emb.grad = None
            z = head.train_logits(emb, m)
            (z * torch.linspace(-1, 1, len(z))).sum().backward()
            results.append((z.detach(), emb.grad.clone(), head.diff.weight.grad.clone()))
        finally:
            pair_mlp.BLOCK_PAIRS = saved
    head.zero_grad()
    emb.grad = None
    ref = head.pair_logits(head.norm(emb), i, j)
    (ref * torch.linspace(-1, 1, len(ref))).sum().backward()
    for z, g_emb, g_w in results:
        assert z.shape == ref.shape == (int(m.sum()),)
        assert torch.allclose(z, ref.detach(), atol=1e-5)
        assert torch.allclose(g_emb, emb.grad, atol=1e-5)
        assert torch.allclose(g_w, head.diff.weight.grad, atol=1e-5)
    assert head.train_logits(emb, torch.zeros(n, n, dtype=torch.bool)).shape == (0,)


def test_resnet2d_is_symmetric_and_any_length():
    torch.manual_seed(0)
    head = ResNet2D(8, proj=4, channels=6, blocks=2).eval()
    for n in (7, 31):
        with torch.no_grad():
            z = head(torch.randn(n, 8))
        assert z.shape == (n, n) and torch.allclose(z, z.T)


def test_resnet2d_channels_last_computes_what_nchw_does():
    """The head keeps its weights and maps channels_last (faster on CPU): the same logits and
    gradients as the plain NCHW layout, up to float rounding, and weights saved contiguous."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    head = ResNet2D(8, proj=4, channels=6, blocks=3).eval()
    assert head.blocks[0].c1.weight.is_contiguous(memory_format=torch.channels_last)
    emb = torch.randn(29, 8)

    def nchw(emb):  # the same layers, every tensor in the default layout
        a = head.proj(head.norm(emb))
        n = a.shape[0]
        ai, aj = a[:, None, :].expand(n, n, -1), a[None, :, :].expand(n, n, -1)
        x = torch.cat([ai, aj, ai * aj], dim=-1).permute(2, 0, 1)[None].contiguous()

        def conv(m, x):
            return F.conv2d(x, m.weight.contiguous(), m.bias, padding=m.padding, dilation=m.dilation)

        x = conv(head.inp, x)
        for b in head.blocks:
            x = x + conv(b.c2, torch.relu(conv(b.c1, torch.relu(x))))
        z = conv(head.out, torch.relu(x))[0, 0]
        return (z + z.T) / 2

    for block in head.blocks:  # the residual branches start at zero: give them weights to compare
        torch.nn.init.normal_(block.c2.weight, std=0.1)
    got, want = head(emb), nchw(emb)
    assert torch.allclose(got, want, atol=1e-5)
    g1 = torch.autograd.grad(got.sum(), head.blocks[1].c1.weight)[0]
    g2 = torch.autograd.grad(nchw(emb).sum(), head.blocks[1].c1.weight)[0]
    assert torch.allclose(g1, g2, atol=1e-4)


# --------------------------------------------------------------------------- CLI end to end


def _cli(capsys, *args) -> tuple[int, str, str]:
    from protlm.cli.main import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_evaluate_predict_end_to_end(tiny_esm, tmp_path, capsys):
    data = tmp_path / "data"
    npz, full = _tiny_set(data / "coords_ca_cb.npz")
    fasta = tmp_path / "full.fasta"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in list(full.items())[-3:]) + ">novel\nMKTAYIAKQRQISFVKSHFSRQ\n")
    cfg = tmp_path / "pair.yaml"
    cfg.write_text(f"""name: tiny_pair
protocol: residue_pairs_to_class
embedder: {tiny_esm}
data: {{train_chains: 10, early_stop_chains: 3, eval_chains: 5, max_length: null, min_length: 10}}
head: {{type: pair_mlp, hidden: 16}}
train: {{epochs: 2, patience: 1, crop: 32, pair_budget: 2000, seed: 0}}
evaluate: {{n_boot: 200}}
""")
    head = tmp_path / "head"
    code, out, err = _cli(capsys, "contacts", "train", "--config", cfg, "--data", data, "--out", head, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["headline"]["name"] == "P@L/5, long (≥24)" and metrics["chains"] == 5
    assert "headline: P@L/5, long (≥24)" in err
    meta = json.loads((head / "head.json").read_text())
    assert meta["protocol"] == "residue_pairs_to_class" and meta["config"]["head"]["type"] == "pair_mlp"
    assert len(meta["protocol_state"]["data"]["train_ids"]) == 10 and len(meta["protocol_state"]["data"]["early_stop_ids"]) == 3
    # the engine keeps no label-protocol fields for a protocol that has none (issue 21 #2)
    assert "classes" not in meta and "normalisation" not in meta
    assert (head / "head.safetensors").is_file() and (head / "metrics.json").is_file()
    assert not list(head.glob(".*"))  # no temp files left behind

    code, out, err = _cli(capsys, "contacts", "evaluate", "--head", head, "--n-boot", 100, "--json")
    assert code == 0, err
    again = json.loads(out)
    # a reloaded head gives the same numbers on the same held-out chains
    assert again["per_protein"]["ids"] == metrics["per_protein"]["ids"]
    assert again["precision"]["long"]["L"]["mean"] == pytest.approx(metrics["precision"]["long"]["L"]["mean"])

    pred = tmp_path / "pred"
    code, out, err = _cli(capsys, "contacts", "predict", "--head", head, "--input", fasta, "--out", pred,
                          "--truth", npz, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["proteins"] == 4 and result["scored"] == 3
    for p in result["predictions"]:
        z = np.load(p["npz"], allow_pickle=False)
        assert z["probs"].shape == (p["length"], p["length"]) and np.allclose(z["probs"], z["probs"].T)
        assert Path(p["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if p["id"] != "novel":
            assert p["offset"] == int(z["offset"]) == int(p["id"][1:3]) % 4  # the tiny set's prefixes
            assert z["contacts"].shape[0] == p["length"] - p["offset"] - 2  # the stretch, without the 2-residue tail

    # the ESM-style attention regression on the same tiny model and data
    code, out, err = _cli(capsys, "contacts", "attention", "--model", tiny_esm, "--data", data, "--out",
                          tmp_path / "att", "--train-chains", 5, "--early-stop-chains", 2, "--eval-chains", 4,
                          "--max-length", 100, "--n-boot", 100, "--json")
    assert code == 0, err
    assert json.loads(out)["head"] == "attention_lr"
    code, out, err = _cli(capsys, "contacts", "predict", "--head", tmp_path / "att", "--input", fasta,
                          "--out", tmp_path / "pred_att", "--no-pictures")
    assert code == 0, err
    assert not list((tmp_path / "pred_att").glob("*.png"))
    # proteins over --max-residues are skipped and listed (exit 1), the others still predicted
    code, out, err = _cli(capsys, "contacts", "predict", "--head", tmp_path / "att", "--input", fasta,
                          "--out", tmp_path / "pred_short", "--no-pictures", "--max-residues", 30, "--json")
    result = json.loads(out)
    assert code == 1 and result["proteins"] == 1 and len(result["skipped"]) == 3
    assert "skipped c" in err


def test_resnet2d_trains_through_the_api(tiny_esm, tmp_path):
    from protlm.tasks.build import build_task_config
    from protlm.tasks.train import evaluate, load_head, train

    data = tmp_path / "data"
    _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=8)
    config = {"name": "tiny_resnet", "protocol": "residue_pairs_to_class", "embedder": str(tiny_esm),
              "data": {"train_chains": 6, "early_stop_chains": 2, "eval_chains": 3, "max_length": None},
              "head": {"type": "resnet2d", "proj": 4, "channels": 6, "blocks": 2},
              "train": {"epochs": 1, "crop": 24, "seed": 0}, "evaluate": {"n_boot": 50}}
    metrics = train(build_task_config(config), tmp_path / "head", data)["test"]["held_out_valid"]["contacts"]
    assert metrics["chains"] == 3
    head = load_head(tmp_path / "head")
    assert head.config.head.type == "resnet2d"
    sets = head.protocol.evaluation_sets(head, {"split": "validation", "max_chains": 3}, data)
    again = evaluate(head, sets, n_boot=50)["held_out_valid"]["contacts"]
    assert again["per_protein"]["ids"] == metrics["per_protein"]["ids"]  # a cap of 3: training's 3 of 6 chains
    assert again["precision"]["all"]["L"]["mean"] == pytest.approx(metrics["precision"]["all"]["L"]["mean"])
    torch.randn(100)  # a different global RNG state must not change the result: the seed fixes it
    train(build_task_config(config), tmp_path / "head2", data)
    a = json.loads((tmp_path / "head" / "head.json").read_text())["history"]
    b = json.loads((tmp_path / "head2" / "head.json").read_text())["history"]
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in b]


@pytest.mark.parametrize("args, message", [
    (["contacts", "train", "--config", "{tmp}/missing.yaml"], "no such file"),
    (["contacts", "train", "--config", "{tmp}/bad_head.yaml"], "head.type"),
    (["contacts", "train", "--config", "{tmp}/bad_key.yaml"], "train.epoch: unknown field"),
    (["contacts", "predict", "--head", "{tmp}", "--input", "{tmp}/bad_head.yaml", "--out", "{tmp}/o"], "no head.json"),
    (["contacts", "predict", "--head", "{tmp}", "--input", "{tmp}/nothing.fa", "--out", "{tmp}/o"], "no such file"),
    (["contacts", "attention", "--model", "{tmp}/nomodel", "--data", "{tmp}", "--out", "{tmp}/o"], "no such file"),
    (["contacts", "evaluate", "--head", "{tmp}/nohead"], "no head.json"),
])
def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "bad_head.yaml").write_text("embedder: onehot\nhead: {type: transformer}\n")
    (tmp_path / "bad_key.yaml").write_text("embedder: onehot\nhead: {type: pair_mlp}\ntrain: {epoch: 3}\n")
    code, out, err = _cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("protlm: error: ") and message in lines[0], err


def test_chance_level_is_the_contact_density_per_range():
    from protlm.tasks.contacts.metrics import chance_levels

    c = np.zeros((30, 30), dtype=bool)
    c[0, 24] = c[24, 0] = True  # one of the long-range candidates: (30-24)(30-23)/2 = 21 pairs
    levels = chance_levels([c])
    assert levels["long"] == pytest.approx(1 / 21) and levels["short"] == 0.0


def test_paired_difference_on_shared_proteins():
    """The suite's paired difference for contacts: the protocol's per-protein P@L/5 long values and
    its statistic (mean over proteins with candidates), resampled with the one bootstrap."""
    from protlm.tasks.metrics import bootstrap_ci
    from protlm.tasks.protocols import get_protocol

    proto = get_protocol("residue_pairs_to_class")
    rng = np.random.default_rng(0)
    xyz = np.stack([np.arange(40) * 10.0, np.zeros(40), np.zeros(40)], axis=1).astype(np.float32)
    xyz[30] = [0.0, 5.0, 0.0]  # residue 30 folds back onto residue 0: the one long-range contact
    chains = [Chain(f"p{k}", "A" * 40, xyz, xyz) for k in range(12)]
    truth = contact_map(xyz, xyz)[0]
    good = [truth.astype(float) for _ in chains]  # ranks the contact first
    bad = [rng.random((40, 40)) * 0.5 for _ in chains]

    class Cfg:
        class data:
            threshold = 8.0

    n, va = proto.per_protein(Cfg, good, chains, 0)
    _, vb = proto.per_protein(Cfg, bad, chains, 0)
    everything = np.arange(n)
    assert n == 12 and proto.statistic(va, everything) == pytest.approx(1 / 8)  # 1 of the top L/5 = 8 pairs
    diff = proto.statistic(va, everything) - proto.statistic(vb, everything)
    lo, hi = bootstrap_ci(lambda i: proto.statistic(va, i) - proto.statistic(vb, i), n, n_boot=200)
    assert diff > 0 and lo > 0


def test_benchmark_suite_table_comparisons_and_reuse(tiny_esm, tmp_path, capsys):
    """Contact configs run in the one suite (chosen by protocol:, not by file name), with paired
    differences between embedders on the same chains, and are reused when rerun."""
    from protlm.tasks.suite import run_suite

    data = tmp_path / "data"
    _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=7)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pairs.yaml").write_text(
        "name: lm\nprotocol: residue_pairs_to_class\nembedder: onehot\n"
        "data: {train_chains: 6, early_stop_chains: 2, eval_chains: 5, max_length: null}\n"
        "head: {type: pair_mlp, hidden: 8}\ntrain: {epochs: 1, crop: 32}\nevaluate: {n_boot: 50}\n")
    lm = str(tiny_esm)
    result = run_suite(suite, [lm, "onehot"], tmp_path / "out", data, compare=[f"{lm}:onehot"])
    assert [r["embedder"] for r in result["results"]] == [lm, "onehot"]
    (diff,) = result["paired_differences"]
    by = {r["embedder"]: r["test"]["held_out_valid"]["contacts"]["headline"]["value"] for r in result["results"]}
    assert diff["difference"] == pytest.approx(by[lm] - by["onehot"], abs=1e-9) and diff["proteins"] == 5
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| lm | contacts | test: held_out_valid | pair_mlp | P@L/5 long, n=5 |" in md and "Paired differences" in md
    metrics_file = next((tmp_path / "out" / "pairs").glob("onehot*/metrics.json"))
    stamp = metrics_file.stat().st_mtime_ns
    again = run_suite(suite, [lm, "onehot"], tmp_path / "out", data)
    assert metrics_file.stat().st_mtime_ns == stamp  # reused, not retrained
    assert again["results"][1]["test"] == result["results"][1]["test"]


def test_suite_scores_a_structure_set_of_ones_own_with_extra_test(tmp_path, capsys):
    """``--extra-test TASK:NAME=SET.npz:npz`` scores a structure set of one's own with the suite's
    contact heads (every chain, each its own sequence), with paired differences over its chains,
    and without retraining a finished head; a wrong format or option is one line, exit 2."""
    from protlm.cli.main import main

    data = tmp_path / "data"
    _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=7)
    own, _ = _own_set(tmp_path / "mine.npz", n=6)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pairs.yaml").write_text(
        "name: pairs\nprotocol: residue_pairs_to_class\nembedder: onehot\n"
        "data: {train_chains: 6, early_stop_chains: 2, eval_chains: 5, max_length: null}\n"
        "head: {type: pair_mlp, hidden: 8}\ntrain: {epochs: 1, crop: 32}\nevaluate: {n_boot: 50}\n")
    base = ["benchmark", "--suite", str(suite), "--embedder", "onehot", "--embedder", "blosum62", "--data", str(data),
            "--out", str(tmp_path / "out"), "--no-cache"]
    assert main(base) == 0, capsys.readouterr().err
    metrics_file = next((tmp_path / "out" / "pairs").glob("onehot*/metrics.json"))
    assert "mine" not in json.loads(metrics_file.read_text())["test"]
    weights = metrics_file.parent / "head.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert main([*base, "--extra-test", f"pairs:mine={own}:npz", "--compare", "onehot:blosum62"]) == 0, \
        capsys.readouterr().err
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    by = {r["embedder"]: r["test"] for r in doc["results"]}
    assert by["onehot"]["mine"]["contacts"]["chains"] == 6  # every chain of the set
    assert by["onehot"]["held_out_valid"]["contacts"]["chains"] == 5
    diffs = {d["set"]: d for d in doc["paired_differences"]}
    assert set(diffs) == {"held_out_valid", "mine"} and diffs["mine"]["proteins"] == 6
    assert weights.stat().st_mtime_ns == stamp  # the finished head scored the new set; it was not retrained
    assert set(json.loads((metrics_file.parent / "per_protein.json").read_text())["sets"]) == {"held_out_valid", "mine"}
    for extra, message in ((f"pairs:mine={own}:csv", "format npz, not 'csv'"),
                           (f"pairs:held_out_valid={own}:npz", "held-out validation chains' name"),
                           (f"pairs:mine={own}:npz:label_column=y", "one option, full_sequences=FASTA"),
                           (f"pairs:whole={own}:npz:full_sequences={tmp_path / 'none.fasta'}", "none.fasta: no such")):
        capsys.readouterr()
        assert main([*base, "--extra-test", extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    # full_sequences=FASTA: the model reads each chain's whole sequence (the stretch located in it),
    # as it does for the shared set; the set's selection says so
    own_seqs = {c.id: c.seq for c in load_chains(own, None)}
    fasta = tmp_path / "whole.fasta"
    fasta.write_text("".join(f">{k} a longer protein\nMKTW{s}GGH\n" for k, s in own_seqs.items()))
    assert main([*base, "--extra-test", f"pairs:whole={own}:npz:full_sequences={fasta}"]) == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    whole = {r["embedder"]: r["test"]["whole"]["contacts"] for r in doc["results"]}
    assert whole["onehot"]["chains"] == 6
    assert weights.stat().st_mtime_ns == stamp
    from protlm.tasks.train import load_head
    head = load_head(metrics_file.parent)
    head.config.data.test = {"whole": {"file": str(own), "full_sequences": str(fasta)}, "mine": str(own)}
    sets = head.protocol.test_sets(head, ["whole", "mine"], data)
    assert [c.model_input for c in sets["whole"]] == [f"MKTW{s}GGH" for s in own_seqs.values()]
    assert [c.offset for c in sets["whole"]] == [4] * 6 and [c.seq for c in sets["whole"]] == list(own_seqs.values())
    assert [c.model_input for c in sets["mine"]] == list(own_seqs.values())
    assert "whole sequences of" in sets["whole"].selection["limits"]


@pytest.mark.parametrize("arch, vocab, prefix", [("bert", "protbert", 1), ("t5", "prott5", 0), ("causal", "esm", 1)])
def test_attention_maps_for_other_families(tmp_path, arch, vocab, prefix):
    """ProtBert ([CLS] … [SEP]), the ProtT5 encoder (… </s>) and causal models: residue rows only."""
    import transformers

    from protlm.tasks.contacts.attention import attention_maps, load_lm
    from protlm.models.architectures import ModelSpec, build_model
    from protlm.models.vocab import build_tokenizer

    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch, preset="tiny", max_positions=1024), attn_implementation="eager")
    if arch == "t5":
        enc = transformers.T5EncoderModel(model.config)
        enc.load_state_dict(model.state_dict(), strict=False)
        model = enc
    model.save_pretrained(tmp_path)
    build_tokenizer(vocab).save_pretrained(tmp_path)
    lm = load_lm(str(tmp_path))
    seq = "MKTAYIAKQRQISFV"
    maps = attention_maps(lm, seq)
    assert maps.shape == (lm.n_maps, len(seq), len(seq))
    ids = lm.layout.encode(seq)
    with torch.inference_mode():
        out = lm.model(input_ids=torch.from_numpy(ids)[None], output_attentions=True)
    full = torch.cat([a[0] for a in out.attentions]).numpy()
    assert np.allclose(maps, full[:, prefix:prefix + len(seq), prefix:prefix + len(seq)], atol=1e-6)
    if arch == "causal":
        assert np.allclose(np.triu(maps[0], 1), 0)  # one-sided: symmetrising makes it a map


def test_suite_skips_an_embedder_that_does_not_fit_the_head(tiny_esm, tmp_path):
    """attention_lr reads attention maps: a baseline embedder given to the whole suite is skipped
    and listed, not a crash; the LM runs."""
    from protlm.tasks.suite import run_suite

    data = tmp_path / "data"
    _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=7)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "att.yaml").write_text(
        "name: att\nprotocol: residue_pairs_to_class\nembedder: onehot\n"
        "data: {train_chains: 4, early_stop_chains: 2, eval_chains: 4, max_length: null}\n"
        "head: {type: attention_lr}\nevaluate: {n_boot: 20}\n".replace("embedder: onehot", f"embedder: {tiny_esm}"))
    res = run_suite(suite, [str(tiny_esm), "onehot"], tmp_path / "out", data)
    assert [r["embedder"] for r in res["results"]] == [str(tiny_esm)]
    assert res["skipped"][0]["embedder"] == "onehot" and "attention_lr needs" in res["skipped"][0]["reason"]
    assert "Not run" in (tmp_path / "out" / "results.md").read_text()


def test_a_contact_head_folder_from_before_0_4_is_read(tmp_path):
    """Contact heads written by protlm 0.3 (their own head.json schema, protocol residues_to_class)
    load into the one format and predict exactly what the same weights predict."""
    from protlm.tasks.build import build_task_config
    from protlm.tasks.train import load_head, predict_file, train

    data = tmp_path / "data"
    _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=6)
    config = {"name": "tiny_pair", "protocol": "residue_pairs_to_class", "embedder": "onehot",
              "data": {"train_chains": 6, "early_stop_chains": 2, "eval_chains": 3, "max_length": None},
              "head": {"type": "pair_mlp", "hidden": 8},
              "train": {"epochs": 1, "crop": 24, "pair_budget": 2000, "seed": 0}, "evaluate": {"n_boot": 10}}
    train(build_task_config(config), tmp_path / "new", data)
    new = json.loads((tmp_path / "new" / "head.json").read_text())
    old = tmp_path / "old"
    old.mkdir()
    (old / "head.safetensors").write_bytes((tmp_path / "new" / "head.safetensors").read_bytes())
    old_config = {**new["config"], "protocol": "residues_to_class"}
    (old / "head.json").write_text(json.dumps({
        "protocol": "residues_to_class", "task": "contact prediction", "protlm_version": "0.3.0", "name": "tiny_pair",
        "embedder": "onehot", "embedder_seed": 0, "head": new["config"]["head"], "input_dim": new["dim"],
        "data": new["protocol_state"]["data"], "config": old_config, "training": {"history": new["history"]}}))
    head = load_head(old)
    assert head.config.protocol == "residue_pairs_to_class" and head.dim == 21
    seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQ"]
    a = predict_file(head, ["q"], seqs, tmp_path / "pa", {"no_pictures": True})
    b = predict_file(load_head(tmp_path / "new"), ["q"], seqs, tmp_path / "pb", {"no_pictures": True})
    assert np.array_equal(np.load(a["predictions"][0]["npz"])["probs"], np.load(b["predictions"][0]["npz"])["probs"])


def test_contacts_read_an_hdf5_embedder_and_the_feature_cache(tmp_path):
    """Contact heads take an HDF5 file of per-residue embeddings of the full sequences (keyed by
    chain id) and give the numbers of the embedder that made it; a cached run gives them again."""
    import h5py

    from protlm.embed import Embedder
    from protlm.tasks.build import build_task_config
    from protlm.tasks.train import train

    data = tmp_path / "data"
    _, full = _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=6)
    h5 = tmp_path / "onehot.h5"
    emb = Embedder("onehot")
    with h5py.File(h5, "w") as f:
        f.attrs["level"] = "residue"
        for cid, seq in full.items():
            f.create_dataset(cid, data=emb.embed([seq])[0])
    fasta = tmp_path / "full.fasta"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in full.items()))
    config = {"name": "h5_pair", "protocol": "residue_pairs_to_class", "embedder": "onehot",
              "data": {"train_chains": 6, "early_stop_chains": 2, "eval_chains": 3, "max_length": None,
                       "full_sequences": str(fasta)},  # the embedder reads whole sequences, cut to the stretch
              "head": {"type": "pair_mlp", "hidden": 8},
              "train": {"epochs": 2, "crop": 24, "pair_budget": 2000, "seed": 0}, "evaluate": {"n_boot": 20}}
    cache = tmp_path / "cache"
    direct = train(build_task_config(config), tmp_path / "a", data, cache_dir=cache)
    cached = train(build_task_config(config), tmp_path / "b", data, cache_dir=cache)
    from_file = train(build_task_config({**config, "embedder": str(h5)}), tmp_path / "c", data)
    assert list(cache.iterdir())  # the embeddings went to the cache
    numbers = [r["test"]["held_out_valid"]["contacts"]["precision"] for r in (direct, cached, from_file)]
    assert numbers[0] == numbers[1] == numbers[2]
    assert from_file["embedder_identity"]["kind"] == "hdf5"


def test_evaluation_scores_every_chain_unless_capped_and_lists_what_it_drops(tmp_path, monkeypatch, capsys):
    """Training's limits (a seeded sample, a length cap) stay training's: evaluate scores the whole
    set, and a cap or a length limit asked for is reported with the chains it concerns."""
    from protlm.tasks.build import build_task_config
    from protlm.tasks.train import evaluate, load_head, train

    data = tmp_path / "data"
    _, full = _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=9)
    (tmp_path / "full.fasta").write_text("".join(f">{k}\n{v}\n" for k, v in full.items()))
    monkeypatch.chdir(tmp_path)
    config = {"name": "sel", "protocol": "residue_pairs_to_class", "embedder": "onehot",
              "data": {"train_chains": 6, "early_stop_chains": 2, "eval_chains": 3, "max_length": 55,
                       "full_sequences": "full.fasta"},  # relative to the working directory at training
              "head": {"type": "pair_mlp", "hidden": 8},
              "train": {"epochs": 1, "crop": 24, "pair_budget": 2000, "seed": 0}, "evaluate": {"n_boot": 0}}
    trained = train(build_task_config(config), tmp_path / "head", data)["test"]["held_out_valid"]["contacts"]
    assert trained["chains"] == 3 and "data.eval_chains = 3" in trained["selection"]["limits"]
    head = load_head(tmp_path / "head")
    assert head.state["data"]["full_sequences"] == str((tmp_path / "full.fasta").resolve())
    monkeypatch.chdir(tmp_path / "data")  # another working directory: the recorded path still works

    every = head.protocol.evaluation_sets(head, {}, None)["held_out_valid"]
    early = set(head.state["data"]["early_stop_ids"])
    valid = [c for c in load_chains(data, "valid")]
    assert sorted(c.id for c in every) == sorted(c.id for c in valid if c.id not in early)  # all 7, any length
    assert any(len(c.model_input) > 55 for c in every)
    assert every.selection["sample"] is None and every.selection["dropped"] == []
    res = evaluate(head, {"held_out_valid": every}, n_boot=0)["held_out_valid"]["contacts"]
    assert res["chains"] == 7 and res["selection"]["scored_chains"] == 7

    capped = head.protocol.evaluation_sets(head, {"max_chains": 3, "max_length": 55}, None)["held_out_valid"]
    assert [c.id for c in capped] == trained["per_protein"]["ids"]  # training's limits: the chains it reported
    assert capped.selection["sample"] == {"max_chains": 3, "seed": 1, "ids": [c.id for c in capped],
                                          "how": capped.selection["sample"]["how"]}
    short = head.protocol.evaluation_sets(head, {"max_length": 50}, None)["held_out_valid"]
    dropped = {d["id"]: d for d in short.selection["dropped"]}
    assert dropped and set(dropped) == {c.id for c in every if len(c.model_input) > 50}
    assert all(d["length"] > 50 and "--max-length 50" in d["reason"] for d in dropped.values())
    res = evaluate(head, {"held_out_valid": short}, n_boot=0)["held_out_valid"]["contacts"]
    from protlm.tasks.contacts.metrics import format_table

    text = format_table(res)
    assert f"chains scored: {len(short)} of the set's 7" in text
    assert all(f"dropped {pid} ({d['length']} residues)" in text for pid, d in dropped.items())

    (tmp_path / "full.fasta").rename(tmp_path / "moved.fasta")
    with pytest.raises(InputError, match=r"recorded when the head was trained, .*full.fasta, is gone; give it again "
                                         r"with --full-sequences"):
        head.protocol.evaluation_sets(head, {}, None)
    again = head.protocol.evaluation_sets(head, {"full_sequences": str(tmp_path / "moved.fasta")}, None)
    assert [c.model_input for c in again["held_out_valid"]] == [c.model_input for c in every]


# --------------------------------------------------------------------------- a structure set of one's own


def _own_set(path: Path, n: int = 5, seed: int = 3) -> tuple[Path, dict[str, str]]:
    """The docs' recipe: ids, one sequence string per chain, CA and CB stacked (NaN CB: glycine)."""
    rng = np.random.default_rng(seed)
    ids = [f"mine{k}" for k in range(n)]
    seqs = ["".join(rng.choice(list(AA), int(rng.integers(35, 50)))) for _ in ids]
    walks = [_walk(len(s), rng) for s in seqs]
    ca = np.concatenate([w[0] for w in walks])
    cb = np.concatenate([w[1] for w in walks])
    cb[[0, 7]] = np.nan  # CA stands in
    np.savez(path, ids=np.array(ids), seq=np.array(seqs), CA=ca, CB=cb)
    return path, dict(zip(ids, seqs))


def test_a_structure_set_of_ones_own_is_evaluated_and_used_as_truth(tmp_path, capsys):
    from protlm.tasks.build import build_task_config
    from protlm.tasks.train import evaluate, load_head, train

    data = tmp_path / "data"
    _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=5)
    config = {"name": "own", "protocol": "residue_pairs_to_class", "embedder": "onehot",
              "data": {"train_chains": 6, "early_stop_chains": 2, "eval_chains": 3, "max_length": None},
              "head": {"type": "pair_mlp", "hidden": 8},
              "train": {"epochs": 1, "crop": 24, "pair_budget": 2000, "seed": 0}, "evaluate": {"n_boot": 0}}
    train(build_task_config(config), tmp_path / "head", data)
    own, seqs = _own_set(tmp_path / "mine.npz")
    chains = load_chains(own, None)
    assert [c.id for c in chains] == list(seqs) and [c.seq for c in chains] == list(seqs.values())
    assert np.array_equal(chains[0].cb[0], chains[0].ca[0]) is False and np.isnan(chains[0].cb[0]).all()
    head = load_head(tmp_path / "head")
    sets = head.protocol.evaluation_sets(head, {"file": str(own)}, data)
    assert list(sets) == ["mine"] and len(sets["mine"]) == 5
    res = evaluate(head, sets, n_boot=0)["mine"]["contacts"]
    assert res["chains"] == 5 and res["per_protein"]["ids"] == list(seqs)
    # --data naming the file (no split array) means the same set
    assert [c.id for c in head.protocol.evaluation_sets(head, {}, own)["mine"]] == list(seqs)

    fasta = tmp_path / "q.fasta"
    fasta.write_text("".join(f">{k}\n{'MK' + v}\n" for k, v in list(seqs.items())[:2]))
    code, out, err = _cli(capsys, "contacts", "predict", "--head", tmp_path / "head", "--input", fasta, "--out",
                          tmp_path / "pred", "--truth", own, "--no-pictures", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["scored"] == 2 and all(p["offset"] == 2 for p in result["predictions"])


def _bad(path: Path, **change) -> Path:
    rng = np.random.default_rng(0)
    ca, cb = _walk(20, rng)
    arrays = {"ids": np.array(["a", "b"]), "seq": np.array(["A" * 12, "C" * 8]), "CA": ca, "CB": cb}
    for k, v in change.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change, message", [
    ({"CB": None}, "missing array CB"),
    ({"ids": None, "seq": None}, "missing arrays ids, seq"),
    ({"CA": np.zeros((19, 3), np.float32)}, "CA has 19 rows, the chains have 20 residues"),
    ({"CB": np.zeros((20, 2), np.float32)}, r"CB must be a float array of shape \(residues, 3\)"),
    ({"ids": np.array(["a", "b", "c"])}, "missing array lengths"),
    ({"ids": np.array(["a", "a"])}, "'a' occurs more than once"),
    ({"lengths": np.array([10, 10])}, "lengths disagree with the lengths of the seq strings"),
    ({"seq": np.frombuffer(b"A" * 20, dtype="S1"), "lengths": np.array([12, 9])}, "lengths"),
    ({"CA": None, "CB": np.where(np.arange(20)[:, None] == 14, np.nan, 1.0).repeat(3, 1).astype(np.float32)},
     "CB is NaN at chain 'b' residue 3 and the file has no CA"),
    # issue 24 #7: an infinite coordinate was scored as an observed residue with no contacts
    ({"CB": np.where(np.arange(20)[:, None] == 13, np.inf, 1.0).repeat(3, 1).astype(np.float32)},
     "bad.npz: CB is infinite at chain 'b' residue 2"),
    ({"CA": np.where(np.arange(20)[:, None] == 0, -np.inf, 1.0).repeat(3, 1).astype(np.float32)},
     "CA is infinite at chain 'a' residue 1"),
    ({"seq": np.array(["A" * 12, "CC-CCCCC"])}, "bad.npz: seq of chain 'b' has '-' at residue 3"),
])
def test_structure_set_errors_are_one_line(tmp_path, change, message):
    path = _bad(tmp_path / "bad.npz", **change)
    with pytest.raises(InputError, match=message) as e:
        load_chains(path, None)
    assert "\n" not in str(e.value)


def test_structure_set_of_bytes_per_residue_and_the_shared_layout_read_alike(tmp_path):
    rng = np.random.default_rng(1)
    ca, cb = _walk(20, rng)
    np.savez(tmp_path / "a.npz", ids=np.array(["a", "b"]), seq=np.array(["A" * 12, "C" * 8]), CA=ca, CB=cb)
    np.savez(tmp_path / "b.npz", ids=np.array(["a", "b"]), seq=np.frombuffer(b"A" * 12 + b"C" * 8, dtype="S1"),
             lengths=np.array([12, 8]), CB=cb)  # no NaN in CB: CA may be left out
    write_chains(tmp_path / "c.npz", [Chain("a", "A" * 12, ca[:12], cb[:12], split="valid"),
                                      Chain("b", "C" * 8, ca[12:], cb[12:], split="valid")])
    got = [load_chains(tmp_path / f"{x}.npz", None) for x in "abc"]
    for chains in got:
        assert [(c.id, c.seq) for c in chains] == [("a", "A" * 12), ("b", "C" * 8)]
        assert np.array_equal(chains[1].cb, cb[12:])


def test_a_configs_own_data_path_wins_over_the_default_data_root(tiny_esm, tmp_path, monkeypatch, capsys):
    """``protlm train`` without --data: a contact config's ``data.path`` is read, not the default
    data root (which holds another contacts set here); an explicit --data still overrides it."""
    mine, other = tmp_path / "mine", tmp_path / "root"
    _tiny_set(mine / "coords_ca_cb.npz", n_train=6, n_valid=6, seed=0)
    _tiny_set(other / "contacts" / "coords_ca_cb.npz", n_train=6, n_valid=6, seed=7)
    monkeypatch.setenv("PROTLM_DATA", str(other))
    cfg = tmp_path / "pair.yaml"
    cfg.write_text(f"""name: own_path
protocol: residue_pairs_to_class
embedder: {tiny_esm}
data: {{path: {mine}, train_chains: 4, early_stop_chains: 2, eval_chains: 3, max_length: null, min_length: 10}}
head: {{type: pair_mlp, hidden: 8}}
train: {{epochs: 1, patience: 1, crop: 32, pair_budget: 500, seed: 0}}
evaluate: {{n_boot: 50}}
""")
    code, _, err = _cli(capsys, "train", "--config", cfg, "--out", tmp_path / "a", "--no-cache")
    assert code == 0, err
    used = json.loads((tmp_path / "a" / "head.json").read_text())["protocol_state"]["data"]["npz"]
    assert Path(used) == (mine / "coords_ca_cb.npz").resolve()
    code, _, err = _cli(capsys, "train", "--config", cfg, "--out", tmp_path / "b", "--no-cache", "--data", other)
    assert code == 0, err
    used = json.loads((tmp_path / "b" / "head.json").read_text())["protocol_state"]["data"]["npz"]
    assert Path(used) == (other / "contacts" / "coords_ca_cb.npz").resolve()


def test_attention_heads_list_chains_over_the_position_limit_instead_of_failing(tmp_path):
    """An attention_lr head on an LM with absolute positions: evaluation chains longer than its
    limit are dropped and listed (id, length, why), the others scored; a training set holding
    one is refused with the config field to change."""
    from protlm.models.architectures import ModelSpec, build_model
    from protlm.models.vocab import build_tokenizer
    from protlm.tasks.build import build_task_config
    from protlm.tasks.train import evaluate, load_head, train

    lm = tmp_path / "bert52"
    torch.manual_seed(0)
    build_model(ModelSpec(arch="bert", preset="tiny", max_positions=52)).save_pretrained(lm)
    build_tokenizer("protbert").save_pretrained(lm)  # 50 residues + [CLS] + [SEP]
    data = tmp_path / "data"
    _tiny_set(data / "coords_ca_cb.npz", n_train=8, n_valid=10)
    config = {"name": "att", "protocol": "residue_pairs_to_class", "embedder": str(lm),
              "data": {"train_chains": 4, "early_stop_chains": 2, "eval_chains": 3, "max_length": 50},
              "head": {"type": "attention_lr"}, "evaluate": {"n_boot": 0}}
    train(build_task_config(config), tmp_path / "head", data)
    head = load_head(tmp_path / "head")
    every = head.protocol.evaluation_sets(head, {}, None)["held_out_valid"]
    over = {c.id: len(c.model_input) for c in every if len(c.model_input) > 50}
    assert over and len(over) < len(every)
    n_before = len(every)
    res = evaluate(head, {"held_out_valid": every}, n_boot=0)["held_out_valid"]["contacts"]
    dropped = {d["id"]: d for d in res["selection"]["dropped"]}
    assert {k: d["length"] for k, d in dropped.items()} == over
    assert all("position limit (50)" in d["reason"] for d in dropped.values())
    assert res["chains"] == res["selection"]["scored_chains"] == len(every) == n_before - len(over)
    assert all(len(c.model_input) <= 50 for c in every)

    config["data"]["max_length"] = None
    with pytest.raises(ConfigError, match="longer than the LM's position limit .50.*data.max_length <= 50"):
        train(build_task_config(config), tmp_path / "head2", data)


def test_train_max_train_caps_the_training_chains_too(tmp_path):
    """``train.max_train`` (the suite-wide cap) caps a contact config's training chains as it caps
    proteins elsewhere: the smaller of it and data.train_chains."""
    from protlm.tasks.build import build_task_config

    data = tmp_path / "data"
    _tiny_set(data / "coords_ca_cb.npz", n_train=8, n_valid=6)
    tree = {"name": "cap", "protocol": "residue_pairs_to_class", "embedder": "onehot",
            "data": {"train_chains": 6, "early_stop_chains": 2, "eval_chains": 3, "max_length": None},
            "head": {"type": "pair_mlp", "hidden": 8}}
    config = build_task_config(tree)
    assert len(config.protocol_obj.load_data(config, data).train) == 6
    config = build_task_config({**tree, "train": {"max_train": 3}})
    capped = config.protocol_obj.load_data(config, data).train
    assert len(capped) == 3


def test_a_full_sequence_that_does_not_hold_the_chain_names_file_and_chain(tmp_path):
    path = _bad(tmp_path / "set.npz")
    with pytest.raises(InputError, match=r"set.npz: chain 'b': the structure's residues are not a stretch"):
        load_chains(path, None, full_sequences={"a": "M" + "A" * 12, "b": "MKW"})
    with pytest.raises(InputError, match=r"set.npz: no full sequence for chain 'b'"):
        load_chains(path, None, full_sequences={"a": "A" * 12})


def test_compare_two_contact_heads_on_a_set_of_ones_own(tmp_path, capsys):
    """Issue 24 #19: two contact heads on a new structure set: the paired P@L/5 difference with its
    CI and each chain's values, without a script."""
    import csv as csv_module

    from protlm.tasks.build import build_task_config
    from protlm.tasks.train import train

    data = tmp_path / "data"
    _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=5)
    for emb in ("onehot", "blosum62"):
        config = {"name": emb, "protocol": "residue_pairs_to_class", "embedder": emb,
                  "data": {"train_chains": 6, "early_stop_chains": 2, "eval_chains": 3, "max_length": None},
                  "head": {"type": "pair_mlp", "hidden": 8},
                  "train": {"epochs": 1, "crop": 24, "pair_budget": 2000, "seed": 0}, "evaluate": {"n_boot": 0}}
        train(build_task_config(config), tmp_path / emb, data)
    own, seqs = _own_set(tmp_path / "mine.npz")
    code, out, err = _cli(capsys, "compare", "--head", tmp_path / "onehot", "--head", tmp_path / "blosum62",
                          "--file", own, "--per-protein", tmp_path / "per.csv", "--json", "--bootstrap", "100")
    assert code == 0, err
    (row,) = json.loads(out)["differences"]
    assert row["set"] == "mine" and row["proteins"] == 5 and row["metric"].startswith("P@L/5")
    rows = list(csv_module.DictReader((tmp_path / "per.csv").open()))
    assert [r["id"] for r in rows] == list(seqs)
    mean = lambda key: np.nanmean([float(r[key]) for r in rows])  # noqa: E731
    assert row["difference"] == pytest.approx(mean("p_at_l5_long_A") - mean("p_at_l5_long_B"))


def test_a_pair_head_must_declare_the_pair_interface():
    """Issue 21 #2: the contact protocol called pair heads by duck typing (a missing method failed
    mid-training); a pair-level head that does not subclass PairHead/FittedPairHead is one line."""
    from dataclasses import dataclass

    from torch import nn

    from protlm.errors import ConfigError
    from protlm.tasks.build import load_task_config
    from protlm.tasks.heads import HeadConfig, register_head

    @dataclass
    class Config(HeadConfig):
        type: str = "toy_plain_pair"

    @register_head("toy_plain_pair", config=Config, levels=("pair",), input="residues")
    def build(cfg, dim, outputs, level):
        return nn.Linear(dim, 1)

    cfg = load_task_config(data={"name": "t", "protocol": "residue_pairs_to_class", "embedder": "onehot",
                                 "head": {"type": "toy_plain_pair"}})
    with pytest.raises(ConfigError, match="subclasses protlm.tasks.heads.PairHead"):
        cfg.protocol_obj.new_head(cfg, 21, {})
    assert cfg.protocol_obj.new_head(load_task_config(data={"name": "t", "protocol": "residue_pairs_to_class",
                                                           "embedder": "onehot", "head": {"type": "pair_mlp"}}),
                                     21, {}) is not None


# --------------------------------------------------------------------------- fine-tuning the LM with a pair head


@pytest.mark.parametrize("method,head", [("full", "pair_mlp"), ("lora", "pair_mlp"), ("full", "resnet2d")])
def test_the_lm_trains_with_a_pair_head_as_proteinlm_fine_tunes_contacts(tiny_esm, tmp_path, method, head):
    """``residue_pairs_to_class`` with ``finetune:`` trains the LM with the pair head (ProteinLM's
    token-pair fine-tuning): the LM reads each crop of the chain's input sequence, the BCE on its
    pairs reaches the LM's weights (full: the LM's layers move; LoRA: only the adapter), and the
    saved head + LM reproduce training's scores through the frozen path."""
    from protlm.embed import EmbedOptions
    from protlm.embed.registry import resolve
    from protlm.tasks.build import build_task_config
    from protlm.tasks.train import evaluate, load_head, train

    data = tmp_path / "data"
    _, full = _tiny_set(data / "coords_ca_cb.npz", n_train=6, n_valid=7)
    fasta = tmp_path / "full.fasta"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in full.items()))
    hp = {"type": head, "hidden": 8} if head == "pair_mlp" else {"type": head, "proj": 8, "channels": 8, "blocks": 1}
    cfg = build_task_config({
        "name": "ft_pairs", "protocol": "residue_pairs_to_class", "embedder": str(tiny_esm),
        "data": {"path": str(data), "full_sequences": str(fasta), "train_chains": 6, "early_stop_chains": 2,
                 "eval_chains": 5, "max_length": None},
        "head": hp, "train": {"epochs": 2, "crop": 32, "patience": 5, "bootstrap": 20},
        "finetune": {"method": method, "lr": 1e-3}})
    out = tmp_path / "head"
    res = train(cfg, out, data)
    info = json.loads((out / "head.json").read_text())
    assert info["finetune"]["method"] == method and len(info["history"]) == 2
    assert all(h["optimizer_steps"] > 0 for h in info["history"])
    cpu = EmbedOptions(device="cpu")
    base = resolve(str(tiny_esm), cpu).module.state_dict()
    tuned = resolve(str(out / "lm"), cpu).module.state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    if method == "full":
        assert any(".layer.0." in k for k in changed) and any(".layer.1." in k for k in changed), sorted(changed)
    else:
        assert (out / "lm" / "adapter_config.json").is_file()
        assert changed and all(k.endswith(".weight") and (".attention." in k) for k in changed), sorted(changed)
    saved = load_head(out)
    again = evaluate(saved, saved.protocol.evaluation_sets(saved, {"max_length": None}, data), n_boot=20)
    assert again["held_out_valid"]["contacts"]["headline"]["value"] == pytest.approx(
        res["test"]["held_out_valid"]["contacts"]["headline"]["value"])


def test_fine_tuning_an_attention_head_is_refused(tiny_esm, tmp_path):
    from protlm.tasks.build import build_task_config

    with pytest.raises(ConfigError, match="finetune.method: an attention-map head reads no embeddings"):
        build_task_config({"name": "x", "protocol": "residue_pairs_to_class", "embedder": str(tiny_esm),
                           "head": {"type": "attention_lr"}, "finetune": {"method": "full"}})


def test_a_structure_set_of_ones_own_rewritten_in_place_trains_the_contact_head_again(tmp_path, monkeypatch):
    """A contact config whose ``data.path`` is one's own structure set: the suite reuses the head
    while the file is unchanged and trains it again once the file is rewritten at the same path
    (its content is in the head's digest; a resume refuses it). Files of the benchmark data folder
    (``--data``) are left out, so contact heads trained on the shared set keep their digests."""
    from protlm.tasks.build import load_task_config
    from protlm.tasks.suite import head_digest, run_suite

    monkeypatch.setenv("PROTLM_DATA", str(tmp_path / "benchmark-data"))
    own = tmp_path / "mine" / "coords_ca_cb.npz"
    own.parent.mkdir()
    _tiny_set(own, n_train=6, n_valid=7)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pairs.yaml").write_text(
        f"name: pairs\nprotocol: residue_pairs_to_class\nembedder: onehot\n"
        f"data: {{path: {own}, train_chains: 6, early_stop_chains: 2, eval_chains: 5, max_length: null}}\n"
        "head: {type: pair_mlp, hidden: 8}\ntrain: {epochs: 1, crop: 32}\nevaluate: {n_boot: 20}\n")
    config = load_task_config(suite / "pairs.yaml")
    assert config.protocol_obj.training_files(config) == [str(own.resolve())]
    # the same file given as the benchmark data folder (--data) is not digested
    assert config.protocol_obj.training_files(config, own.parent) == []
    trained = []

    def count(kind, info):
        if kind == "task":
            trained.append(info)

    run_suite(suite, ["onehot"], tmp_path / "out", None, progress=count, cache_dir=tmp_path / "cache")
    run_suite(suite, ["onehot"], tmp_path / "out", None, progress=count, cache_dir=tmp_path / "cache")
    assert len(trained) == 1  # unchanged: reused
    identity = {"kind": "embedder", "fingerprint": "onehot"}
    before, as_benchmark_data = head_digest(config, identity), head_digest(config, identity, own.parent)
    _tiny_set(own, n_train=6, n_valid=7, seed=1)  # other chains at the same path
    assert head_digest(config, identity) != before
    assert head_digest(config, identity, own.parent) == as_benchmark_data
    run_suite(suite, ["onehot"], tmp_path / "out", None, progress=count, cache_dir=tmp_path / "cache")
    assert len(trained) == 2  # trained again
