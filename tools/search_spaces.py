"""Rewrite the section "Search spaces" of docs/tuning.md from the method cards (each method's ``search_space``;
the text is ``utils.core.cards.search_spaces_section``), or check that the page is current. Reads the cards with
``ast``: no torch, instant.

    python tools/search_spaces.py            # rewrite the section in place (the rest of the page is kept)
    python tools/search_spaces.py --check    # exit 1 if the page differs from the cards

``tests/test_search_spaces_registry.py`` fails while the page differs from the cards.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.core.atomic import atomic_write_text  # noqa: E402
from utils.core.cards import SEARCH_SPACES_HEADING, search_spaces_section  # noqa: E402

PAGE = ROOT / "docs" / "tuning.md"


def section_bounds(text: str) -> tuple[int, int] | None:
    """(start, end) of the section in the page's text: from its heading to the next ``## `` heading or the end."""
    match = re.search(rf"^{re.escape(SEARCH_SPACES_HEADING)}[ \t]*$", text, flags=re.M)
    if match is None:
        return None
    following = re.search(r"^## ", text[match.end():], flags=re.M)
    return match.start(), match.end() + following.start() if following else len(text)


def section_of(text: str) -> str | None:
    """The section as the page has it (None if the page lacks it), with one final newline."""
    bounds = section_bounds(text)
    return None if bounds is None else text[bounds[0]:bounds[1]].rstrip("\n") + "\n"


def rewritten(text: str) -> str:
    """The page with the section replaced by the cards' (appended if the page lacks it)."""
    section = search_spaces_section()
    bounds = section_bounds(text)
    if bounds is None:
        return text.rstrip("\n") + "\n\n" + section
    start, end = bounds
    return text[:start] + section + ("\n" if end < len(text) else "") + text[end:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the cards")
    args = parser.parse_args(argv)
    text = PAGE.read_text(encoding="utf-8")
    if args.check:
        current = section_of(text) == search_spaces_section()
        print(f"{PAGE.relative_to(ROOT)}: {'current' if current else 'differs from the cards; run without --check'}")
        return 0 if current else 1
    new = rewritten(text)
    if new != text:
        atomic_write_text(PAGE, new)
    print(f"{PAGE.relative_to(ROOT)}: {'rewritten' if new != text else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
