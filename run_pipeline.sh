#!/usr/bin/env bash
# Run the whole mathforge pipeline, one `accelerate launch` per stage.
#
#   ./run_pipeline.sh --help                   # usage: environment variables, one stage, results
#   ./run_pipeline.sh --list                   # the stages the recipe would run, and which are complete
#   ./run_pipeline.sh                          # the embedded default: recipes/tiny, on CPU
#   RECIPE=recipes/qwen2.5-math-1.5b RUN=qwen ACCELERATE_CONFIG=accelerate_configs/single_gpu.yaml ./run_pipeline.sh
#
# Sets up .venv first when missing. A stage whose recipe is absent is left out; a completed stage
# (same parent, config and data) is skipped by the stage itself; an interrupted one resumes. The
# first failure stops the pipeline and names the stage. Extra arguments go to every stage
# (e.g. `./run_pipeline.sh --seed 1`). A `--dry_run true` checks a stage only once the stages before
# it exist (a dry run builds nothing for the next stage to read). LAUNCH_ARGS go to every
# `accelerate launch` (several nodes: scripts/slurm_pipeline.sbatch sets the rank and main address there).
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'EOF'
usage: ./run_pipeline.sh [--help | --list] [STAGE ARGUMENTS...]

Runs the mathforge stages in order, one `accelerate launch` per stage, each followed by eval.gsm8k
for a policy stage (not synth, prm), then prints the checkpoint lineage and writes the report.
Creates .venv first when it is missing or older than pyproject.toml / constraints.txt.

  -h, --help   print this help and exit (runs nothing)
  --list       print the stages the recipe would run, in order, and which are complete in the run

Environment:
  RECIPE             recipe folder, one <stage>.yaml per stage (default: recipes/tiny)
  RUN                run name (default: the recipe folder's name, e.g. tiny)
  RUNS_DIR           where runs live (default: runs)
  STAGES             the stages to try, in order (default: "synth sft prm grpo evolve revise dpo length_rl");
                     a stage runs when stages/<stage>.py and $RECIPE/<stage>.yaml exist
  ACCELERATE_CONFIG  accelerate config (default: accelerate_configs/single_gpu.yaml when nvidia-smi
                     sees a GPU, else accelerate_configs/cpu.yaml)
  NUM_PROCESSES      processes per stage (default: 1)
  ACCELERATE_EXTRA_ARGS  more accelerate launch flags for every launch (several nodes: --num_machines,
                     --machine_rank, --main_process_ip, --main_process_port; scripts/slurm_pipeline.sbatch)

Every launch also gets the values accelerate would otherwise warn about: --num_cpu_threads_per_process
(OMP_NUM_THREADS; else physical cores / NUM_PROCESSES with a use_cpu config, 1 on GPUs), --dynamo_backend no,
and --mixed_precision from the stage's recipe (eval's: eval.yaml): fp16 or bf16 when it sets
`fp16: true` or `bf16: true` (directly or through its `base:`), else no.

Extra arguments go to every stage (not to eval), after the recipe, so they override it:
  ./run_pipeline.sh --seed 1
  ./run_pipeline.sh --dry_run true     # checks a stage once the stages before it exist

Results: $RUNS_DIR/$RUN/<stage>/v<N>/ with <stage>/latest -> the newest complete version, evaluations
in each checkpoint's eval/ folder, and $RUNS_DIR/$RUN/report.html. A stage already complete with the
same parent, config and data is skipped; an interrupted one resumes; the first failure stops the run.

One stage:
  STAGES=sft ./run_pipeline.sh
  .venv/bin/accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.sft --config recipes/tiny/sft.yaml --run tiny
  .venv/bin/python -m stages.sft --help      # the stage's own options (every recipe key)
EOF
}

