#!/usr/bin/env bash
# Run the whole mathforge pipeline, one `accelerate launch` per stage.
#
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

bash scripts/bootstrap.sh
PY=.venv/bin/python
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
  if ! .venv/bin/accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_PROCESSES" \
      ${LAUNCH_EXTRA[@]+"${LAUNCH_EXTRA[@]}"} -m "stages.$stage" --config "$recipe" --run "$RUN" --runs_dir "$RUNS_DIR" "$@"; then
    echo "run_pipeline: stage '$stage' FAILED (recipe $recipe); fix it and rerun: completed stages are skipped" >&2
    exit 1
  fi
  echo "=== [$stage] done in $(( $(date +%s) - t0 ))s"
  # Evaluate every policy checkpoint on the recipe's eval sets (eval/ writes into its eval/ folder;
  # synth writes data and prm a step classifier, neither is a policy that generates).
  if [ "$stage" != synth ] && [ "$stage" != prm ] && [ -f eval/gsm8k.py ] && [ -f "$RECIPE/eval.yaml" ]; then
    echo "=== [eval $stage]"
    if ! .venv/bin/accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_PROCESSES" \
        ${LAUNCH_EXTRA[@]+"${LAUNCH_EXTRA[@]}"} -m eval.gsm8k --config "$RECIPE/eval.yaml" --model "$RUNS_DIR/$RUN/$stage"; then
      echo "run_pipeline: evaluation of stage '$stage' FAILED" >&2
      exit 1
    fi
  fi
done
echo
$PY -m stages.common lineage "$RUNS_DIR/$RUN" || true
if [ -f eval/report.py ]; then
  $PY -m eval.report "$RUNS_DIR/$RUN" && echo "report: $RUNS_DIR/$RUN/report.html"
fi
echo "run_pipeline: finished in $(( $(date +%s) - start ))s; results in $RUNS_DIR/$RUN/"
