#!/bin/bash
# Members-only GPU run on a leased machine, then pack the run for a limited transfer.
# Run from the repository root with the data reachable at data.cases (e.g. a symlink
# ../shared/data/btxrd -> a copied folder):
#   bash training/remote/run_members.sh LIMIT_MIN PROBE_BUDGET_S [fit overrides...]
# - probe.py times each member alone and picks the most epochs/folds that fit the budget;
# - fit --members-only --workers 1 (one GPU is time-sliced between processes: measured,
#   8 processes each ran at ~1/8 speed, and 6 EfficientNet workers ran out of 80 GB);
# - pack.py keeps fold scores (no weights) and float16 finals, small files first, and
#   splits the tar into 15.5 MB chunks under $W/pack (fetch them over as many calls as the
#   transfer limit needs; `cat run.tar.* | tar -x` at home, then `fit --resume`).
# Optional: LOC=1 also trains the localiser in the background (it shares the GPU).
set -u
LIMIT=$1; BUDGET=$2; shift 2
W=${WORK:-/tmp/w}; mkdir -p "$W"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" || exit 3
LOCDIRS=""
if [ "${LOC:-0}" = 1 ]; then
  OMP_NUM_THREADS=2 python3 -m training localiser --cases "${LOCCASES:?LOCCASES: localiser case table}" \
    --out "$W/loc" --epochs "${LOCEPOCHS:-150}" --input-size 256 --base-channels 16 --batch-size 16 \
    --time-limit "$LIMIT" > "$W/loc.log" 2>&1 &
  LOCDIRS="$W/loc"
fi
CHOICE=$(python3 training/remote/probe.py "$BUDGET" "$@") || { echo "probe failed"; CHOICE="train.epochs=30 stacker.folds=3"; }
echo "choice: $CHOICE"
python3 -m training fit --config gpu --quiet --members-only --workers 1 --run-dir "$W/run" \
  --time-limit "$LIMIT" $CHOICE "$@"
wait
python3 training/remote/pack.py "$W/run" "$W/pack" $LOCDIRS
cd "$W/pack" && split -b 15500k -d run.tar run.tar. && rm run.tar && ls -la
