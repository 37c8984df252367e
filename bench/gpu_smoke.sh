#!/usr/bin/env bash
# End-to-end GPU smoke of the paper configuration (issue #13): `raddiag train -c jobs/paper.yaml` with
# tiny overrides, through Ray Train on one GPU worker: NCCL backend, bf16 autocast, model.compile,
# batched device augmentation at the official strengths, a checkpoint and an MLflow run. Meant for a
# GPU machine, in under 5 minutes (ResNet-50 at 256² x 32 slices x 4 scans; 24 synthetic cases,
# 1 epoch). Everything it writes is under one scratch folder (printed; kept for inspection).
#
#   bench/gpu_smoke.sh [--cpu] [--dry-run] [--set KEY=VALUE ...]
#
#   --cpu      the same run on CPU (train.use_gpu=false, model.compile=false): checks the overrides
#              and the path end to end where no GPU is available (minutes on 2 cores)
#   --dry-run  synthesise the store, then print the training plan only (starts no Ray)
#   --set      more config overrides, appended last (e.g. --set train.batch_size=4)
#
# Environment: RADDIAG (default .venv/bin/raddiag), WORK (scratch folder, default a new /tmp folder),
# CASES (synthetic cases, default 24).
set -euo pipefail
cd "$(dirname "$0")/.."

RADDIAG=${RADDIAG:-.venv/bin/raddiag}
CASES=${CASES:-24}
cpu=0
dry=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) cpu=1; shift ;;
    --dry-run) dry=(--dry-run); shift ;;
    --set|-s)
      [ $# -ge 2 ] || { echo "gpu_smoke.sh: --set needs KEY=VALUE" >&2; exit 2; }
      extra+=(--set "$2"); shift 2 ;;
    *) echo "gpu_smoke.sh: unknown argument '$1' (use --cpu, --dry-run or --set KEY=VALUE)" >&2; exit 2 ;;
  esac
done
[ -x "$RADDIAG" ] || { echo "gpu_smoke.sh: $RADDIAG not found (set RADDIAG= or run make install first)" >&2; exit 2; }
PY=$(dirname "$RADDIAG")/python
if [ "$cpu" = 0 ] && [ ${#dry[@]} = 0 ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_smoke.sh: torch sees no CUDA device here (run with --cpu to check the path on CPU)" >&2; exit 2; }
fi

WORK=${WORK:-$(mktemp -d /tmp/raddiag-gpu-smoke.XXXXXX)}
mkdir -p "$WORK"
echo "gpu_smoke: scratch folder $WORK"
common=(
  --set "store.url=$WORK/store"
  --set "tracking.tracking_uri=sqlite:///$WORK/mlflow.db"
  --set "tracking.artifact_location=$WORK/mlartifacts"
  --set "tracking.experiment=gpu-smoke"
)
start=$(date +%s)

# 1. a small synthetic store at the paper shape (256², up to 32 slices, up to 4 scans; no Ray)
"$RADDIAG" synth -c jobs/synth.yaml "${common[@]}" --set synth.profile=basic --set "synth.n_cases=$CASES" --set synth.n_labels=8

# 2. one epoch of the paper configuration on one worker
train=(
  --set train.name=gpu-smoke
  --set "train.storage_path=$WORK/ray_results"
  --set train.epochs=1
  --set train.batch_size=2
  --set train.num_workers=1
  --set train.cpus_per_worker=1
  --set train.max_failures=0
  --set data.augment.on=device
  --set data.read_parallelism=1
)
if [ "$cpu" = 1 ]; then
  train+=(--set train.use_gpu=false --set model.compile=false)
else
  train+=(--set train.use_gpu=true --set train.amp=true)
fi
"$RADDIAG" train -c jobs/paper.yaml "${common[@]}" "${train[@]}" "${extra[@]}" "${dry[@]}"
[ ${#dry[@]} = 0 ] || exit 0

# 3. the run is in MLflow with its metrics, and a checkpoint was written
"$RADDIAG" runs --json --limit 1 "${common[@]}" > "$WORK/runs.json"
"$PY" - "$WORK" <<'EOF'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
runs = json.loads((work / "runs.json").read_text())
runs = runs.get("runs", runs) if isinstance(runs, dict) else runs
if not runs:
    sys.exit("gpu_smoke: no MLflow run recorded in " + str(work / "mlflow.db"))
checkpoints = sorted(p for p in (work / "ray_results").rglob("checkpoint_*") if p.is_dir())
if not checkpoints:
    sys.exit("gpu_smoke: no checkpoint under " + str(work / "ray_results"))
print(json.dumps({"run": runs[0], "checkpoint": str(checkpoints[-1])}, indent=1, default=str))
EOF
echo "gpu_smoke: ok in $(( $(date +%s) - start )) s (scratch folder $WORK)"
