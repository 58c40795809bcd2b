"""Render docs/results.md from the run records committed under results/.

    python scripts/make_results_doc.py           # rewrite docs/results.md
    python scripts/make_results_doc.py --check   # exit 1 if docs/results.md is not what the records give

Each folder ``results/<table>/`` holds the records of one table (CSV/JSON as the command wrote
them, or extracted from its run folder) and a ``meta.json`` with the command, hardware and date
beside them, so that every figure on the page can be traced to the command that produced it.
Figures whose records were never kept live in ``results/hand_copied.md``, which is appended
verbatim under a heading that says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python scripts/make_results_doc.py"
HAND_COPIED = "hand_copied.md"


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ratio(value: str) -> str:
    return "" if math.isnan(float(value)) else f"{float(value):.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _step_time_csv(folder: Path, meta: dict) -> list[str]:
    """One row per variant of a ``benchmarks/step_time.py`` CSV: times in ms, ratios with the
    paired (per-round) ratio in brackets."""
    with open(folder / meta["record"], newline="") as f:
        records = list(csv.DictReader(f))
    labels = meta.get("labels", {})
    rows = []
    for r in records:
        to_peft = _ratio(r["ratio_to_hf_peft"])
        if to_peft:
            to_peft += f" ({_ratio(r['paired_ratio_to_hf_peft'])})"
        rows.append([
            labels.get(r["variant"], r["variant"]),
            _num(float(r["median_step_s"]) * 1000),
            f"{_ratio(r['ratio_to_floor'])} ({_ratio(r['paired_ratio_to_floor'])})",
            to_peft,
            _num(int(r["aten_ops"])),
            _num(float(r["peak_step_mb"])),
        ])
    header = ["variant", "median step (ms)", "÷ floor (paired)", "÷ HF PEFT (paired)",
              "aten ops (CPU kernels)", "peak step memory (MB)"]
    return _table(header, rows)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f} (1)"
    single = " / ".join(f"{v:.4f}" for v in values)
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({single})"


def _ner(folder: Path, meta: dict) -> list[str]:
    """Test entity F1 per row (mean ± sample std over its records), then per-type F1 (mean over
    the records that logged it) with the gold entity counts of the builtin test split."""
    rows = [(row["label"], [json.loads((folder / name).read_text())["test"] for name in row["records"]])
            for row in meta["rows"]]
    lines = _table(["run", "test entity F1, mean ± std (values)", "n"],
                   [[label, _mean_std([t["entity_f1"] for t in tests]), str(len(tests))] for label, tests in rows])
    manifest = json.loads((REPO / "pefthub/data/builtin/ner/manifest.json").read_text())
    counts = manifest["entity_counts"]["test"]
    types = sorted(counts)
    per_type = []
    for label, tests in rows:
        typed = [t["per_type_f1"] for t in tests if t.get("per_type_f1")]
        per_type.append([f"{label} ({len(typed)} runs)"]
                        + [f"{statistics.mean(t[name] for t in typed):.2f}" for name in types])
    lines += ["", "Per-type test F1 (mean over runs; gold entities in the test split in brackets):", ""]
    lines += _table(["run"] + [f"{name} [{counts[name]}]" for name in types], per_type)
    return lines


def _quickstart(folder: Path, meta: dict) -> list[str]:
    """The README quickstart's figures from the JSON record of one run."""
    r = json.loads((folder / meta["record"]).read_text())
    minutes, seconds = divmod(round(r["wall_s"]), 60)
    rows = [
        ["SST-2 dev accuracy (872 sentences, best validation checkpoint)",
         f"{r['test_accuracy']:.4f} (MCC {r['test_mcc']:.3f})"],
        [f"wall time of `pefthub fit` (1 epoch = {r['train_steps']} steps, 2 validations, test)",
         f"{minutes} min {seconds:02d} s"],
        ["trainable parameters (LoRA r=8 on 36 matrices + 2-class head)", _num(r["trainable_params"])],
        ["adapter file (`adapter/adapter.safetensors`, fp32, head included)",
         f"{_num(r['adapter_bytes'])} bytes (+ `adapter_config.json`, {_num(r['adapter_config_bytes'])} bytes)"],
    ]
    return _table(["figure", "value"], rows)


