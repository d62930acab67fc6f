"""A second held-out contact set: the validation chains that no contact recipe uses.

The shipped contact configs split the 831 validation chains of ``../shared/data/contacts`` by a
seeded permutation of the chains of 30-300 residues: 100 choose the epoch (early stopping), the
next 200 are reported. Every other validation chain (the rest of the 30-300-residue ones and all
longer chains; chains shorter than the config's ``min_length`` stay out, as in the recipes) is
never seen by a recipe. This script writes those chains as a
structure set of one's own (npz layout, docs/contacts.md) so any head can be scored on them with
the whole NetSurfP sequence as the LM's input:

    .venv/bin/python experiments/contacts/other_valid_set.py --out runs/contacts/other_valid.npz
    protlm compare --head A --head B --file runs/contacts/other_valid.npz \
        --full-sequences ../shared/data/secondary_structure/sequences.fasta

The split is computed by protlm's own contact protocol (``load_data``) from the config, so it is
the one the heads were trained and reported with; the script checks that the three sets are
disjoint and together make up the validation split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protlm.tasks.build import load_task_config
from protlm.tasks.contacts.data import load_chains, write_chains

HERE = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(HERE / "configs/benchmarks/contacts_pair_mlp_onehot.yaml"),
                    help="a contact config whose data split to follow (all shipped ones share it)")
    ap.add_argument("--data", default=str(HERE.parent / "shared/data"), help="benchmark data folder")
    ap.add_argument("--out", required=True, help="npz to write (keep it out of the repository: runs/)")
    ap.add_argument("--max-length", type=int, default=None, help="leave out longer chains (default: keep all)")
    args = ap.parse_args()

    config = load_task_config(args.config)
    proto = config.protocol_obj
    data = proto.load_data(config, args.data)
    used = {c.id for c in data.valid} | {c.id for c in data.tests["held_out_valid"]}
    npz = proto.npz(config, args.data)
    valid = load_chains(npz, "valid")
    if not used <= {c.id for c in valid}:
        raise SystemExit("the recipe's early-stopping/reported chains are not all validation chains")
    rest = [c for c in valid if c.id not in used and len(c) >= config.data.min_length
            and (args.max_length is None or len(c) <= args.max_length)]
    assert not ({c.id for c in rest} & used)
    write_chains(args.out, rest)
    lengths = sorted(len(c) for c in rest)
    print(f"{args.out}: {len(rest)} chains of the {len(valid)} validation chains "
          f"({len(data.valid)} early-stopping and {len(data.tests['held_out_valid'])} reported ones left out); "
          f"lengths {lengths[0]}-{lengths[-1]}, median {lengths[len(lengths) // 2]}, "
          f"{sum(n > 300 for n in lengths)} longer than 300")


if __name__ == "__main__":
    main()
