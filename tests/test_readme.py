"""README command (b) is exactly what CI runs, and both quickstart commands pin torch first;
the quickstart then shows predict -> share the adapter -> predict elsewhere in three commands."""

from __future__ import annotations

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
