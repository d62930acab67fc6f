"""Time and peak memory of the contact heads on one 1,000-residue protein on this CPU.

Contact heads are O(L²): this measures what one protein of 1,000 residues costs at prediction
time for each path, every configuration in its own child process (so peak memory is its own):

* ``pair_mlp``: the pair head's forward from a ready L × D embedding (D = 96, the masked-xs
  checkpoint's width; hidden 128; [e_i, e_j, |e_i − e_j|, e_i ⊙ e_j]), rows in blocks of at
  most ``BLOCK_PAIRS`` pairs (4,096), in blocks of 131,072 pairs (the block size before session
  21), and once with one block of all L² pairs to show what the blocks save;
* ``resnet2d``: the 2-D ResNet (proj 32, 32 channels, 4 blocks), whole map at once;
* ``attention_lr``: the LM forward with eager attention, symmetrise + APC of every map, and the
  regression, for the masked-xs checkpoint (3 × 6 = 18 maps) and a random-weight ESM-2 8M
  shape (6 × 20 = 120 maps);
* ``embed``: the masked-xs LM's embedding forward (SDPA), for scale.

Peak memory: the child resets its resident-set high-water mark after setup
(``/proc/self/clear_refs``) and reads ``VmHWM`` after the timed calls; reported as the increase
over the RSS at the reset. Time: the median of ``--repeats`` calls after one warm-up call.

    .venv/bin/python benchmarks/bench_contacts.py [--length 1000] [--repeats 3]

Writes ``benchmarks/results/contacts.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MASKED = REPO / "checkpoints" / "protlm-swissprot-masked-xs"
CONFIGS = ["embed_masked_xs", "pair_mlp", "pair_mlp_131k", "pair_mlp_one_block", "resnet2d", "attention_lr_masked_xs",
           "attention_lr_esm2_8M_shape"]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _sequence(length: int) -> str:
    """A real sequence: the first ``length`` residues of the longest chain in the contacts data (or a fixed one)."""
    import numpy as np

    npz = REPO.parent / "shared" / "data" / "contacts" / "coords_ca_cb.npz"
    if npz.exists():
        z = np.load(npz, allow_pickle=False)
        k = int(np.argmax(z["lengths"]))
        a = z["offsets"][k]
        seq = z["seq"][a:a + z["lengths"][k]].tobytes().decode()
        if len(seq) >= length:
            return seq[:length]
    rng = np.random.default_rng(0)
    return "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=length))


def _esm8m(folder: Path) -> Path:
    import torch

    from protlm.models.architectures import ModelSpec, build_model
    from protlm.models.vocab import build_tokenizer

    torch.manual_seed(0)
    build_model(ModelSpec(arch="esm", preset="small")).save_pretrained(folder)
    build_tokenizer("esm").save_pretrained(folder)
    return folder


def child(name: str, length: int, repeats: int) -> dict:
    """Set up one configuration, reset the RSS peak, time ``repeats`` calls; return the figures."""
    import numpy as np
    import torch

    seq = _sequence(length)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(length, 96)).astype(np.float32)
    tmp = tempfile.TemporaryDirectory()
    if name == "embed_masked_xs":
        from protlm.embed.runner import load_embedder

        e = load_embedder(str(MASKED))
        call = lambda: e.embed([seq])  # noqa: E731
    elif name.startswith("pair_mlp"):
        from protlm.tasks.heads import pair_mlp
        from protlm.tasks.protocols.residue_pairs_to_class import predict_map

        torch.manual_seed(0)
        head = pair_mlp.PairMLP(96, hidden=128).eval()
        budget = {"pair_mlp_one_block": length * length, "pair_mlp_131k": 131072}.get(name)
        if budget is not None:
            pair_mlp.BLOCK_PAIRS = budget
        call = lambda: predict_map(head, emb, budget or 131072)  # noqa: E731
    elif name == "resnet2d":
        from protlm.tasks.heads.resnet2d import ResNet2D
        from protlm.tasks.protocols.residue_pairs_to_class import predict_map

        torch.manual_seed(0)
        head = ResNet2D(96, proj=32, channels=32, blocks=4).eval()
        call = lambda: predict_map(head, emb)  # noqa: E731
    elif name.startswith("attention_lr"):
        from protlm.tasks.contacts.attention import AttentionLogReg, attention_features, load_lm
        from protlm.tasks.contacts.data import Chain

        folder = MASKED if name.endswith("masked_xs") else _esm8m(Path(tmp.name) / "esm8m")
        lm = load_lm(str(folder))
        model = AttentionLogReg(lm.n_maps)
        model.coef = rng.normal(size=lm.n_maps)
        chain = Chain("bench", seq, np.zeros((length, 3)), np.zeros((length, 3)))
        call = lambda: model.predict_proba(attention_features(lm, chain))  # noqa: E731
    else:
        raise SystemExit(f"unknown configuration {name}")
    call()  # warm-up
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    peak = _status("VmHWM")
    tmp.cleanup()
    return {"name": name, "length": length, "seconds_median": statistics.median(times), "seconds": times,
            "peak_increase_mb": (peak - base) / 2**20, "rss_before_mb": base / 2**20, "threads": torch.get_num_threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=CONFIGS, help="run only these configurations")
    ap.add_argument("--out-json", default=str(REPO / "benchmarks" / "results" / "contacts.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.length, args.repeats)))
        return 0
    rows = []
    for name in args.only or CONFIGS:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--length", str(args.length),
                               "--repeats", str(args.repeats)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{name}: {rows[-1]['seconds_median']:.2f} s, +{rows[-1]['peak_increase_mb']:.0f} MB", file=sys.stderr)
    import torch

    result = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "length": args.length, "repeats": args.repeats, "rows": rows}
    out = Path(args.out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| path (L = {args.length}) | median s | peak memory increase MB |\n|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['seconds_median']:.2f} | {r['peak_increase_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
