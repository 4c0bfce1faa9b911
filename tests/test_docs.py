"""The documentation holds together: README.md and every page of docs/.

What is checked, and by which rule:

* **Links.** Every relative Markdown link or image outside code (``[text](target)``, ``![alt](target)``) resolves:
  the file exists, relative to the page, and a ``#anchor`` names a heading of the target page by GitHub's rule (the
  heading's text without Markdown markup, lower case, every character other than a letter, digit, space, ``-`` or
  ``_`` dropped, spaces turned into ``-``; a repeated heading gets ``-1``, ``-2``, ...).
* **Scripts and paths.** Every ``main-*.py`` / ``test-*.py`` named anywhere is a script at the top level. In inline
  code, a word with a ``/`` whose first part is a tracked top-level file or folder (``utils/cli.py``,
  ``datasets/embedded/uci_mfeat.md``, ``docs/sweep.md``) exists, unless it holds a placeholder (``<...>``, ``*``,
  ``{...}``); a bare ``name.py`` is the name of a tracked file (top level or below), or one of ``EXTERNAL``.
* **Flags.** A *command* is a code-block line, or an inline code span, that starts with ``.venv/bin/python
  SCRIPT.py`` or ``python SCRIPT.py`` (after an optional ``time``); a line ending in ``\\`` goes on on the next one,
  and a `` #`` starts a comment. SCRIPT must exist, and every ``--flag`` of the command must be one its parser
  accepts; for ``reproduce.py``, the flags after a lone ``--`` (they go to the runs) must be accepted by some
  ``main-*.py``. Anywhere in inline code, ``METHOD:--flag`` (``reproduce.py --set``) needs ``--flag`` in
  ``main-METHOD.py``. Every other ``--flag`` in inline code that starts with ``--`` ("``--hidden_dim_factor`` (2)")
  must be accepted by some script of the repository, some registered method (``utils.main(NAME)``) or some shell
  script (a ``--word`` in its text); the placeholders in ``PLACEHOLDER_FLAGS`` and names with ``*`` are not flags.
  A parser is the script's own: the script runs as ``__main__`` with ``argparse.ArgumentParser.parse_args``
  replaced by a stop that hands back the parser, so what is checked is exactly what the script builds
  (``utils.cli.build_parser(get_method(NAME))`` for ``main-NAME.py``, reproduce.py's, the preprocessing scripts').
* **README references.** A page's ``README, section "X"`` names a heading of README.md.
* **Results.** The README's results table (the bold caption and the table under "## Results") equals the table of
  the same caption in the section of its database (read from the table's column names) in docs/results.md, row
  for row: tables are found by their headings and captions, not by their numbers.
* The README stays a front page (at most ``README_MAX_LINES`` lines).
"""
from __future__ import annotations

import argparse
import functools
import re
import runpy
import subprocess
import sys
from pathlib import Path
from unittest import mock

import utils
from conftest import ROOT
from kd_methods import all_methods

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220
#: bare ``name.py`` the docs name that are not files of this repository
EXTERNAL = {"avmnist_gen.py": "the MFAS fork's AV-MNIST generator (docs/data.md)"}
#: ``--words`` the docs use for "a flag" in general
PLACEHOLDER_FLAGS = {"--x", "--no-x", "--flag"}
COMMAND = re.compile(r"^(?:time\s+)?(?:\.venv/bin/)?python3?\s+([\w./-]+\.py)\b(.*)$", re.S)
FLAG = re.compile(r"^--[A-Za-z][\w-]*")
#: where scripts live: the top level and these folders
SCRIPT_FOLDERS = ("", "data_preprocess", "benchmarks", "tools")
SCRIPT_NAME = re.compile(r"(?<![\w/<-])((?:main|test)-[A-Za-z0-9_-]+\.py)\b")


def tracked() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.split()


TRACKED = tracked()
TOP_LEVEL = {path.split("/")[0] for path in TRACKED}


# -- reading Markdown -------------------------------------------------------------------------------------------------

def split_fences(text: str) -> tuple[str, list[str]]:
    """(the text with fenced code blocks blanked out, the blocks' lines)."""
    prose, block_lines, inside = [], [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            inside = not inside
            prose.append("")
        elif inside:
            block_lines.append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), block_lines


def inline_code(prose: str) -> list[str]:
    return [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]


def heading_text(line: str) -> str:
    text = line.lstrip("#").strip()
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link shows its text
    return text.replace("`", "")


