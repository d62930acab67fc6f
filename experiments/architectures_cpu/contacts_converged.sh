#!/usr/bin/env bash
# The architecture comparison's contact row with the epoch cap lifted (issue 25): the pair MLP of
# contacts_pair_mlp_onehot on the recipe's 200 chains, early stopping (patience 8, cap 200), for
# one-hot and every 24-TFLOP family (T5 from a run folder: its model is not published, >2 MB),
# each against one-hot with a paired bootstrap CI.
#
#   bash experiments/architectures_cpu/contacts_converged.sh [T5_MODEL] [OUT]
#   (T5_MODEL default runs/arch_cpu_24/t5/model, made by
#    .venv/bin/python experiments/architectures_cpu/run.py --out runs/arch_cpu_24 --budget-tflop 24 --families t5)
set -euo pipefail
T5=${1:-runs/arch_cpu_24/t5/model}
OUT=${2:-runs/arch_contacts}
PROTLM=${PROTLM:-.venv/bin/protlm}
A=checkpoints/architectures-xs
E=(onehot $A/bert $A/albert $A/esm $A/causal $A/txl $A/txl-preln $A/xlnet "$T5")
ARGS=(); CMP=()
for e in "${E[@]}"; do
  ARGS+=(--embedder "$e")
  if [ "$e" != onehot ]; then CMP+=(--compare "$e:onehot"); fi
done
OMP_NUM_THREADS=1 "$PROTLM" benchmark --suite configs/benchmarks --tasks contacts_pair_mlp_onehot "${ARGS[@]}" "${CMP[@]}" \
  --data ../shared/data --out "$OUT" --threads 1 train.epochs=200 train.patience=8
