"""Reference NER figures from Hugging Face's own stack on pefthub's builtin ``ner`` split.

The same backbone trained for token classification with ``AutoModelForTokenClassification``
+ ``transformers.Trainer`` (``--method full``), or with HF PEFT's LoRA on it
(``--method peft-lora``), on the same train/validation/test files pefthub's ``ner`` task
reads, labels on each word's first subword (the HF token-classification recipe), scored
with seqeval's entity-level micro F1 in its default mode — the metric pefthub logs as
``entity_f1``. Nothing of pefthub is used except to locate the data files and the packaged
backbone directory. It says what this backbone can reach on this split, independently of
pefthub's training loop.

    OMP_NUM_THREADS=1 python benchmarks/ner_reference.py --method full --lr 5e-5 --epochs 10 --seed 0 \
        --out runs/ner-reference/full_s0.json

Writes one JSON record: the settings, validation/test entity precision/recall/F1, token
accuracy, per-type F1 (seqeval's report), wall time, and the validation F1 after each epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _split_files() -> tuple[dict[str, Path], list[str]]:
    import pefthub.data

    root = Path(pefthub.data.__file__).parent / "builtin" / "ner"
    manifest = json.loads((root / "manifest.json").read_text())
    return {split: root / name for split, name in manifest["files"].items()}, manifest["label_names"]


def _first_subword_labels(word_ids: list[int | None], tags: list[int]) -> list[int]:
    labels, previous = [], None
    for word in word_ids:
        labels.append(-100 if word is None or word == previous else tags[word])
        if word is not None:
            previous = word
    return labels


def _scores(label_names: list[str], logits: np.ndarray, labels: np.ndarray) -> dict:
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    predicted = logits.argmax(-1)
    y_true, y_pred = [], []
    for p_row, l_row in zip(predicted, labels, strict=True):
        keep = l_row != -100
        y_true.append([label_names[i] for i in l_row[keep]])
        y_pred.append([label_names[i] for i in p_row[keep]])
    kept = labels != -100
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    return {
        "entity_precision": float(precision_score(y_true, y_pred, average="micro", zero_division=0)),
        "entity_recall": float(recall_score(y_true, y_pred, average="micro", zero_division=0)),
        "entity_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "accuracy": float((predicted[kept] == labels[kept]).mean()),
        "per_type_f1": {k: round(float(v["f1-score"]), 4) for k, v in report.items() if "avg" not in k},
        "per_type_support": {k: int(v["support"]) for k, v in report.items() if "avg" not in k},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm-l6", help="a pefthub packaged name or a local HF model directory")
    parser.add_argument("--method", choices=("full", "peft-lora"), default="full")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON record to write")
    args = parser.parse_args(argv)

    import torch
    from datasets import load_dataset
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from pefthub.backbones import resolve_source

    set_seed(args.seed)
    files, label_names = _split_files()
    source = resolve_source(args.backbone)
    tokenizer = AutoTokenizer.from_pretrained(source)
    raw = load_dataset("json", data_files={k: str(v) for k, v in files.items()})

    def encode(batch: dict) -> dict:
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=args.max_length)
        encoded["labels"] = [_first_subword_labels(encoded.word_ids(i), tags) for i, tags in enumerate(batch["ner_tags"])]
        return encoded

    data = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForTokenClassification.from_pretrained(
        source,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    if args.method == "peft-lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.TOKEN_CLS,
                r=args.lora_rank,
                lora_alpha=2 * args.lora_rank,
                lora_dropout=0.05,
                target_modules=["query", "key", "value", "dense"],
            ),
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    history: list[float] = []

    class RecordValidation(TrainerCallback):
        def on_evaluate(self, _args, _state, _control, metrics=None, **_):
            if metrics and "eval_entity_f1" in metrics:
                history.append(round(float(metrics["eval_entity_f1"]), 4))

    training_args = TrainingArguments(
        output_dir=str(out.with_suffix("")) + "_trainer",
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        warmup_steps=args.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
        weight_decay=args.weight_decay,
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=20,
        report_to=[],
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=lambda p: {k: v for k, v in _scores(label_names, p.predictions, p.label_ids).items() if not isinstance(v, dict)},
        callbacks=[RecordValidation()],
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    record = {
        "backbone": args.backbone,
        "method": f"hf-{args.method}",
        "lr": args.lr,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "seed": args.seed,
        "train_wall_s": round(wall, 1),
        "val_entity_f1_per_epoch": history,
        "threads": torch.get_num_threads(),
    }
    for split in ("validation", "test"):
        prediction = trainer.predict(data[split])
        record[split] = _scores(label_names, prediction.predictions, prediction.label_ids)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("method", "lr", "seed", "val_entity_f1_per_epoch")}), "test entity F1", round(record["test"]["entity_f1"], 4))
    return record


if __name__ == "__main__":
    main()