def anchors(page: Path) -> set[str]:
    prose, _ = split_fences(page.read_text())
    seen: dict[str, int] = {}
    result = set()
    for line in prose.split("\n"):
        if re.match(r"^#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", heading_text(line).lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def commands(page: Path) -> list[tuple[str, list[str]]]:
    """(script, the words after it) of every command of the page (module docstring: "Flags")."""
    prose, block_lines = split_fences(page.read_text())
    joined, lines = "", []
    for line in block_lines:  # a line ending in \ goes on
        joined += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            lines.append(joined)
            joined = ""
    found = []
    for text in [*lines, *inline_code(prose)]:
        match = COMMAND.match(text.strip())
        if match:
            found.append((match.group(1), re.split(r"\s+#", match.group(2))[0].split()))
    return found


# -- the scripts' parsers ----------------------------------------------------------------------------------------------

class _Parsed(Exception):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def _capture(run, argv0: str) -> set[str]:
    def stop(self, *args, **kwargs):
        raise _Parsed(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", stop), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", stop), \
            mock.patch.object(sys, "argv", [argv0]):
        try:
            run()
        except _Parsed as parsed:
            return set(parsed.parser._option_string_actions)
    raise AssertionError(f"{argv0} built no argparse parser")


@functools.lru_cache(maxsize=None)
def flags_of(script: str) -> frozenset[str]:
    """The option strings of ``script``'s own parser (a path relative to the repository)."""
    path = ROOT / script
    return frozenset(_capture(lambda: runpy.run_path(str(path), run_name="__main__"), str(path)))


def parsed_scripts() -> list[str]:
    """Every tracked script with a command line of its own (it reads argparse or goes through ``utils``)."""
    found = []
    for path in TRACKED:
        if not path.endswith(".py") or path.rpartition("/")[0] not in SCRIPT_FOLDERS:
            continue
        text = (ROOT / path).read_text()
        has_command_line = "argparse" in text or re.search(r"^(?:import|from) utils", text, re.M)
        if '__name__ == "__main__"' in text and has_command_line:
            found.append(path)
    return found


@functools.lru_cache(maxsize=None)
def flags_of_methods() -> frozenset[str]:
    flags: set[str] = set()
    for name in all_methods():
        flags |= _capture(lambda: utils.main(name), f"{name}.py")
    return frozenset(flags)


@functools.lru_cache(maxsize=None)
def every_flag() -> frozenset[str]:
    flags = set(flags_of_methods())
    for script in parsed_scripts():
        flags |= flags_of(script)
    for path in TRACKED:
        if path.endswith(".sh"):
            flags |= set(re.findall(r"--[A-Za-z][\w-]*", (ROOT / path).read_text()))
    return frozenset(flags)


@functools.lru_cache(maxsize=None)
def flags_of_runs() -> frozenset[str]:
    """Flags that some script of a sweep's runs accepts (``reproduce.py ... -- FLAGS``)."""
    return frozenset().union(*(flags_of(p) for p in TRACKED if re.fullmatch(r"main-[\w-]+\.py", p)
                               and p != "main-MFH.py"))


def flag_words(words) -> list[str]:
    return [match.group(0) for word in words for match in [FLAG.match(word)] if match]


# -- the checks ------------------------------------------------------------------------------------------------------

def test_every_relative_link_resolves():
    dead = [f"{page.relative_to(ROOT)}: {problem}" for page in PAGES for problem in dead_links(page)]
    assert not dead, f"dead links: {dead}"


def dead_links(page: Path) -> list[str]:
    prose, _ = split_fences(page.read_text())
    dead = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            dead.append(f"{target}: no file {resolved.relative_to(ROOT) if ROOT in resolved.parents else resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            dead.append(f"{target}: no heading '#{anchor}' in {resolved.relative_to(ROOT)}")
    return dead


def test_every_script_and_path_named_exists():
    missing = {page.relative_to(ROOT).as_posix(): names for page in PAGES for names in [missing_names(page)] if names}
    assert not missing, f"named, but the repository does not have them: {missing}"


def missing_names(page: Path) -> list[str]:
    text = page.read_text()
    prose, _ = split_fences(text)
    missing = [name for name in SCRIPT_NAME.findall(text) if name not in TOP_LEVEL]
    basenames = {path.rsplit("/", 1)[-1] for path in TRACKED}
    for span in inline_code(prose):
        for word in span.split():
            word = word.strip(".,;:()'\"")
            if re.search(r"[<>*{}]", word) or "://" in word:
                continue
            if "/" in word and word.split("/")[0] in TOP_LEVEL and not (ROOT / word).exists():
                missing.append(word)
            elif "/" not in word and re.fullmatch(r"[\w.-]+\.py", word) and word not in basenames | set(EXTERNAL):
                missing.append(word)
    return sorted(set(missing))


def test_every_flag_of_a_command_is_accepted_by_its_script():
    wrong = [f"{page.relative_to(ROOT)}: {problem}" for page in PAGES for problem in wrong_command_flags(page)]
    assert not wrong, f"commands with flags their scripts do not have: {wrong}"


def wrong_command_flags(page: Path) -> list[str]:
    wrong = []
    for script, words in commands(page):
        if not (ROOT / script).is_file():
            wrong.append(f"{script} does not exist")
            continue
        own, runs = (words[:words.index("--")], words[words.index("--") + 1:]) if "--" in words else (words, [])
        wrong += [f"{script} {flag}" for flag in flag_words(own) if flag not in flags_of(script)]
        wrong += [f"{script} -- {flag} (no main-*.py has it)" for flag in flag_words(runs)
                  if flag not in flags_of_runs()]
    return wrong


def test_every_flag_named_in_the_text_exists():
    wrong = [f"{page.relative_to(ROOT)}: {flag}" for page in PAGES for flag in unknown_text_flags(page)]
    assert not wrong, f"flags no script or method has: {wrong}"


def unknown_text_flags(page: Path) -> list[str]:
    prose, _ = split_fences(page.read_text())
    wrong = []
    for span in inline_code(prose):
        for method, flag in re.findall(r"(?:^|\s)([\w-]+):(--[A-Za-z][\w-]*)", span):  # --set METHOD:--flag
            script = f"main-{method}.py"
            if (ROOT / script).is_file() and flag not in flags_of(script):
                wrong.append(f"{method}:{flag}")
        if not span.startswith("--") or COMMAND.match(span.strip()):
            continue
        words = [w for w in re.split(r"[\s/]+", span) if "*" not in w and w.split("=")[0] not in PLACEHOLDER_FLAGS]
        wrong += [flag for flag in flag_words(words) if flag not in every_flag()]
    return wrong


def test_readme_sections_named_by_the_docs_exist():
    readme = {heading_text(line) for line in split_fences((ROOT / "README.md").read_text())[0].split("\n")
              if re.match(r"^#{1,6} ", line)}
    named = {f"{page.relative_to(ROOT)}: {name}" for page in PAGES[1:]
             for name in re.findall(r"README,? (?:sections? )?[\"']([^\"']+)[\"']", page.read_text())
             if name not in readme}
    assert not named, f"README sections named that README.md does not have: {sorted(named)}"


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}(?:\s.*)?$", text, flags=re.M)  # also "## UCI-MFeat (...)"
    assert match, f"no section '## {heading}'"
    end = re.search(r"^## ", text[match.end():], flags=re.M)
    return text[match.end():match.end() + end.start() if end else None]


def _captioned_tables(section: str) -> list[tuple[str, list[list[str]]]]:
    """(bold caption, rows of cells) of every table right under a ``**caption**`` line."""
    found = []
    for match in re.finditer(r"^\*\*(.+)\*\*\s*\n\s*\n((?:\|.*\n?)+)", section, flags=re.M):
        rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
                for line in match.group(2).strip().split("\n")]
        found.append((match.group(1), rows))
    return found