# recipe_value FILE KEY: a top-level key's value in a recipe or, when it does not state the key, in
# the recipe its `base:` names (the nearest file stating a key wins, as in stages/common/config.py).
recipe_value() {
  local file=$1 key=$2 value base hops=0
  while [ -f "$file" ] && [ $hops -lt 16 ]; do
    value=$(sed -n "s/^$key:[[:space:]]*\([^#[:space:]]*\).*/\1/p" "$file" | tail -n 1)
    if [ -n "$value" ]; then echo "$value"; return 0; fi
    base=$(sed -n 's/^base:[[:space:]]*\([^#[:space:]]*\).*/\1/p' "$file" | tail -n 1)
    [ -n "$base" ] || return 0
    base=${base#[\"\']}; base=${base%[\"\']}
    file="$(dirname "$file")/$base"
    hops=$((hops + 1))
  done
}
is_true() { case "$1" in true|True|TRUE|yes|Yes|YES|on|On|ON) return 0 ;; *) return 1 ;; esac; }
# mixed_precision FILE: fp16 or bf16 when the recipe sets `fp16: true` / `bf16: true` (what the
# stage's training arguments will use), else no.
mixed_precision() {
  if is_true "$(recipe_value "$1" fp16)"; then echo fp16
  elif is_true "$(recipe_value "$1" bf16)"; then echo bf16
  else echo no
  fi
}

# Threads per process, as accelerate itself picks them (passed so that it does not warn):
# OMP_NUM_THREADS when set; on a CPU config (use_cpu: true) physical cores / processes; else 1.
cpu_threads() {
  local cores
  if [ -n "${OMP_NUM_THREADS:-}" ]; then echo "$OMP_NUM_THREADS"; return 0; fi
  if ! grep -Eq '^use_cpu:[[:space:]]*(true|True)' "$ACCELERATE_CONFIG" 2>/dev/null; then echo 1; return 0; fi
  cores=$(lscpu -p=CORE,SOCKET 2>/dev/null | grep -v '^#' | sort -u | wc -l) || cores=0
  if [ "$cores" -lt 1 ] || [ "$cores" -gt "$(nproc)" ]; then cores=$(nproc); fi
  cores=$((cores / NUM_PROCESSES))
  echo $((cores > 0 ? cores : 1))
}

# A complete checkpoint: manifest.json (written last) with status "complete".
is_complete() {
  local manifest=$1/manifest.json
  [ -f "$manifest" ] || return 1
  if [ -x .venv/bin/python ]; then
    .venv/bin/python -c 'import json, sys; sys.exit(json.load(open(sys.argv[1])).get("status") != "complete")' \
      "$manifest" 2>/dev/null
  else
    grep -q '^  "status": "complete"' "$manifest"
  fi
}

list_stages() {
  local stage dir partial skipped=""
  echo "recipe=$RECIPE run=$RUN runs_dir=$RUNS_DIR"
  for stage in $STAGES; do
    if [ ! -f "stages/$stage.py" ] || [ ! -f "$RECIPE/$stage.yaml" ]; then
      skipped="$skipped $stage"
      continue
    fi
    dir="$RUNS_DIR/$RUN/$stage"
    partial=$(ls -d "$dir"/v*.partial 2>/dev/null | sort -V | tail -n 1 || true)
    if is_complete "$dir/latest"; then
      printf '  %-10s complete     %s\n' "$stage" "$dir/$(readlink "$dir/latest")"
    elif [ -n "$partial" ]; then
      printf '  %-10s interrupted  %s (resumes when rerun with the same config)\n' "$stage" "$partial"
    else
      printf '  %-10s not run\n' "$stage"
    fi
  done
  if [ -n "$skipped" ]; then
    echo "left out (no stages/<stage>.py or no $RECIPE/<stage>.yaml):$skipped"
  fi
  echo "A complete stage is skipped when rerun with the same parent, config and data; a changed one builds v<N+1>."
}

LIST=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --list) LIST=1 ;;
  esac
done

