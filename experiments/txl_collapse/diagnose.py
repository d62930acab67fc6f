"""Why ProtTXL's last layer collapses (issue 25, item 2): measurements, not guesses.

Two subcommands, one core each (``OMP_NUM_THREADS=1``):

``spread MODEL [MODEL ...]``
    For every layer of each trained ProtTXL folder, on the first 50 distinct CB513 proteins
    (≥ 20 residues, ``../shared/data/secondary_structure/CB513_HHblits.csv``): the residue spread
    (per-dimension std across the protein's residues, averaged over dimensions, divided by the
    mean |value|; the median over proteins — ``protlm embed``'s collapse check uses the same ratio,
    threshold 10⁻³) of every hidden state, of every LayerNorm's input and output, and of the two
    branches (attention output projection, feed-forward output) with the size of their
    residue-independent part (|mean over residues|); the LayerNorm gains and biases.

``train --shards DIR [--pre-lnorm] [--lr LR] [--steps N] [--every K]``
    The architecture comparison's exact recipe (``checkpoints/architectures-xs/txl/
    protlm_pretrain.yaml``: 1,482 steps planned, so the same warm-up and cosine schedule), run for
    the first N steps through protlm's own Trainer; every K steps: the loss, each layer's output
    norm (RMS over real tokens) and residue spread (first protein of the batch), and each layer's
    gradient norm (after clipping, as the optimizer sees it).

    .venv/bin/python experiments/txl_collapse/diagnose.py spread checkpoints/architectures-xs/txl
    .venv/bin/python experiments/txl_collapse/diagnose.py train --shards runs/txl_collapse/shards --steps 150
    .venv/bin/python experiments/txl_collapse/diagnose.py train --shards runs/txl_collapse/shards --steps 150 --pre-lnorm
    .venv/bin/python experiments/txl_collapse/diagnose.py train --shards runs/txl_collapse/shards --steps 60 \
        --set model.extra.segment_length=256 model.extra.mem_len=0     # no memory, no segment boundary

``--json FILE`` (both) also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PROTLM_DATA", REPO.parent / "shared" / "data"))
RECIPE = REPO / "checkpoints" / "architectures-xs" / "txl" / "protlm_pretrain.yaml"
PROTBERT = "[PAD] [UNK] [CLS] [SEP] [MASK] L A G V E S I K R D T P N Q F Y M H C W X U B Z O".split()


def cb513_proteins(n: int = 50, min_length: int = 20) -> list[str]:
    path = DATA / "secondary_structure" / "CB513_HHblits.csv"
    if not path.exists():
        sys.exit(f"SKIP: {path} not found")
    seqs: list[str] = []
    for line in path.read_text().splitlines()[1:]:
        s = "".join(line.split(",")[0].split())
        if len(s) >= min_length and s not in seqs:
            seqs.append(s)
        if len(seqs) == n:
            break
    return seqs


def spread(x) -> float:
    """std across residues (rows) per dimension, averaged, over the mean |value|."""
    x = x.detach().double()
    return float(x.std(0).mean() / x.abs().mean())


def cmd_spread(args) -> dict:
    import torch

    import protlm.models  # noqa: F401  (registers prottxl)
    from protlm.models.transfo_xl import ProtTXLForCausalLM

    torch.set_num_threads(1)
    seqs = cb513_proteins(args.proteins)
    index = {t: i for i, t in enumerate(PROTBERT)}
    report = {}
    for folder in args.models:
        model = ProtTXLForCausalLM.from_pretrained(folder).eval()
        caps: dict[str, list] = {}

        def hook(name, take_input):
            def f(mod, inp, out):
                if out.dim() != 3:  # pre-LN also normalises the memory windows (B, n, mem, D): not a residue row
                    return
                if take_input:
                    caps.setdefault(name + " in", []).append(inp[0][0, 1:-1])
                caps.setdefault(name + (" out" if take_input else ""), []).append(out[0, 1:-1])
            return f

        handles = []
        for i, layer in enumerate(model.transformer.layers, 1):
            handles.append(layer.o.register_forward_hook(hook(f"L{i} attention branch", False)))
            handles.append(layer.ff_out.register_forward_hook(hook(f"L{i} feed-forward branch", False)))
            handles.append(layer.attn_norm.register_forward_hook(hook(f"L{i} attn_norm", True)))
            handles.append(layer.ff_norm.register_forward_hook(hook(f"L{i} ff_norm", True)))
        if getattr(model.transformer, "final_norm", None) is not None:
            handles.append(model.transformer.final_norm.register_forward_hook(hook("final_norm", True)))
        with torch.no_grad():
            for s in seqs:
                ids = torch.tensor([[index["[CLS]"]] + [index.get(c, index["X"]) for c in s] + [index["[SEP]"]]])
                out = model(ids, output_hidden_states=True)
                for k, h in enumerate(out.hidden_states):
                    caps.setdefault(f"hidden_states[{k}]" + (" (embedding)" if k == 0 else ""), []).append(h[0, 1:-1])
        for h in handles:
            h.remove()
        rows = {}
        print(f"\n{folder}: {len(seqs)} CB513 proteins, pre_lnorm={getattr(model.config, 'pre_lnorm', False)}")
        print(f"{'tensor':34s} {'spread':>9s} {'mean |v|':>9s} {'|residue mean|':>14s}")
        for name in sorted(caps, key=lambda k: (not k.startswith("hidden"), k)):
            xs = caps[name]
            r = {"spread": float(np.median([spread(x) for x in xs])),
                 "abs": float(np.mean([float(x.abs().mean()) for x in xs])),
                 "abs_residue_mean": float(np.mean([float(x.mean(0).abs().mean()) for x in xs]))}
            rows[name] = r
            print(f"{name:34s} {r['spread']:9.3g} {r['abs']:9.3g} {r['abs_residue_mean']:14.3g}")
        norms = {}
        for i, layer in enumerate(model.transformer.layers, 1):
            for n in ("attn_norm", "ff_norm"):
                ln = getattr(layer, n)
                norms[f"L{i} {n}"] = {"gain_mean": float(ln.weight.detach().abs().mean()), "gain_min": float(ln.weight.detach().abs().min()),
                                      "bias_abs_mean": float(ln.bias.detach().abs().mean())}
        for k, v in norms.items():
            print(f"{k:14s} |gain| mean {v['gain_mean']:.3f} min {v['gain_min']:.3f}  |bias| mean {v['bias_abs_mean']:.4f}")
        report[folder] = {"tensors": rows, "layernorms": norms, "proteins": len(seqs)}
    return report


def cmd_train(args) -> dict:
    import torch
    import yaml

    from protlm.pretrain.config import load_config
    from protlm.pretrain.trainer import Trainer

    torch.set_num_threads(1)
    tree = yaml.safe_load(RECIPE.read_text())
    tree["data"]["shards"] = str(args.shards)
    tree["model"]["extra"]["pre_lnorm"] = bool(args.pre_lnorm)
    if args.lr:
        tree["optimizer"]["lr"] = args.lr
    config = load_config(data=tree, overrides=args.set)
    out = Path(tempfile.mkdtemp(prefix="txl_probe_"))
    tr = Trainer(config, out, progress=False)
    model = tr.model
    layers = model.transformer.layers
    acts: dict[int, object] = {}
    for i, layer in enumerate(layers, 1):
        layer.register_forward_hook(lambda mod, inp, o, i=i: acts.__setitem__(i, o.detach()))
    grads: dict[int, float] = {}

    def pre_step(opt, a, k):
        for i, layer in enumerate(layers, 1):
            g = [p.grad.detach().pow(2).sum() for p in layer.parameters() if p.grad is not None]
            grads[i] = float(torch.stack(g).sum().sqrt()) if g else 0.0
        e = model.transformer.word_emb.weight.grad
        grads[0] = float(e.norm()) if e is not None else 0.0

    tr.optimizer.register_step_pre_hook(pre_step)
    log = []
    print(f"recipe {RECIPE.name}, pre_lnorm={args.pre_lnorm}, lr={config.optimizer.lr}, overrides {args.set}, "
          f"first {args.steps} of {config.total_steps} steps")
    head = "step   loss  " + "  ".join(f"L{i}:rms/spread/grad" for i in range(1, len(layers) + 1))
    print(head)
    for step in range(args.steps):
        ids = tr.micro_batches(tr.step)[0].inputs["input_ids"]
        r = tr.train_step()
        if step % args.every == 0 or step == args.steps - 1:
            real = ids[0] != 0
            row = {"step": step + 1, "loss": r["loss"], "grad_norm": r["grad_norm"], "emb_grad": grads.get(0, 0.0),
                   "layers": []}
            for i in range(1, len(layers) + 1):
                h = acts[i][0][real]
                row["layers"].append({"rms": float(h.pow(2).mean().sqrt()), "spread": spread(h), "grad": grads.get(i, 0.0)})
            log.append(row)
            print(f"{row['step']:4d} {row['loss']:6.3f}  " + "  ".join(
                f"{x['rms']:6.3g}/{x['spread']:8.3g}/{x['grad']:7.3g}" for x in row["layers"]), flush=True)
    return {"pre_lnorm": bool(args.pre_lnorm), "lr": config.optimizer.lr, "overrides": args.set, "planned_steps": config.total_steps,
            "log": log}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("spread", help="per-layer residue spread of trained ProtTXL folders")
    s.add_argument("models", nargs="+")
    s.add_argument("--proteins", type=int, default=50)
    s.add_argument("--json")
    t = sub.add_parser("train", help="activation / gradient norms and spread in the first training steps")
    t.add_argument("--shards", required=True)
    t.add_argument("--pre-lnorm", action="store_true")
    t.add_argument("--lr", type=float)
    t.add_argument("--steps", type=int, default=150)
    t.add_argument("--every", type=int, default=15)
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="protlm pretrain overrides, e.g. model.extra.mem_len=0 model.extra.segment_length=256")
    t.add_argument("--json")
    args = ap.parse_args()
    result = cmd_spread(args) if args.cmd == "spread" else cmd_train(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
