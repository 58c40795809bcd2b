"""Markdown tables of NER results: Hugging Face reference records and pefthub runs side by side.

    python benchmarks/ner_table.py --reference runs/ner-reference/full_*.json \
        --run "pefthub LoRA=runs/ner-recipe/lora-ner/version_*" --run "pefthub full=runs/ner-recipe/full-ner/version_*"

A reference record is what ``benchmarks/ner_reference.py`` writes; a pefthub run is a run folder
whose TensorBoard events hold ``test/entity_f1`` and ``test/entity_f1/<type>`` (logged by
``pefthub fit`` with ``test_after_fit``, or ``pefthub test``). Prints entity F1 on the test
split (mean ± sample std over the records/runs of each row, the single values in brackets),
then per-type F1 (mean over the row's runs) with the gold entity counts of the test split.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path


def _pm(values: list[float]) -> str:
    single = " / ".join(f"{v:.4f}" for v in values)
    if len(values) == 1:
        return f"{values[0]:.4f} (1)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({single})"


def _pefthub_run(run_dir: Path) -> dict | None:
    from pefthub.analysis import read_event_scalars

    scalars = read_event_scalars(run_dir)
    test = scalars[scalars["tag"].str.startswith("test/")]
    if "test/entity_f1" not in set(test["tag"]):
        return None
    last = test.groupby("tag")["value"].last()
    per_type = {tag.split("/", 2)[2]: float(v) for tag, v in last.items() if tag.startswith("test/entity_f1/")}
    return {"entity_f1": float(last["test/entity_f1"]), "per_type_f1": per_type,
            **{name: float(last[f"test/{name}"]) for name in ("accuracy", "entity_precision", "entity_recall")
               if f"test/{name}" in last}}


def write_record(run_dir: Path, result: dict, folder: Path) -> Path:
    """``<folder>/<run name>_<version>.json``: the run's test figures (per-type F1 to 4 digits),
    with its seed and epochs from ``config.yaml`` — the committed record docs/results.md renders."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    test = {**result, "per_type_f1": {k: round(v, 4) for k, v in sorted(result["per_type_f1"].items())}}
    record = {"run": str(run_dir), "seed": config.get("seed_everything"),
              "max_epochs": (config.get("trainer") or {}).get("max_epochs"), "test": test}
    if config.get("ckpt_path"):  # a `pefthub test --ckpt_path` folder (<run>/test): which checkpoint
        record["ckpt_path"] = config["ckpt_path"]
    # <name>_<version>.json; a test of a run's checkpoint (<name>/<version>/test) adds _test
    parts = run_dir.parts[-3:] if run_dir.name in ("test", "validate") else run_dir.parts[-2:]
    path = folder / f"{'_'.join(parts)}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", nargs="*", default=[], help="JSON records of benchmarks/ner_reference.py")
    parser.add_argument("--run", action="append", default=[], help="LABEL=GLOB of pefthub run folders")
    parser.add_argument("--records", type=Path, help="also write each pefthub run's figures as a JSON record into this folder")
    args = parser.parse_args(argv)

    rows: dict[str, list[dict]] = {}
    for path in sorted(args.reference):
        record = json.loads(Path(path).read_text())
        label = f"reference: HF {record['method'].removeprefix('hf-')} (lr {record['lr']:g}, {record['epochs']:g} epochs)"
        rows.setdefault(label, []).append(record["test"])
    for spec in args.run:
        label, _, pattern = spec.rpartition("=")
        for run_dir in sorted(glob.glob(pattern)):
            result = _pefthub_run(Path(run_dir))
            if result is not None:
                rows.setdefault(label, []).append(result)
                if args.records is not None:
                    write_record(Path(run_dir), result, args.records)

    manifest = json.loads((Path(__file__).resolve().parents[1] / "pefthub/data/builtin/ner/manifest.json").read_text())
    types = sorted(manifest["entity_counts"]["test"])
    lines = ["| run | test entity F1, mean ± std (values) | n |", "|---|---|---|"]
    lines += [f"| {label} | {_pm([r['entity_f1'] for r in results])} | {len(results)} |" for label, results in rows.items()]
    lines += ["", "Per-type test F1 (mean over runs; gold entities in the test split in brackets):", ""]
    lines.append("| run | " + " | ".join(f"{t} [{manifest['entity_counts']['test'][t]}]" for t in types) + " |")
    lines.append("|---|" + "---|" * len(types))
    for label, results in rows.items():
        typed = [r for r in results if r["per_type_f1"]]  # runs from before per-type logging have none
        if not typed:
            continue
        cells = [f"{statistics.mean(r['per_type_f1'].get(t, 0.0) for r in typed):.2f}" for t in types]
        lines.append(f"| {label} ({len(typed)} runs) | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
