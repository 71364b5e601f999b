#!/usr/bin/env bash
# Accelerator figures in one go: decode, TEMPO and sweep benchmarks for the default model and for a
# Llama-3.2-3B-shaped model with random weights, in bfloat16 and float32, plus the bf16-vs-fp32
# accuracy check. Decode lines print fraction_of_limit = steps/s over (measured memory bandwidth /
# parameter bytes), i.e. the fraction of the HBM roofline on a GPU; sweep lines print worlds/s.
#
#   benchmarks/accelerator.sh            # full run (meant for one GPU, e.g. H100/H200)
#   benchmarks/accelerator.sh --small    # the same code paths, tiny sizes: a CPU check (< 5 min idle)
#   (--cpu is the same as --small)
#
# Every benchmark runs in its own process; the summary at the end collects their key=value lines.
set -euo pipefail
cd "$(dirname "$0")"
SMALL=0
for a in "$@"; do
  case "$a" in
    --small|--cpu) SMALL=1 ;;
    *) echo "usage: $0 [--small|--cpu]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
LOG=$(mktemp -d)/accelerator.log
if [ "$SMALL" = 1 ]; then
  DEC="--steps 8 --repeats 1 --no-hf --bandwidth-gib 0.25"; B3="--layers 1"
  TEMPO="--steps 8 --rounds 1 --no-hf"; SWEEP="--chunk 4 --chunks 1 --singles 1 --steps 4 --max-width 2"
  CHECK="--tokens 8"; DTYPES_3B="bfloat16"; DTYPES="float32 bfloat16"
else
  DEC="--steps 64 --repeats 5 --no-hf"; B3=""
  TEMPO="--steps 64 --rounds 3 --no-hf"; SWEEP="--chunk 64 --chunks 2 --singles 4"
  CHECK="--tokens 64"; DTYPES_3B="bfloat16 float32"; DTYPES="float32 bfloat16"
fi
run() {  # label, command...
  local label=$1; shift
  echo "=== $label: $*" | tee -a "$LOG"
  if "$@" 2>&1 | grep -v -i "warn" | tee -a "$LOG.tmp" | tail -n 3; then :; fi
  echo "$label :: $(grep -E '^[a-z0-9_]+=' "$LOG.tmp" | tail -n 1)" >> "$LOG"
  rm -f "$LOG.tmp"
}
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$LOG"
for dt in $DTYPES; do
  run "decode default $dt" $PY decode.py --shape default --dtype "$dt" $DEC
done
for dt in $DTYPES_3B; do
  run "decode llama3.2-3b $dt" $PY decode.py --shape llama3.2-3b --dtype "$dt" $DEC $B3
done
for dt in $DTYPES; do
  run "tempo default $dt" $PY tempo.py --dtype "$dt" $TEMPO
  run "sweep default $dt" $PY sweep.py --dtype "$dt" $SWEEP
done
run "bf16-vs-fp32 default" $PY dtype_check.py $CHECK
run "bf16-vs-fp32 llama3.2-3b (random)" $PY dtype_check.py --shape llama3.2-3b $CHECK $B3
echo
echo "summary (one line per benchmark; fraction_of_limit = share of the measured memory-bandwidth roofline):"
grep " :: " "$LOG"
