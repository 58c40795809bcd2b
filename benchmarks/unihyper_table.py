"""The UniHyperLoRA transfer table (issue 6) from measured records, as Markdown.

    python benchmarks/unihyper_table.py \
        --records runs/unihyper-transfer-minilm/records.jsonl \
        --grids runs/unihyper_transfer_lora_s0/results.csv runs/unihyper_transfer_vera/results.csv ...

``--records``: JSON lines written by ``benchmarks/unihyper_transfer.py`` (``source``,
``transfer``, ``new_task`` and ``satlora`` records). ``--grids``: ``results.csv`` files of
``pefthub grid`` runs of the per-host baselines (the ``unihyper_transfer`` experiment). Every
cell is mean ± sample std over the seeds found, with the number of seeds; nothing is
computed here but averages of the measured figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import pandas as pd


def _cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} ({len(values)})"


def _host_label(host: str) -> str:
    return host.replace("minilm-l6:", "").replace("mpnet-base:", "mpnet:")


def read_records(paths: list[str]) -> list[dict]:
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            records += [json.loads(line) for line in handle if line.strip()]
    return records


def read_grids(paths: list[str], rename: dict[str, str] | None = None) -> pd.DataFrame:
    """Finished rows of the grids, labelled ``<method> <budget>`` (``rename`` maps labels, e.g.
    a run made before the experiment had budgets: ``{"lora": "lora r8"}``)."""
    frames = [pd.read_csv(p) for p in paths]
    grids = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not grids.empty:
        grids = grids[grids["status"] == "ok"].copy() if "status" in grids else grids
        grids["label"] = grids["method"] + grids["budget"].fillna("").map(lambda b: f" {b}" if b else "")
        grids["label"] = grids["label"].map(lambda label: (rename or {}).get(label, label))
    return grids


def transfer_table(records: list[dict], grids: pd.DataFrame) -> str:
    """Per host: UniHyperLoRA zero-shot / after δθ / its head alone, and each per-host baseline."""
    by_host: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    hosts: list[str] = []
    for record in records:
        if record["what"] == "transfer":
            host = record["host"]
            hosts += [host] if host not in hosts else []
            by_host[host]["zero-shot"].append(record["zero_shot_accuracy"])
            by_host[host]["head alone"].append(record["head_only_accuracy"])
            if "after_delta_accuracy" in record:
                by_host[host]["after δθ"].append(record["after_delta_accuracy"])
        elif record["what"] == "source":
            by_host[record["host"]]["source (fp32)"].append(record["test_accuracy_fp32"])
        elif record["what"] == "satlora":
            by_host[record["host"]]["satlora (script)"].append(record["test_accuracy"])
    labels = sorted(grids["label"].unique()) if not grids.empty else []
    for _, row in grids.iterrows():
        host = row["backbone"]
        hosts += [host] if host not in hosts else []
        by_host[host][row["label"]].append(float(row["primary_value"]))
    columns = ["source (fp32)", "zero-shot", "after δθ", "head alone", "satlora (script)", *labels]
    columns = [c for c in columns if any(by_host[h].get(c) for h in hosts)]
    lines = ["| host | " + " | ".join(f"UniHyperLoRA {c}" if c in ("source (fp32)", "zero-shot", "after δθ", "head alone") else c for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for host in hosts:
        lines.append(f"| {_host_label(host)} | " + " | ".join(_cell(by_host[host].get(c, [])) for c in columns) + " |")
    return "\n".join(lines)


def cost_table(records: list[dict], grids: pd.DataFrame) -> str:
    """Adapter bytes and extra FLOPs (fvcore, 128 tokens) per method and host."""
    rows: dict[tuple[str, str], tuple[set, set]] = defaultdict(lambda: (set(), set()))
    source_bytes = {r["adapter_bytes"] for r in records if r["what"] == "source"}  # the file every host loads
    for record in records:
        if record["what"] == "transfer":
            rows[("UniHyperLoRA", record["host"])][0].update(source_bytes)
            rows[("UniHyperLoRA", record["host"])][1].add(round(100 * record["flop_overhead"], 2))
    for _, row in grids.iterrows():
        key = (row["label"], row["backbone"])
        rows[key][0].add(int(row["adapter_bytes"]))
        if pd.notna(row.get("flop_overhead")):
            rows[key][1].add(round(100 * float(row["flop_overhead"]), 2))
    lines = ["| method | host | adapter bytes | extra FLOPs % |", "|---|---|---|---|"]
    for (method, host), (sizes, flops) in sorted(rows.items()):
        size_text = " / ".join(f"{s:,}" for s in sorted(sizes)) or "—"
        flop_text = " / ".join(f"{f:.2f}" for f in sorted(flops)) or "—"
        lines.append(f"| {method} | {_host_label(host)} | {size_text} | {flop_text} |")
    return "\n".join(lines)


def new_task_table(records: list[dict]) -> str:
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    sizes: dict[str, tuple[int, int]] = {}
    for record in records:
        if record["what"] == "new_task":
            key = (record["task"], record["host"])
            cells[key][record["mode"]].append(record["test_metric"])
            cells[key]["metric"] = record["primary_metric"]
            if record["mode"] == "delta+head":
                sizes[record["task"]] = (record["delta_params"], record["new_head_params"])
    if not cells:
        return ""
    lines = ["| task (metric) | host | new head + δθ | new head alone (adapter bypassed) | δθ / new-head parameters |", "|---|---|---|---|---|"]
    for (task, host), values in sorted(cells.items()):
        delta, head = sizes.get(task, (0, 0))
        lines.append(f"| {task} ({values['metric']}) | {_host_label(host)} | {_cell(values['delta+head'])} | "
                     f"{_cell(values['head_only'])} | {delta:,} / {head:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", nargs="*", default=[], help="records.jsonl files of benchmarks/unihyper_transfer.py")
    parser.add_argument("--grids", nargs="*", default=[], help="results.csv files of pefthub grid runs")
    parser.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW", help="relabel grid methods, e.g. lora='lora r8'")
    args = parser.parse_args()
    rename = dict(item.split("=", 1) for item in args.rename)
    missing = [p for p in [*args.records, *args.grids] if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"error: file(s) not found: {missing}")
    records, grids = read_records(args.records), read_grids(args.grids, rename)
    print("SST-2 dev accuracy per host (mean ± std (seeds)):\n")
    print(transfer_table(records, grids))
    print("\nCost per host:\n")
    print(cost_table(records, grids))
    table = new_task_table(records)
    if table:
        print("\nNew tasks (the sst2 adapter loaded without its head):\n")
        print(table)


if __name__ == "__main__":
    main()
