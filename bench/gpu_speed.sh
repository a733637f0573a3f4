#!/usr/bin/env bash
# Runs bench/gpu_speed.py's measure step on a GPU machine that cannot reach a package index.
#
#   bash bench/gpu_speed.sh [measure options]      # e.g. --limit 40 --repeats 1
#
# Needs, beside the repository: .gpubench/ (made here by `gpu_speed.py prepare`) and .whl/
# holding Python 3.12 wheels of what the machine lacks (lm-eval 0.4.13, datasets, dill,
# multiprocess, fsspec, evaluate, Django, asgiref, sqlparse). They are installed into
# /tmp/site, never over the machine's own packages. Results go to $OUT (default
# /tmp/gpu-speed-out): gpu_speed.json, gpu_speed.log, nvidia-smi.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-speed-out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
# the machine's own versions of what the two tools lean on, before the carried ones
"$PYTHON" -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|tokenizers|pyarrow|fsspec|huggingface)' \
    >"$OUT/packages.txt" || true
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# no DATABASE_URL or REDIS_URL: nothing here touches a database or a broker
export KEEL_DATA_DIR=${KEEL_DATA_DIR:-/tmp/keel-gpu}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
    --format=csv >"$OUT/nvidia-smi.txt" 2>&1 || true
"$PYTHON" bench/gpu_speed.py measure --data .gpubench --out "$OUT" "$@"
