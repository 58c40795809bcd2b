#!/usr/bin/env bash
# GPU check of DeepSpeed (issue 13): ZeRO-2 and ZeRO-3 (Lightning's deepspeed_stage_2/_3, bf16),
# LoRA and AdaLoRA, on the packaged MiniLM in $MINILM, 40 steps each, logs under $OUT.
# LoRA: an uninterrupted run (checkpoint every 20 steps, test-after-fit), a run SIGKILLed after
# step 30 and resumed with --ckpt_path last; the resumed run must end where the uninterrupted one
# did (max |difference| printed; must be <= 1e-3: bf16 GPU kernels need not be deterministic).
# AdaLoRA: must stop before the first step with pefthub's one-line refusal.
# Run: bash .gpukit/run.sh bash scripts/gpu_check_deepspeed.sh   (exit status 0 = all checks passed)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
: "${MINILM:?set MINILM to the MiniLM-L6 model directory}" "${OUT:?set OUT to a folder for logs}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$REPO/tests${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch, deepspeed; assert torch.cuda.is_available(), 'no GPU'; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
COMMON=(--model.backbone "$MINILM" --trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed
        --trainer.max_steps 40 --trainer.max_epochs -1 --trainer.val_check_interval 20 --trainer.limit_val_batches 8
        --data.train_limit 1280 --trainer.enable_progress_bar false --model.dropout 0 --model.head_dropout 0)
failed=0
for stage in 2 3; do
  strategy="deepspeed_stage_$stage"
  dir="$OUT/lora_zero$stage"; mkdir -p "$dir/reference" "$dir/resumed"
  args=(fit -c "$REPO/configs/lora/sst2.yaml" "${COMMON[@]}" --trainer.strategy "$strategy")
  start=$(date +%s)
  if ! (cd "$dir/reference" && pefthub "${args[@]}" --test_after_fit true) > "$dir/reference.log" 2>&1; then
    echo "FAIL lora zero$stage: uninterrupted run (see $dir/reference.log)"; failed=1; continue
  fi
  grep -q "test/accuracy" "$dir/reference.log" || { echo "FAIL lora zero$stage: no test metrics"; failed=1; }
  (cd "$dir/resumed" && pefthub "${args[@]}" --trainer.callbacks+=cli_forkserver.SigkillAtStep --trainer.callbacks.step=30) > "$dir/killed.log" 2>&1 || true
  if ! (cd "$dir/resumed" && pefthub "${args[@]}" --ckpt_path last --test_after_fit true) > "$dir/resumed.log" 2>&1; then
    echo "FAIL lora zero$stage: resumed run (see $dir/resumed.log)"; failed=1; continue
  fi
  python - "$dir" <<'PY' || failed=1
import sys
from pathlib import Path

from pefthub.checkpoint_io import read_checkpoint

root = Path(sys.argv[1])
(a,) = root.glob("reference/runs/*/version_0/checkpoints/last.ckpt")
(b,) = root.glob("resumed/runs/*/version_0/checkpoints/last.ckpt")
(adapter,) = root.glob("reference/runs/*/version_0/adapter/adapter.safetensors")
x, y = read_checkpoint(a), read_checkpoint(b)
assert x["global_step"] == y["global_step"] == 40, (x["global_step"], y["global_step"])
diff = max(float((x["state_dict"][k].float() - y["state_dict"][k].float()).abs().max()) for k in x["state_dict"])
print(f"{root.name}: 40 steps, resumed from step 20; max |uninterrupted - resumed| = {diff:.3g}; adapter {adapter.stat().st_size} bytes")
sys.exit(0 if diff <= 1e-3 else 1)
PY
  echo "lora zero$stage: $(( $(date +%s) - start )) s"
  dir="$OUT/adalora_zero$stage"; mkdir -p "$dir"
  if (cd "$dir" && pefthub fit -c "$REPO/configs/adalora/sst2.yaml" "${COMMON[@]}" --trainer.strategy "$strategy") > "$dir/fit.log" 2>&1; then
    echo "FAIL adalora zero$stage: trained, but pefthub refuses AdaLoRA under DeepSpeed"; failed=1
  elif grep -q "pefthub: error: method 'adalora' (AdaLoRAModule) cannot train under DeepSpeed (ZeRO stage $stage)" "$dir/fit.log"; then
    echo "adalora zero$stage: refused before the first step (as designed)"
  else
    echo "FAIL adalora zero$stage: failed without pefthub's refusal (see $dir/fit.log)"; failed=1
  fi
done
exit "$failed"
