#!/usr/bin/env bash
# The GPU runs behind benchmarks/results/, one stage per argument, written under $OUT
# (at most 8 files come back from the device machine, so each stage writes one log + one JSON).
#
#   bash benchmarks/h200_run.sh tests scan lm   # GPU tests, the scan vs mamba_ssm, the LM training/decoding
#   bash benchmarks/h200_run.sh synthetic       # selective copying + induction heads (issue 6)
#   bash benchmarks/h200_run.sh audio           # SaShiMi SC09-size model: tokens/s and generation RTF (issue 5)
#   bash benchmarks/h200_run.sh ncu             # Nsight Compute sections of the scan kernels at 8x2048x4096
#   bash benchmarks/h200_run.sh ab              # the scan tables of two trees (benchmarks/ab_trees.sh OLD NEW)
#   AB_LM="lm130m_L2048" bash benchmarks/h200_run.sh ab   # or some of gpu_lm.py's runs
#
# The device machine has torch, triton and lightning but not soundfile/soxr/pyfaidx: wheels for
# those travel in .whl/ (see /work/.library/device/README.md) and are installed to /tmp/site.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site TRITON_DEFAULT_FP_FUSION=1
OUT=${OUT:-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader

stage_tests() {
    python3 -m pytest -q -rfE -p no:cacheprovider tests/gpu tests/ops/test_triton_fused.py tests/ops/test_triton_step.py \
        tests/ops/test_triton_conv.py tests/ops/test_triton_scan.py tests/ops/test_mamba_inner.py \
        tests/models/test_lm.py 2>&1 | tee "$OUT/tests.log" | tail -n 5
}

# issue 3: the scan at the four anchor shapes with the shipped launch plan (add --sweep to re-tune it)
stage_scan() {
    python3 benchmarks/gpu_scan.py --out "$OUT/scan.json" 2>&1 | tee "$OUT/scan.log" | grep -v "^ *$"
}

# where the scan kernels' cycles go (issue, stalls, occupancy), at the 4096-step anchor shape: the
# first 3 launches of the step forward and the first of the backward under Nsight Compute, then the
# step backward (BWD_KERNEL="seq")
stage_ncu() {
    local ncu="ncu --clock-control none --section SpeedOfLight --section Occupancy --section SchedulerStats
        --section WarpStateStats --section LaunchStats"
    local run="python3 benchmarks/gpu_scan.py --once --shapes lm_B8_D2048_L4096"
    $ncu -k "regex:_selective_scan_(fwd_seq|bwd)_kernel" --launch-count 4 $run >"$OUT/ncu.txt" 2>&1
    $ncu -k "regex:_selective_scan_bwd_seq_kernel" --launch-count 1 $run --set '{"BWD_KERNEL": "seq"}' >>"$OUT/ncu.txt" 2>&1
    grep -E "^  _sel|Issue Slots Busy|Warp Cycles Per Issued|Achieved Occupancy|Registers Per|No Eligible" "$OUT/ncu.txt"
}

# two trees from benchmarks/ab_trees.sh, each's scan table, alternating prev, cur, prev, cur (one run,
# so machine drift hits both alike); AB_LM="RUN ..." times those gpu_lm.py runs instead
stage_ab() {
    : >"$OUT/ab.log"
    for tree in prev cur prev cur; do
        echo "== $tree" | tee -a "$OUT/ab.log"
        if [ -n "${AB_LM:-}" ]; then
            (cd "_ab/$tree" && PYTHONPATH=$PWD:/tmp/site python3 benchmarks/gpu_lm.py --only $AB_LM 2>&1 |
                grep -E "^(lm|dna|gen)" | tee -a "$OUT/ab.log")
        else
            (cd "_ab/$tree" && PYTHONPATH=$PWD:/tmp/site python3 benchmarks/gpu_scan.py 2>&1 |
                grep -E "^(lm|audio|dna)_" | grep -v "fwd+bwd" | tee -a "$OUT/ab.log")
        fi
    done
}

stage_lm() {
    python3 benchmarks/gpu_lm.py --out "$OUT/lm.json" ${LM_ONLY:+--only $LM_ONLY} ${LM_PROFILE:+--profile} 2>&1 | tee "$OUT/lm.log" | grep -v "^ *$"
}

# the paper's small SC09 model: D=64, 8 blocks per stage, pools [4, 4], 16,000-sample clips, batch 16
stage_audio() {
    local runs="mamba,mamba,mamba lti,mamba,mamba" res="$OUT/audio.jsonl"
    : >"$res"
    for blocks in $runs; do
        local dir=/tmp/sc09_${blocks//,/_}
        python3 -m mamba_audio.cli pretrain --sample-rate 16000 --length 16000 --batch-size 16 --d-model 64 \
            --n-layer 8 --pool 4,4 --stage-blocks "$blocks" --max-steps ${AUDIO_STEPS:-150} --device cuda \
            --out "$dir" 2>>"$OUT/audio.log" | tail -n 1 | sed "s/^/{\"run\": \"pretrain $blocks\", \"result\": /; s/$/}/" >>"$res"
        for num in 1 64; do
            python3 -m mamba_audio.cli generate --checkpoint "$dir" --num $num --seconds 1 --device cuda \
                --out "$dir/gen$num" 2>>"$OUT/audio.log" | tail -n 1 |
                sed "s/^/{\"run\": \"generate $blocks batch $num\", \"result\": /; s/$/}/" >>"$res"
        done
    done
    cat "$res"
}

# issue 6: eight jobs share the GPU (each is launch-bound at d_model 64); accuracy, not speed, is measured.
# A length curriculum from 32 (copying 500 steps per doubling to 4096, induction 100 to 256);
# copying's cosine ends at the time budget; induction trains as the paper does (app. E.1: Adam
# without weight decay, a constant rate), long enough for its dt to close on noise tokens (session 6:
# Adam's epsilon 1e-15, 17,000 steps), eight seeds, evaluated from 2^6 to 2^20 in float32, with a
# 65,536-token monitor set every 1,000 steps. Eight jobs at once on 16 cores: 2 CPU threads each, not
# torch's default of one per core each. About 5.5 minutes with SYN_COPY=0.
stage_synthetic() {
    local budget=${SYN_BUDGET:-400}
    local -x OMP_NUM_THREADS=2
    mkdir -p /tmp/syn
    local C="--length 4096 --curriculum-start 32 --curriculum-steps 500 --batch 64 --lr 5e-3 --warmup 100 --steps 20000
        --time-budget $budget --eval-every 250 --monitor-size 256 --target-accuracy 0.995 --eval-size 1024
        --eval-lengths 1024 --device cuda"
    # induction trains with its defaults (pipelines/synthetic.py TASK_DEFAULTS: session 6's recipe); IND_* vary it
    local I="${IND_STEPS:+--steps $IND_STEPS} --eval-every ${IND_EVERY:-1000} --monitor-size 256 --eval-size 256 --eval-precision fp32
        --eval-tokens-per-batch 1048576 --device cuda ${IND_BUDGET:+--time-budget $IND_BUDGET} --monitor-lengths ${IND_MONITOR:-65536}"
    if [ "${SYN_COPY:-1}" = 1 ]; then
        for mixer in mamba lti_complex; do
            python3 -m pipelines.synthetic copying --mixer $mixer $C --out /tmp/syn/copy_$mixer \
                >/tmp/syn/copy_$mixer.json 2>/tmp/syn/copy_$mixer.log &
        done
    fi
    # the induction grid: batches x seeds x Adam epsilons x rate changes (IND_LR_AFTER: "-" for none,
    # or STEP:LR[,STEP:LR...]). The defaults are session 6's recipe (benchmarks/results/README.md):
    # 17,000 steps at 4e-3, 1e-3 from step 16,000, Adam's epsilon 1e-15. Jobs evaluate 1M-token
    # batches: eight evaluating 4M-token ones ran out of GPU memory.
    local names=()
    for batch in ${IND_BATCHES:-64}; do
        for seed in ${IND_SEEDS:-0 1 2 3 4 5 6 7}; do
            for eps in ${IND_EPS:-1e-15}; do
                for after in ${IND_LR_AFTER:-16000:1e-3}; do
                    local name=ind_b${batch}_s${seed}_e$eps extra=""
                    if [ "$after" != - ]; then name=${name}_after${after//[:,]/_}; extra="--lr-after ${after//,/ }"; fi
                    rm -rf /tmp/syn/$name /tmp/syn/$name.json
                    names+=("$name")
                    python3 -m pipelines.synthetic induction --seed $seed --batch $batch --adam-eps $eps $I $extra \
                        --out /tmp/syn/$name >/tmp/syn/$name.json 2>/tmp/syn/$name.log &
                done
            done
        done
    done
    wait
    # this run's results only (a warm machine keeps earlier runs' files in /tmp/syn)
    : >"$OUT/synthetic.jsonl"
    : >"$OUT/synthetic.log"
    if [ "${SYN_COPY:-1}" = 1 ]; then names+=(copy_mamba copy_lti_complex); fi
    for name in "${names[@]}"; do
        cat /tmp/syn/$name.json >>"$OUT/synthetic.jsonl"
        { echo "== $name"; tail -n 4 /tmp/syn/$name.log; } >>"$OUT/synthetic.log"
    done
    python3 benchmarks/plot_induction.py "$OUT/synthetic.jsonl" --out "$OUT/induction_accuracy.png"
    (cd /tmp/syn && tar czf "$OUT/induction_models.tgz" $(printf "%s/model " "${names[@]}") 2>/dev/null)
    cat "$OUT/synthetic.jsonl"
}

for stage in "$@"; do
    echo "== $stage $(date -u +%T)"
    "stage_$stage"
done
echo "== done $(date -u +%T)"
