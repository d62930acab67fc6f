"""Does a family use context? Train it on the tests' synthetic proteins (six 10-residue words, so
a residue is predictable from the ones before it) and print its validation perplexity.

    .venv/bin/python experiments/architectures_cpu/context_check.py causal txl

A model that only learns the composition stays near 20; one that reads the words goes towards 1.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

EXTRA = {"txl": {"segment_length": 32, "mem_len": 32}}  # 128-token crops: four segments with memory


def main(archs: list[str]) -> int:
    import family_checks as fc

    from protlm.pretrain.config import load_config
    from protlm.pretrain.metrics import read_metrics
    from protlm.pretrain.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        shards = fc.make_shards(root / "data", 400)
        for arch in archs:
            data = fc.family_config(shards, arch, EXTRA.get(arch), phases=[{"steps": 80, "max_length": 128,
                                                                            "tokens_per_batch": 2048}],
                                    eval_every=40, save_every=80, log_every=20)
            Trainer(load_config(data=data), root / arch, progress=False).run()
            ppl = [round(r["val_ppl"], 2) for r in read_metrics(root / arch) if r["kind"] == "valid"]
            print(f"{arch}: validation perplexity after 40, 80 steps: {ppl}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["causal", "txl"]))
