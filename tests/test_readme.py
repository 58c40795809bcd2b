"""README command (b) is exactly what CI runs, and both quickstart commands pin torch first;
the quickstart then shows predict -> share the adapter -> predict elsewhere in three commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quickstart_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    # the install commands (a) and (b); the "Use what you trained" part after them is not an install
    section = section.split("\n### ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_exactly_two_quickstart_commands_pinning_torch_first():
    commands = _quickstart_commands()
    assert len(commands) == 2
    for command in commands:
        assert command.startswith("pip install torch==2.13.0 && ")
        assert "\n" not in command


def test_ci_runs_readme_command_b():
    ci = (REPO / ".ci" / "run").read_text()
    assert _quickstart_commands()[1] in ci.splitlines()


def test_quickstart_shows_predict_share_and_predict_elsewhere_in_three_commands():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[1]
    block = re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)[0].splitlines()
    assert len(block) == 3
    assert block[0].startswith("pefthub predict --adapter runs/quickstart/version_0/adapter --input ")
    assert "tar czf" in block[1] and block[2].startswith("tar xzf") and "pefthub predict --adapter adapter" in block[2]


# ---------------------------------------------------------------- the README as a front door


def _docs() -> list[Path]:
    """README, DEVELOPERS.md and every page under docs/: the documentation that must stand alone."""
    return [REPO / "README.md", REPO / "DEVELOPERS.md", *sorted((REPO / "docs").rglob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_readme_quickstart_figure_is_the_committed_record_of_command_a():
    """The accuracy README states for command (a) is the one its run record holds, and that record
    is of the same command."""
    meta = json.loads((REPO / "results" / "quickstart" / "meta.json").read_text())
    record = json.loads((REPO / "results" / "quickstart" / "record.json").read_text())
    assert _quickstart_commands()[0].endswith(" && " + meta["command"])
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n### ", 1)[0]
    stated = re.findall(r"SST-2 dev accuracy of \*\*(0\.\d{4})\*\* \(MCC (0\.\d{3})", section)
    assert stated == [(f"{record['test_accuracy']:.4f}", f"{record['test_mcc']:.3f}")]
    assert f"1 epoch = {record['train_steps']} steps" in section


def test_readme_is_a_front_door_of_at_most_150_lines():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


def test_readme_links_every_method_page():
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Methods", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\(docs/methods/([\w-]+\.md)\)", table))
    assert linked == {p.name for p in (REPO / "docs" / "methods").glob("*.md")}


def test_every_relative_link_resolves_to_a_file_and_heading_in_the_repo():
    broken = []
    for page in _docs():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken


def test_docs_stand_alone_without_files_outside_the_repo():
    for page in _docs():
        text = page.read_text()
        assert "DESIGN.md" not in text, page
        assert "../shared" not in text, page
    # code comments and config headers cite the repository's own docs too
    sources = [p for folder in ("pefthub", "configs", "benchmarks", "scripts", "tests") for p in (REPO / folder).rglob("*")
               if p.suffix in (".py", ".yaml", ".sh") and p.name != "test_readme.py"]
    citing = [str(p.relative_to(REPO)) for p in sources if "DESIGN.md" in p.read_text() or "../shared" in p.read_text()]
    assert not citing, citing
