#!/usr/bin/env bash
# The long research runs of issues 17 and 19, side by side on one GPU box, for a session that has
# one (on the 2-core CPU they take days). Each part stops at $SECONDS_CAP seconds and copies what
# finished into $OUT; the grid part is resumable (rerun on the same machine to continue it).
#   1. the claims grid (configs/experiments/claims_sst2.yaml: lr tuning on validation, then the
#      chosen lr x seeds 0/1/2 on test), as experiment `claims_sst2_gpu`, -> $OUT/claims_sst2_gpu
#      (benchmarks/export_grid.py's copy: commit it as results/claims_sst2_gpu);
#   2. UniHyperLoRA transfer at full schedule, presets default and spec, seeds 0/1/2, with the
#      per-host SAT-LoRA baseline -> $OUT/transfer/<preset>-s<seed>/records.jsonl;
#   3. NER (issue 19): LoRA seeds 3-7 with the shipped head_lr null and with head_lr 1e-2, and the
#      Hugging Face full fine-tuning reference seeds 1 and 2 -> $OUT/ner (TensorBoard events and
#      configs only: `python benchmarks/ner_table.py --run LABEL=DIR --records results/ner`).
# Every part logs to $OUT/logs. The backbone is $MINILM (on the gpu-kit machine: MiniLM-L6 restored
# to fp32 from its fp16 copy, so weights differ from the packaged fp32 model by fp16 rounding).
# Run:  bash .gpukit/run.sh bash scripts/gpu_research_runs.sh      (OUT, SECONDS_CAP, JOBS optional)
set -uo pipefail
cd "$(dirname "$0")/.."
: "${MINILM:?set MINILM to the MiniLM-L6 model directory}"
OUT="${OUT:-runs/gpu_research}"; CAP="${SECONDS_CAP:-480}"; JOBS="${JOBS:-12}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT/logs" "$OUT/transfer" "$OUT/ner"
python -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print('torch', torch.__version__, torch.cuda.get_device_name())" \
  | tee "$OUT/versions.txt" || exit 1

# 1. the claims grid (one thread per run; the GPU is shared by all of them)
timeout --signal=TERM --kill-after=30 "$CAP" pefthub grid -c configs/experiments/claims_sst2.yaml --name claims_sst2_gpu \
  --jobs "$JOBS" --set model.backbone="$MINILM" --no-progress > "$OUT/logs/grid.log" 2>&1 &

# 2. the transfer runs, one process per preset and seed
for preset in default spec; do
  for seed in 0 1 2; do
    timeout --kill-after=30 "$CAP" python benchmarks/unihyper_transfer.py --accelerator gpu --preset "$preset" --seeds "$seed" \
      --source "$MINILM" --targets "$MINILM:drop-every-other" "$MINILM:ffn=0.5" "$MINILM:hidden=288" \
      --train-limit 0 --epochs 3 --delta-steps 500 --satlora also --out "$OUT/transfer/$preset-s$seed" \
      > "$OUT/logs/transfer-$preset-s$seed.log" 2>&1 &
  done
done

# 3. NER seeds of both head-lr recipes and the reference's seeds
for seed in 3 4 5 6 7; do
  for head in 0.01 null; do
    OMP_NUM_THREADS=1 timeout --kill-after=30 "$CAP" pefthub fit -c configs/lora/ner.yaml --model.backbone "$MINILM" \
      --model.init_args.head_lr "$head" --seed_everything "$seed" --trainer.enable_progress_bar false \
      --trainer.logger.init_args.save_dir runs/gpu_ner --trainer.logger.init_args.name "lora-ner-headlr-$head" \
      > "$OUT/logs/ner-headlr-$head-s$seed.log" 2>&1 &
  done
done
for seed in 1 2; do
  OMP_NUM_THREADS=1 timeout --kill-after=30 "$CAP" python benchmarks/ner_reference.py --backbone "$MINILM" --method full \
    --lr 1e-4 --epochs 10 --seed "$seed" --out "$OUT/ner/reference_full_lr1e-4_s$seed.json" \
    > "$OUT/logs/ner-reference-s$seed.log" 2>&1 &
done

wait
# what comes back: records, configs and TensorBoard events; checkpoints and adapters stay here
python benchmarks/export_grid.py runs/claims_sst2_gpu "$OUT/claims_sst2_gpu" || echo "no finished grid run"
(cd runs && find gpu_ner \( -name 'events.out.tfevents*' -o -name config.yaml -o -name hparams.yaml \) -print0 \
  | xargs -0 -r cp --parents -t "../$OUT/ner") 2>/dev/null
find "$OUT/transfer" -type d -name fits -prune -exec rm -rf {} +
grep -h "^done \|^FAIL \|^tuned \|^results:" "$OUT/logs/grid.log" | tail -n 40
echo "transfer records: $(cat "$OUT"/transfer/*/records.jsonl 2>/dev/null | wc -l) lines; NER runs with a test: $(grep -l 'test entity_f1' "$OUT"/logs/ner-headlr-*.log 2>/dev/null | wc -l)"
