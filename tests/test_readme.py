"""The commands of the README and of the docs pages work as written after the README's set-up commands: they run the
environment's interpreter (``.venv/bin/python``), and the example of docs/own-data.md ("Use your own data") writes
where git does not look and gives a task no model solves perfectly."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import ROOT, run_dir_of, run_script

README = (ROOT / "README.md").read_text()
#: docs/results.md records each table's command as it was typed when the table was made
RECORDS = {"results.md"}
PAGES = [ROOT / "README.md", *(p for p in sorted((ROOT / "docs").glob("*.md")) if p.name not in RECORDS)]


def test_commands_use_the_environment_of_the_set_up():
    for page in PAGES:
        text = page.read_text()
        bare = re.findall(r"(?:^|`)\s*(python3? [\w./-]+\.py[^\n`]*)", text, flags=re.M)
        assert not bare, f"{page.relative_to(ROOT)}: commands without .venv/bin/: {bare}"
        assert not re.findall(r"(?:^|[`(])pip install", text, flags=re.M), page.relative_to(ROOT)


def test_set_up_says_which_interpreter_the_commands_run():
    start = README.index("## Set-up\n")
    setup = README[start:README.index("\n## ", start)]
    assert ".venv/bin/python" in setup and "source .venv/bin/activate" in setup


def test_own_data_example_writes_ignored_files_and_is_not_solved_perfectly(tmp_path):
    section = (ROOT / "docs" / "own-data.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    commands = re.findall(r"^\.venv/bin/python (main-[\w-]+\.py) (.*?)(?:\\|#|$)", section, flags=re.M)
    assert commands and all("--data_root data/mydata" in argv for _, argv in commands)
    subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, check=True, timeout=120)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.npy"))
    assert written == ["data/mydata/labels.npy", "data/mydata/m1.npy", "data/mydata/m2.npy"]
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "data/" in ignored and "runs/" in ignored  # the example's data and its runs leave `git status` clean
    result = run_script("main-S.py", "--database", "Paired", "--data_root", tmp_path / "data" / "mydata", "--mode",
                        "m1", "--epochs", "3", "--no-record", "--threads", "1", "--out_dir", tmp_path / "runs")
    accuracy = json.loads((run_dir_of(result) / "results.json").read_text())["metrics"]["test"]["accuracy"]
    assert 0.0 < accuracy < 1.0