def test_readme_results_table_equals_the_one_in_docs_results():
    readme = _captioned_tables(_section((ROOT / "README.md").read_text(), "Results"))
    assert readme, "README's '## Results' has no table under a bold caption"
    caption, rows = readme[0]
    databases = {re.sub(r"\s+m[12]$", "", column) for column in rows[0][1:]}
    assert len(databases) == 1, f"README's results table mixes databases: {databases}"
    database = databases.pop()
    results = (ROOT / "docs" / "results.md").read_text()
    kind = caption.split()[0].rstrip(":")  # "Comparison"
    same = [(c, r) for c, r in _captioned_tables(_section(results, database)) if c.split()[0].rstrip(":") == kind]
    assert same, f"docs/results.md, section '{database}', has no '{kind}' table"
    expected_caption, expected_rows = same[0]
    block = "\n".join(["**" + expected_caption + "**", ""]
                      + ["| " + " | ".join(row) + " |" for row in expected_rows])
    assert (caption, rows) == (expected_caption, expected_rows), (
        f"README's results table differs from docs/results.md ('{database}', '{kind}'); copy it:\n{block}")


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move long-form text into a docs/ page"


CODE_DOC_REFERENCE = re.compile(r"docs/([\w.-]+\.md)")


def test_code_points_at_docs_pages_that_exist():
    """Docstrings, help texts and error messages name the docs page of their topic (``docs/data.md, section
    'AV-MNIST'``): every page they name exists, the section they name is one of its headings, and none sends the
    reader to a README section (the README is a front page; its old sections live in docs/)."""
    problems = []
    for name in tracked():
        if not name.endswith(".py") or name.startswith("tests/test_docs"):
            continue
        text = (ROOT / name).read_text(encoding="utf-8")
        for page in CODE_DOC_REFERENCE.findall(text):
            if not (ROOT / "docs" / page).is_file():
                problems.append(f"{name}: docs/{page} does not exist")
        for page, section in re.findall(r"docs/([\w.-]+\.md), section ['\"]([^'\"{]+)['\"]", text):
            if (ROOT / "docs" / page).is_file() and section.lower().replace(" ", "-") not in anchors(ROOT / "docs" /
                                                                                                   page):
                problems.append(f"{name}: docs/{page} has no section '{section}'")
        if re.search(r"README,? (section )?[\"']", text):
            problems.append(f"{name}: points at a README section")
    assert not problems, "\n".join(problems)
