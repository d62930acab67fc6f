#!/usr/bin/env bash
# The benchmark suite on the architecture comparison's checkpoints (issue 13), beside one-hot:
# SS Q3/Q8 (CB513, NEW364), localization Q10/Q2, stability, SCOP class, and contacts (pair MLP),
# every head trained on at most 2,000 proteins (train.max_train; contacts: the config's 200 chains),
# every test set whole. Two processes (one thread each) train disjoint embedders into one folder;
# a last call reuses every head and computes the paired differences.
#
#   bash experiments/architectures_cpu/suite.sh runs/arch_cpu_24 runs/arch_suite
set -euo pipefail
RUN=${1:-runs/arch_cpu_24}
OUT=${2:-runs/arch_suite}
PROTLM=${PROTLM:-.venv/bin/protlm}
mkdir -p "$RUN/named"
for f in bert albert esm causal txl xlnet t5; do ln -sfn "../$f/model" "$RUN/named/$f"; done
N="$RUN/named"
TASKS="secondary_structure localization stability scop_class contacts_pair_mlp_onehot"
run() { OMP_NUM_THREADS=1 nice "$PROTLM" benchmark --suite configs/benchmarks --tasks $TASKS --out "$OUT" \
          --threads 1 "$@" train.max_train=2000; }
run --embedder onehot --embedder $N/bert --embedder $N/esm --embedder $N/albert > "$OUT.a.log" 2>&1 &
A=$!
run --embedder $N/causal --embedder $N/txl --embedder $N/xlnet --embedder $N/t5 > "$OUT.b.log" 2>&1 &
B=$!
wait $A; wait $B
COMPARE=()
for f in bert albert esm causal txl xlnet t5; do COMPARE+=(--compare $N/$f:onehot); done
run --embedder onehot $(for f in bert albert esm causal txl xlnet t5; do echo --embedder $N/$f; done) \
    "${COMPARE[@]}" --compare $N/bert:$N/esm --compare $N/bert:$N/albert --compare $N/causal:$N/txl
