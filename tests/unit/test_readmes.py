"""README.md and README.fr.md carry the same sections, code blocks and commands."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMAND = re.compile(r"(?:make [a-z-]+|python -m hpc [a-z]+|--[a-z][a-z-]+)")


def sections(path: Path) -> list[tuple[int, int, list[str]]]:
    """Return each heading's level, its number of code blocks, and the commands it names."""
    found: list[tuple[int, int, list[str]]] = []
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if not in_code and found:
                level, blocks, commands = found[-1]
                found[-1] = (level, blocks + 1, commands)
            in_code = not in_code
            continue
        if not in_code and line.startswith("#"):
            found.append((len(line) - len(line.lstrip("#")), 0, []))
        elif found:
            found[-1][2].extend(COMMAND.findall(line))
    return found


def test_french_readme_has_the_english_structure() -> None:
    english = sections(REPO / "README.md")
    french = sections(REPO / "README.fr.md")
    assert [(level, blocks) for level, blocks, _ in english] == [
        (level, blocks) for level, blocks, _ in french
    ]
    for number, ((_, _, en), (_, _, fr)) in enumerate(zip(english, french, strict=True)):
        assert sorted(set(en)) == sorted(set(fr)), f"section {number}: commands differ"
