#!/usr/bin/env bash
# GPU checks for a machine with CUDA (one short script, as the device tool wants it):
#   1. digits and a 3x64x64 RGB folder spec trained on CUDA (bf16 autocast, channels_last);
#   2. images/s of convspec's loop against a hand-written channels_last + bf16 loop;
#   3. ONNX Runtime's CUDA provider really active (get_providers) and parity CPU vs CUDA;
#   4. a 1-GPU DDP smoke test (nccl);
#   5. ResNet-18 (examples/resnet18.yaml) at 3x224x224 on synthetic uint8: convspec's train_epoch
#      against a hand-written channels_last + bf16 loop, images/s, ratio, peak GPU memory
#      (bench/gpu_resnet18.py); the 12x12 digits run is 1a;
#   6. nvidia-smi memory.
# Usage: bash bench/gpu_check.sh [OUT_DIR]     (OUT defaults to $OUT, else /tmp/gpu_check)
# Status: prepared; not yet run on a GPU (no device was lent to the session that wrote it).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log() { echo "== $*"; }

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'bf16', torch.cuda.is_bf16_supported())"

log "1a. digits on CUDA"
$py -m convspec.compiler train examples/digits.yaml --out "$out/runs" --device cuda 2>&1 | tail -3
$py - "$out/runs/digits-cnn" <<'PY'
import json, sys
r = json.load(open(sys.argv[1] + "/results.json"))
print("device", r["device"], "precision", r["precision"], "test acc", r["test"]["metrics"]["accuracy"],
      "images/s", round(r["timings"]["images_per_s"]))
assert r["device"].startswith("cuda") and r["precision"] in ("bf16", "fp16")
PY

log "1b. RGB shapes 3x64x64 on CUDA"
$py examples/shapes/make_shapes.py "$out/shapes" >/dev/null
sed "s#path: data/shapes#path: $out/shapes#" examples/shapes.yaml > "$out/shapes.yaml"
$py -m convspec.compiler train "$out/shapes.yaml" --out "$out/runs" --device cuda --set "input.size=[64, 64]" 2>&1 | tail -3

log "2. images/s: convspec vs hand-written channels_last + bf16"
$py - "$out/shapes.yaml" <<'PY'
import sys, time, torch, torch.nn.functional as F
from convspec.specs import load_spec
from convspec.compiler import build_model
spec = load_spec(sys.argv[1], overrides=["input.size=[64, 64]"])
dev = torch.device("cuda")
x = torch.randint(0, 255, (256, 3, 64, 64), dtype=torch.uint8, device=dev)
y = torch.randint(0, 3, (256,), device=dev)

def bench(model, prep):
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(prep(x)), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    for _ in range(10): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(50): step()
    torch.cuda.synchronize()
    return 50 * 256 / (time.perf_counter() - t)

ours = bench(build_model(spec, num_classes=3), lambda t: t.float().contiguous(memory_format=torch.channels_last))
body = build_model(spec, num_classes=3)
hand = torch.nn.Sequential(body.body, body.head)  # same layers, preprocessing written by hand
hand_ips = bench(hand, lambda t: (t.float() / 255).contiguous(memory_format=torch.channels_last))
print(f"convspec {ours:,.0f} img/s, hand-written {hand_ips:,.0f} img/s, ratio {ours / hand_ips:.3f}")
PY

log "3. ONNX Runtime CUDA provider and parity"
$py - "$out/runs/digits-cnn/model.onnx" <<'PY'
import sys, numpy as np
from convspec.runtime import Predictor
cuda, cpu = Predictor(sys.argv[1], providers="auto"), Predictor(sys.argv[1], providers="cpu")
print("providers", cuda.providers)
assert "CUDAExecutionProvider" in cuda.providers
x = np.random.default_rng(0).integers(0, 256, (512, *cuda.input_shape), dtype=np.uint8)
a, b = cuda.predict_arrays(x), cpu.predict_arrays(x)
print("max |cuda - cpu|", float(np.abs(a - b).max()), "top-1 agreement", float((a.argmax(1) == b.argmax(1)).mean()))
PY

log "4. DDP smoke test, 1 GPU, nccl"
$py -m torch.distributed.run --standalone --nproc-per-node 1 -m convspec.compiler train examples/digits.yaml \
    --out "$out/ddp" --set training.epochs=2 --no-export 2>&1 | tail -2

log "5. ResNet-18 at 3x224x224, synthetic uint8: convspec loop vs hand-written channels_last + bf16"
$py bench/gpu_resnet18.py --images "${RESNET_IMAGES:-4096}" --batch 128 --epochs 2 --device cuda 2>&1 | tail -8

log "6. memory"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv
