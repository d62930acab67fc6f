#!/usr/bin/env bash
# A contact head on round 3's 1,000 training chains, stopped by early stopping (patience 8,
# cap 200), for each input given (default: one-hot and UniRep-64), each cell in its own process
# (one thread each), then one call that reuses the heads, scores both held-out sets (the recipe's
# 200 chains and the 522 other validation chains) and gives the paired differences against
# one-hot (and BLOSUM62 when it is among the inputs).
#
#   [TASK=contacts_pair_mlp_onehot] bash experiments/contacts/converged.sh [OUT] [EMBEDDER ...]
#
# TASK: the recipe in configs/benchmarks; default contacts_resnet2d_masked_xs, the 2-D ResNet (proj
# 32, 32 channels, 4 blocks, 128-residue crops; an epoch takes 3-7 minutes of one core);
# contacts_pair_mlp_onehot is ProteinLM's pair MLP (round 3's runs/contacts/pair_mlp_1000).
#
# Interrupted cells keep a checkpoint at every epoch's end (OUT/<config>/<cell>/train-state/):
# running the script again continues them exactly; FINISH=1 ends each interrupted cell at its best
# epoch so far instead (scored and marked, † when that epoch was its last).
# Needs runs/contacts/other_valid.npz:
#   .venv/bin/python experiments/contacts/other_valid_set.py --out runs/contacts/other_valid.npz
set -euo pipefail
OUT=${1:-runs/contacts/resnet_conv}
shift || true
E=("$@")
if [ ${#E[@]} -eq 0 ]; then E=(onehot unirep64); fi
PROTLM=${PROTLM:-.venv/bin/protlm}
TASK=${TASK:-contacts_resnet2d_masked_xs}
COMMON=(--suite configs/benchmarks --tasks $TASK
  --extra-test "$TASK:other_valid=runs/contacts/other_valid.npz:npz:full_sequences=../shared/data/secondary_structure/sequences.fasta"
  --data ../shared/data --out "$OUT" --threads 1)
SETTINGS=(data.train_chains=1000 train.epochs=200 train.patience=8)
FIN=(); if [ "${FINISH:-0}" = 1 ]; then FIN=(--finish); fi
ARGS=(); CMP=()
for e in "${E[@]}"; do
  ARGS+=(--embedder "$e")
  if [ "$e" != onehot ]; then CMP+=(--compare "$e:onehot"); fi
  if [ "$e" != onehot ] && [ "$e" != blosum62 ] && printf '%s\n' "${E[@]}" | grep -qx blosum62; then
    CMP+=(--compare "$e:blosum62")
  fi
done
if [ "${FINISH:-0}" != 1 ]; then
  JOBS=${JOBS:-2}  # one process per cell, JOBS cells at a time (one per core)
  for e in "${E[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    OMP_NUM_THREADS=1 "$PROTLM" benchmark "${COMMON[@]}" --embedder "$e" "${SETTINGS[@]}" &
  done
  wait
fi
OMP_NUM_THREADS=1 "$PROTLM" benchmark "${COMMON[@]}" "${ARGS[@]}" "${CMP[@]}" "${FIN[@]}" "${SETTINGS[@]}"
