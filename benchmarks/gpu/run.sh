#!/usr/bin/env bash
# The GPU checks, in one script: the CUDA tests, the training-throughput and the data-path
# benchmarks on one GPU.
#
#   bash benchmarks/gpu/run.sh [OUT_DIR]     # under 8 minutes on one GPU; default OUT_DIR: $OUT, else
#                                            # benchmarks/gpu/results
#
# Everything it prints lands in OUT_DIR (nvidia-smi.txt, test_cuda.log, throughput/RESULTS.md and
# results.json, data_path/results.json, versions.txt); benchmarks/gpu/RESULTS.md records what a run measured. Without a
# CUDA GPU it says so and exits 0. A machine without torch-pruning installs it from .whl/ if present
# (pip download --no-deps torch-pruning -d .whl).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-benchmarks/gpu/results}}
python=${PYTHON:-python3}
mkdir -p "$out"

if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "no CUDA GPU visible to $python: GPU checks skipped"
  exit 0
fi
if ! "$python" -c "import torch_pruning" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --target /tmp/distill-site .whl/*.whl
  export PYTHONPATH=/tmp/distill-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
"$python" - > "$out/versions.txt" <<'PY'
import platform, torch, onnxruntime, torchvision
print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, GPU {torch.cuda.get_device_name()}, "
      f"{torch.get_num_threads()} CPU threads")
PY
cat "$out/versions.txt"

status=0
echo "== tests/test_cuda.py"
timeout 240 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log" || status=1
echo "== benchmarks/train_throughput.py on $(nproc) CPU threads and the GPU"
timeout 200 "$python" benchmarks/train_throughput.py --threads "$(nproc)" --rounds 5 --out "$out/throughput" \
  2>&1 | tail -n 60 | tee "$out/throughput.log" || status=1
echo "== benchmarks/data_path.py on the GPU: bf16, channels_last (fake data where the .npz files are absent)"
timeout 150 "$python" benchmarks/data_path.py --device cuda --amp bf16 --channels-last --out "$out/data_path" \
  2>&1 | tail -n 20 | tee "$out/data_path.log" || status=1
exit $status
