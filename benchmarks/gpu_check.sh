#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run: CUDA tests, a broad slice of the suite on a GPU machine,
# and benchmarks/gpu.py. Results go to $OUT (or ./gpu-results) as logs.
set -u -o pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee "$out/device.log"
python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py tests/test_metrics.py 2>&1 | tee "$out/cuda_tests.log" | tail -5
python3 -m pytest -q -p no:cacheprovider -o addopts="" -x tests/test_estimator.py tests/test_estimator_hooks.py tests/test_estimator_scaling.py \
  tests/test_export.py tests/test_training.py 2>&1 | tee "$out/suite.log" | tail -3
python3 benchmarks/gpu.py --rounds 5 --steps 200 2>&1 | tee "$out/gpu_bench.log" | tail -6
