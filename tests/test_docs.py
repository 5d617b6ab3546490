"""The README says what the code does: its option table, commands and links."""

from __future__ import annotations

import json
import re
from pathlib import Path

from nacs_engine.config import option_fields

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_option_is_documented_with_its_default_and_range() -> None:
    rows = {
        match.group(1): (match.group(2), match.group(3))
        for match in re.finditer(
            r"^\| `(\w+)` \| `([^`]*)` \| (.+?) \|$", README, flags=re.MULTILINE
        )
    }
    for option in option_fields():
        assert option.name in rows, (
            f"README: option {option.name} is missing from the options table"
        )
        default, meaning = rows[option.name]
        assert json.loads(default) == option.default, f"README: default of {option.name}"
        assert meaning == option.metadata["doc"], f"README: description of {option.name}"
    documented = set(rows) - {"row", "label", "soft_label", "weight", "uncertainty"}
    assert documented <= {f.name for f in option_fields()}, (
        "README documents options the engine lacks"
    )


def test_quick_start_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", README, flags=re.MULTILINE):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), (
            f"Makefile has no target {target}"
        )
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_local_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"


def test_settings_named_in_the_readme_exist() -> None:
    documented = set(re.findall(r"NACS_[A-Z_]+", (ROOT / ".env.example").read_text()))
    for name in set(re.findall(r"NACS_[A-Z_]+", README)) - {
        "NACS_DATA_DIR",
        "NACS_HOME",
        "NACS_BASE_URL",
        "NACS_API_KEY",
        "NACS_TEST_REDIS_URL",
        "NACS_SCREENSHOTS",
    }:
        assert name in documented, f"README names {name}, which .env.example does not document"


def test_files_named_in_the_code_exist() -> None:
    """A docstring or comment that names a document names one in the repository."""
    for package in ("nacs_engine", "worker", "service", "nacs_client", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            for name in re.findall(r"[\w./-]*\b[\w-]+\.md\b", path.read_text()):
                assert (ROOT / name).exists(), f"{path.relative_to(ROOT)} names {name}"


def test_benchmarks_page_is_a_reference_with_resolving_links() -> None:
    page = ROOT / "docs" / "BENCHMARKS.md"
    text = page.read_text()
    assert len(text.splitlines()) < 400
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (page.parent / target).resolve().exists(), f"BENCHMARKS.md links to {target}"
    for design in ("ENGINE.md", "API.md"):
        assert (ROOT / "docs" / "design" / design).exists()
