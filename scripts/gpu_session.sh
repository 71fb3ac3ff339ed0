#!/usr/bin/env bash
# There, on a lent GPU (after scripts/gpu_kit.sh here): install the carried wheels
# where the image lacks them, then run the prepared job, scripts/gpu_train.py.
# Its results land in $OUT; extra arguments go to gpu_train.py (e.g. --minutes 6).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import soundfile, soxr" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch, lightning, soundfile, soxr; print('torch', torch.__version__, \
'lightning', lightning.__version__, 'soundfile', soundfile.__version__, \
'cuda', torch.cuda.is_available())"
export PYTHONUNBUFFERED=1
data=$(ls -d .gpu_data/*/ | head -1)
python3 scripts/gpu_train.py --data "${data%/}" --out "${OUT:-/tmp/kws_gpu_out}" "$@"
