#!/bin/bash
# device call 2 (benchmarks/device/search_proof.sh): calibration and ablation side by side on one GPU, each stopped after $1 seconds
# usage: benchmarks/device/search_proof.sh SECONDS ABLATION_BUDGET ABLATION_SEEDS [CAL_WORKERS ABL_WORKERS]
T=${1:-420}; BUDGET=${2:-60}; SEEDS=${3:-3}
source benchmarks/device/setup.sh
python3 benchmarks/device/make_configs.py /tmp/gpu cuda ${4:-8} ${5:-7} || exit 1
export EVONORM_KERNEL_MODE=eager
cli="python3 -m evonorm_search.cli"
date
timeout $T $cli calibrate --config /tmp/gpu/cal.yaml --store /tmp/res/calibration.sqlite --out /tmp/res/calibration > /tmp/res/calibrate.log 2>&1 &
timeout $T $cli ablate --config /tmp/gpu/abl.yaml --seeds $SEEDS --budget $BUDGET --out /tmp/res/ablation > /tmp/res/ablate.log 2>&1 &
while [ -n "$(jobs -r)" ]; do sleep 30; date +%T; tail -c 300 /tmp/res/calibrate.log | tr '\r' '\n' | tail -1; tail -c 300 /tmp/res/ablate.log | tr '\r' '\n' | tail -1; done
wait
if [ -f /tmp/res/calibration/calibration.md ]; then
  timeout 60 $cli calibrate --config /tmp/gpu/cal.yaml --reference reference_batch16 --store /tmp/res/calibration.sqlite --out /tmp/res/calibration_b16 > /tmp/res/calibrate_b16.log 2>&1
fi
cp /tmp/gpu/*.yaml /tmp/res/
tar czf $OUT/results.tgz -C /tmp res
cat /tmp/res/calibration/calibration.md /tmp/res/calibration_b16/calibration.md /tmp/res/ablation/ablation.md 2>/dev/null
tail -c 1500 /tmp/res/calibrate.log; tail -c 1500 /tmp/res/ablate.log