RECIPE=${RECIPE:-recipes/tiny}
RUN=${RUN:-$(basename "$RECIPE")}
RUNS_DIR=${RUNS_DIR:-runs}
NUM_PROCESSES=${NUM_PROCESSES:-1}
read -r -a LAUNCH_EXTRA <<< "${LAUNCH_ARGS:-}"
if [ -z "${ACCELERATE_CONFIG:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    ACCELERATE_CONFIG=accelerate_configs/single_gpu.yaml
  else
    ACCELERATE_CONFIG=accelerate_configs/cpu.yaml
  fi
fi
# Stages in pipeline order; later issues add theirs here.
STAGES=${STAGES:-"synth sft prm grpo evolve revise dpo length_rl"}

if [ "$LIST" = 1 ]; then
  if [ ! -d "$RECIPE" ]; then
    echo "run_pipeline: recipe folder '$RECIPE' does not exist" >&2
    exit 2
  fi
  list_stages
  exit 0
fi

bash scripts/bootstrap.sh
PY=.venv/bin/python
# What every `accelerate launch` gets besides --mixed_precision (from each stage's recipe).
LAUNCH_ARGS=(--config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_PROCESSES"
  --num_cpu_threads_per_process "$(cpu_threads)" --dynamo_backend no)
# ACCELERATE_EXTRA_ARGS: more `accelerate launch` flags, e.g. a node's rank on several nodes
# (scripts/slurm_pipeline.sbatch sets --num_machines, --machine_rank, --main_process_ip/port).
read -r -a EXTRA_LAUNCH_ARGS <<< "${ACCELERATE_EXTRA_ARGS:-}"
LAUNCH_ARGS+=(${EXTRA_LAUNCH_ARGS[@]+"${EXTRA_LAUNCH_ARGS[@]}"})
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1

if [ ! -d "$RECIPE" ]; then
  echo "run_pipeline: recipe folder '$RECIPE' does not exist" >&2
  exit 2
fi
echo "run_pipeline: recipe=$RECIPE run=$RUN runs_dir=$RUNS_DIR accelerate_config=$ACCELERATE_CONFIG processes=$NUM_PROCESSES"
start=$(date +%s)
for stage in $STAGES; do
  recipe="$RECIPE/$stage.yaml"
  if [ ! -f "stages/$stage.py" ] || [ ! -f "$recipe" ]; then
    continue
  fi
  echo "=== [$stage] $recipe"
  t0=$(date +%s)
  if ! .venv/bin/accelerate launch "${LAUNCH_ARGS[@]}" --mixed_precision "$(mixed_precision "$recipe")" \
      -m "stages.$stage" --config "$recipe" --run "$RUN" --runs_dir "$RUNS_DIR" "$@"; then
    echo "run_pipeline: stage '$stage' FAILED (recipe $recipe); fix it and rerun: completed stages are skipped" >&2
    exit 1
  fi
  echo "=== [$stage] done in $(( $(date +%s) - t0 ))s"
  # Evaluate every policy checkpoint on the recipe's eval sets (eval/ writes into its eval/ folder;
  # synth writes data and prm a step classifier, neither is a policy that generates).
  if [ "$stage" != synth ] && [ "$stage" != prm ] && [ -f eval/gsm8k.py ] && [ -f "$RECIPE/eval.yaml" ]; then
    echo "=== [eval $stage]"
    t0=$(date +%s)
    if ! .venv/bin/accelerate launch "${LAUNCH_ARGS[@]}" --mixed_precision "$(mixed_precision "$RECIPE/eval.yaml")" \
        -m eval.gsm8k --config "$RECIPE/eval.yaml" --model "$RUNS_DIR/$RUN/$stage"; then
      echo "run_pipeline: evaluation of stage '$stage' FAILED" >&2
      exit 1
    fi
    echo "=== [eval $stage] done in $(( $(date +%s) - t0 ))s"
  fi
done
echo
$PY -m stages.common lineage "$RUNS_DIR/$RUN" || true
if [ -f eval/report.py ]; then
  $PY -m eval.report "$RUNS_DIR/$RUN" && echo "report: $RUNS_DIR/$RUN/report.html"
fi
echo "run_pipeline: finished in $(( $(date +%s) - start ))s; results in $RUNS_DIR/$RUN/"
