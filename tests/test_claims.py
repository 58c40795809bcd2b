"""benchmarks/claims.py: verdicts follow the stated rules, and too little evidence is never a verdict."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("claims", REPO / "benchmarks" / "claims.py")
claims = importlib.util.module_from_spec(_spec)
sys.modules["claims"] = claims  # dataclasses look their module up there
_spec.loader.exec_module(claims)
_export_spec = importlib.util.spec_from_file_location("export_grid", REPO / "benchmarks" / "export_grid.py")
export_grid = importlib.util.module_from_spec(_export_spec)
_export_spec.loader.exec_module(export_grid)

FIELDS = ["method", "task", "seed", "status", "primary_value", "config", "tuned/model.optimizer.lr"]


def _grid(tmp_path: Path, scores: dict[str, list[float]], epochs: int = 3, train_limit: int | None = None) -> Path:
    folder = tmp_path / "grid"
    folder.mkdir()
    rows = []
    for method, values in scores.items():
        for seed, value in enumerate(values):
            config = folder / f"{method}_{seed}.yaml"
            config.write_text(yaml.safe_dump({"trainer": {"max_epochs": epochs}, "data": {"init_args": {"train_limit": train_limit}}}))
            rows.append({"method": method, "task": "sst2", "seed": seed, "status": "ok", "primary_value": value,
                         "config": str(config), "tuned/model.optimizer.lr": 5e-4})
    with open(folder / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def _steps(tmp_path: Path, ops: dict[str, int]) -> Path:
    path = tmp_path / "steps.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["variant", "aten_ops", "median_step_s", "device"])
        writer.writeheader()
        writer.writerows({"variant": v, "aten_ops": n, "median_step_s": n / 1000, "device": "cpu"} for v, n in ops.items())
    return path


def _verdicts(grid: Path | None = None, steps: Path | None = None, records: Path | None = None) -> dict[str, claims.Verdict]:
    scores = claims.read_grid(grid, "sst2", 3) if grid else {}
    found = claims.evaluate(scores, claims.read_step_time(steps), claims.read_records(records))
    return {v.claim: v for v in found}


def test_greater_and_approx_follow_the_stated_rules(tmp_path):
    grid = _grid(tmp_path, {
        "lora": [0.860, 0.865, 0.870],
        "adalora": [0.890, 0.893, 0.896],      # clearly above LoRA
        "fw_lora": [0.884, 0.887, 0.890],      # within 1 point of AdaLoRA
        "iw_lora": [0.862, 0.870, 0.866],      # LoRA's level: ≈ AdaLoRA fails, > LoRA fails
        "glora": [0.893, 0.896, 0.899],
    })
    steps = _steps(tmp_path, {"pefthub_lora": 1000, "fw_lora": 1050, "glora": 1300})
    found = _verdicts(grid, steps)
    assert found["AdaLoRA > LoRA at equal budget"].verdict == claims.HELD
    assert found["FW-LoRA ≈ AdaLoRA at LoRA's cost"].verdict == claims.HELD
    assert found["IW-LoRA ≈ AdaLoRA > LoRA"].verdict == claims.NOT_HELD
    glora = found["GLoRA ≈ AdaLoRA at LoRA speed"]
    assert glora.verdict == claims.NOT_HELD and "1.30×" in glora.measured  # accurate, but 30 % more ops


def test_a_difference_inside_the_seed_noise_is_not_a_win(tmp_path):
    grid = _grid(tmp_path, {"lora": [0.85, 0.87, 0.89], "adalora": [0.86, 0.88, 0.90]})
    verdict = _verdicts(grid)["AdaLoRA > LoRA at equal budget"]
    assert verdict.verdict == claims.NOT_HELD and "within 2·SE" in verdict.why


@pytest.mark.parametrize(("scores", "epochs", "limit", "why"), [
    ({"lora": [0.86, 0.87], "adalora": [0.90, 0.91]}, 3, None, "2 seed(s), 3 needed"),
    ({"lora": [0.86, 0.87, 0.88], "adalora": [0.90, 0.91, 0.92]}, 1, None, "short schedule (1 epoch(s)"),
    ({"lora": [0.86, 0.87, 0.88], "adalora": [0.90, 0.91, 0.92]}, 3, 2000, "2000 train rows"),
])
def test_too_little_evidence_is_shown_but_gets_no_verdict(tmp_path, scores, epochs, limit, why):
    verdict = _verdicts(_grid(tmp_path, scores, epochs, limit))["AdaLoRA > LoRA at equal budget"]
    assert verdict.verdict == claims.UNTESTED and why in verdict.why and "0.9" in verdict.measured
    assert _verdicts()["AdaLoRA > LoRA at equal budget"].verdict == claims.UNTESTED  # no records at all


def test_unihyperlora_claims_from_transfer_records(tmp_path):
    records = []
    for seed in (0, 1, 2):
        records += [
            {"what": "source", "seed": seed, "host": "src", "preset": "spec", "train_examples": None, "epochs": 3,
             "test_accuracy_fp32": 0.85, "adapter_bytes": 253_871, "atoms_per_token": 1.1},
            {"what": "flops", "seed": seed, "overhead": 0.04, "per_forward_overhead": 0.3},
            {"what": "transfer", "seed": seed, "host": "small", "zero_shot_accuracy": 0.80, "delta_steps": 500,
             "after_delta_accuracy": 0.84},
            {"what": "satlora", "seed": seed, "host": "small", "test_accuracy": 0.845},
        ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    found = _verdicts(records=path)
    assert found["adapter file 0.97 MB, within the 1 MB budget"].verdict == claims.HELD
    assert found["+8 % FLOPs over the host's forward"].verdict == claims.HELD
    assert found["k ≈ 1.8 atoms fire per token"].verdict == claims.NOT_HELD  # 1.1 atoms
    assert found["≤ 1 % zero-shot accuracy drop on small"].verdict == claims.NOT_HELD  # 5 points
    assert found["δθ tuning matches per-host training on small"].verdict == claims.HELD  # −0.5 points


def test_the_command_writes_the_document(tmp_path):
    grid = _grid(tmp_path, {"lora": [0.86, 0.87, 0.88], "adalora": [0.85]})
    out = tmp_path / "claims.md"
    assert claims.main(["--grid", str(grid), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Claims") and f"python benchmarks/claims.py --grid {grid}" in text
    assert "| lora | 0.8700 ± 0.0100 | 0.8600 / 0.8700 / 0.8800 | 0.0005 | full |" in text
    assert "| adalora | 0.8500 (one seed) | 0.8500 |" in text  # one seed: no spread to show, not "± 0"


def test_the_committed_claims_page_is_what_its_command_renders(tmp_path, monkeypatch):
    page = REPO / "docs" / "claims.md"
    command = page.read_text().split("Generated by `", 1)[1].split("`", 1)[0]
    args = command.removeprefix("python benchmarks/claims.py ").split()
    out = args.index("--out")
    args[out + 1] = str(tmp_path / "claims.md")
    monkeypatch.chdir(REPO)
    assert claims.main(args) == 0
    rendered = (tmp_path / "claims.md").read_text().replace(str(tmp_path / "claims.md"), "docs/claims.md")
    assert rendered == page.read_text(), "docs/claims.md is stale: rerun the command in its header"


def test_an_exported_grid_reads_like_the_grid_itself(tmp_path):
    """benchmarks/export_grid.py: the committed copy keeps the verdict inputs (scores, schedules,
    tuning trials) without the runs folder it came from."""
    source = _grid(tmp_path, {"lora": [0.86, 0.87, 0.88], "adalora": [0.80, 0.81, 0.82]})
    with open(source / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["run_id"] = f"{row['method']}__s{row['seed']}"
    with open(source / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*FIELDS, "run_id"])
        writer.writeheader()
        writer.writerows(rows)
    (source / "tuning.csv").write_text("group,study,trial,state,value,param/model.optimizer.lr,run_dir\n"
                                       "lora__sst2,s1,1,COMPLETE,0.88,0.0015,x\nlora__sst2,s1,0,COMPLETE,0.87,0.0005,x\n")
    dest = tmp_path / "committed"
    assert export_grid.main([str(source), str(dest)]) == 0
    before = {k: (s.values, s.full) for k, s in claims.read_grid(source, "sst2", 3).items()}
    for config in source.glob("*.yaml"):
        config.unlink()  # the runs folder is gone: only the copy is left
    after = {k: (s.values, s.full) for k, s in claims.read_grid(dest, "sst2", 3).items()}
    assert after == before and all(full for _, full in after.values())
    assert _verdicts(dest)["AdaLoRA > LoRA at equal budget"].verdict == claims.NOT_HELD
    out = tmp_path / "claims.md"
    claims.main(["--grid", str(dest), "--out", str(out)])
    text = out.read_text()
    # trials in order, the lr column named by its key
    assert "| group | model.optimizer.lr | state | validation |" in text
    assert text.index("| lora__sst2 | 0.0005 | COMPLETE | 0.8700 |") < text.index("| lora__sst2 | 0.0015 | COMPLETE | 0.8800 |")


def test_a_grid_with_trials_only_exports_them_and_lists_the_started_ones(tmp_path):
    source = tmp_path / "grid"
    source.mkdir()
    (source / "tuning.csv").write_text("group,study,trial,state,value,param/model.optimizer.lr,run_dir\n"
                                       "lora__sst2,s1,0,COMPLETE,0.82,0.0001666,x\nlora__sst2,s1,1,WAITING,,,x\n")
    assert export_grid.export(source, tmp_path / "copy") == 0
    assert [t["trial"] for t in claims.read_trials(tmp_path / "copy")] == ["0"]  # the queued trial has no values yet
    with pytest.raises(SystemExit, match="neither"):
        export_grid.export(tmp_path / "empty", tmp_path / "copy2")