def _unihyper_transfer(folder: Path, meta: dict) -> list[str]:
    """``benchmarks/unihyper_transfer.py``'s ``records.jsonl``: one row per measurement (source
    training, zero-shot load into a host and its δθ phase, SAT-LoRA trained on the host, FLOPs)."""
    rows = []
    for r in (json.loads(line) for line in (folder / meta["record"]).read_text().splitlines() if line.strip()):
        what = r["what"]
        if what == "source":
            figure = (f"test accuracy {r['test_accuracy_fp32']:.4f} after {r.get('train_examples') or 'all'} rows × "
                      f"{r['epochs']} epoch(s) (preset {r.get('preset')}, lr {r.get('lr')}); adapter file "
                      f"{_num(r['adapter_bytes'])} bytes; E[k] {r['atoms_per_token']:.2f} atoms per token")
        elif what == "transfer":
            figure = f"zero-shot {r['zero_shot_accuracy']:.4f}; head alone on the bare host {r['head_only_accuracy']:.4f}"
            if "after_delta_accuracy" in r:
                figure += f"; after {r['delta_steps']} δθ steps (λ_Q {r['lambda_delta']}) {r['after_delta_accuracy']:.4f}"
        elif what == "satlora":
            figure = (f"SAT-LoRA trained on this host: {r['test_accuracy']:.4f} (fp32 {r['test_accuracy_fp32']:.4f}); "
                      f"adapter file {_num(r['adapter_bytes'])} bytes")
        elif what == "flops":
            figure = (f"+{r['overhead']:.1%} FLOPs with cached projectors (inference), +{r['per_forward_overhead']:.1%} "
                      f"per training forward (fvcore, {r['seq_len']} tokens)")
        else:
            continue
        rows.append([what, f"`{r['host']}`", str(r["seed"]), figure])
    return _table(["record", "host", "seed", "figures"], rows)


RENDERERS: dict[str, Callable[[Path, dict], list[str]]] = {
    "ner": _ner,
    "quickstart": _quickstart,
    "step_time_csv": _step_time_csv,
    "unihyper_transfer": _unihyper_transfer,
}


def _section(folder: Path, meta: dict) -> list[str]:
    kind = meta.get("kind")
    if kind not in RENDERERS:
        raise ValueError(f"{folder / 'meta.json'}: kind {kind!r}, expected one of {sorted(RENDERERS)}")
    for key in ("title", "command", "hardware", "date"):
        if not meta.get(key):
            raise ValueError(f"{folder / 'meta.json'}: missing {key!r} (every table states its command, hardware and date)")
    lines = [f"## {meta['title']}", "", f"Command (record in `results/{folder.name}/`, {meta['date']}):", "",
             f"    {meta['command']}", ""]
    if meta.get("runs"):
        lines += ["The runs it reads:", ""] + [f"    {run}" for run in meta["runs"]] + [""]
    lines += [f"Hardware: {meta['hardware']}.", ""]
    if meta.get("intro"):
        lines += [meta["intro"], ""]
    lines += RENDERERS[kind](folder, meta)
    for note in meta.get("notes", []):
        lines += ["", note]
    return lines + [""]


def render(results: Path = REPO / "results") -> str:
    """The whole page: a generated-by header, one section per record folder (by ``order``), then
    the hand-copied section verbatim."""
    metas = []
    for path in sorted(results.glob("*/meta.json")):
        metas.append((path.parent, json.loads(path.read_text())))
    metas.sort(key=lambda item: (item[1].get("order", 0), item[0].name))
    lines = [
        "# Results",
        "",
        f"<!-- Generated by `{COMMAND}` from results/; edit the records there, not this file. -->",
        "",
        f"This page is generated by `{COMMAND}` from the run records committed under `results/`",
        "(each folder: the records and a `meta.json` with the command, hardware and date);",
        "`tests/test_results_doc.py` fails when the page and the records disagree. Tables whose",
        f"records were not kept are in the last section, copied verbatim from `results/{HAND_COPIED}`.",
        "",
    ]
    for folder, meta in metas:
        lines += _section(folder, meta)
    hand = results / HAND_COPIED
    if hand.exists():
        lines += [hand.read_text().rstrip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/results.md is out of date")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results.md")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out}: out of date with results/; run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
