#!/usr/bin/env bash
# bash recipes/compare/run.sh CORPUS [OUT]
# Trains the comparison family (dense-S, dense-2S, SCONE-S, L³-S, MoE-S) one after another on
# CORPUS (a text file or folder, .gz/.xz too), inside OUT (default: runs/compare-<corpus name>),
# then writes OUT/comparison/ with `embedkit compare` against dense-S. Relative paths in the
# recipes (runs, tokenizer cache, vocabularies) land under OUT, so families on other corpora
# never share an allocation or a vocabulary. Extra arguments after OUT go to every fit.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash recipes/compare/run.sh CORPUS [OUT] [fit arguments...]" >&2
  exit 2
fi
corpus="$(realpath "$1")"
name="$(basename "$corpus")"
out="${2:-runs/compare-${name%%.*}}"
shift $(( $# >= 2 ? 2 : 1 ))
recipes="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
cd "$out"
runs=()
for member in dense-s dense-2s scone-s l3-s moe-s; do
  echo "== $member" >&2
  embedkit fit --config "$recipes/$member.yaml" --data.corpus.init_args.path "$corpus" "$@"
  runs+=("$(ls -d runs/compare/$member/lightning_logs/version_* | sort -V | tail -n 1)")
done
embedkit compare "${runs[@]}" --output comparison
