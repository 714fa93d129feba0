#!/bin/bash
# device call 1 (benchmarks/device/checks.sh): environment, a GPU search smoke, proxy timing, CUDA kernel tests, layer benchmark
source benchmarks/device/setup.sh
nvidia-smi -L
python3 -c "import torch, timm, pytorch_lightning, pydantic, triton; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', pytorch_lightning.__version__, 'pydantic', pydantic.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
python3 benchmarks/device/make_configs.py /tmp/gpu cuda 8 7 || exit 1
echo "== quick search on cuda (2 workers on one GPU)"
EVONORM_KERNEL_MODE=eager timeout 90 python3 -m evonorm_search.cli run --config /tmp/gpu/quick.yaml --store /tmp/res/quick.sqlite 2>&1 | grep -v "it/s\|candidate/s" | tail -6
echo "== proxy cost on cuda"
EVONORM_KERNEL_MODE=eager timeout 90 python3 benchmarks/proxy_cost.py --data .gpu/data/cifar-10-batches-py --widths 0.125 0.25 --batch 16 --lr 0.1 --steps 100 --layers GroupNormReLU EvoNormS0 --threads 1 --accelerator cuda 2>&1 | grep "|\|accel" | tee $OUT/proxy_cuda.txt
echo "== CUDA kernel tests"
timeout 200 python3 -m pytest -q -p no:cacheprovider -n 8 tests/evonorm_plugins/kernels/test_cuda.py > $OUT/cuda_tests.txt 2>&1; echo "rc $?"; tail -25 $OUT/cuda_tests.txt
echo "== layer benchmark on cuda"
timeout 240 python3 benchmarks/layers.py --device cuda --channels-last --varying --csv $OUT/layers_cuda.csv > $OUT/layers_cuda.txt 2>&1; echo "rc $?"; cat $OUT/layers_cuda.txt | grep -v Warning | tail -80
