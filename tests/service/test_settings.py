"""Every setting is an NACS_* variable documented in .env.example with its default."""

from __future__ import annotations

import re

from service.settings import ApiSettings
from tests.stack import REPO


def test_env_example_documents_every_setting_with_its_default() -> None:
    text = (REPO / ".env.example").read_text()
    documented = dict(re.findall(r"^#?\s*(NACS_[A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE))
    expected = {f"NACS_{name.upper()}": field for name, field in ApiSettings.model_fields.items()}
    assert set(expected) <= set(documented), sorted(set(expected) - set(documented))
    for variable, field in expected.items():
        default = field.default
        if default is None:
            continue
        shown = documented[variable]
        if isinstance(default, bool):
            assert shown in ("1", "0", "true", "false"), variable
            assert (shown in ("1", "true")) == default, variable
        elif isinstance(default, (int, float)):
            assert float(shown) == float(default), variable
        else:
            assert shown == default, variable


def test_settings_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("NACS_QUEUE", "from-env")
    monkeypatch.setenv("NACS_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("NACS_STORAGE_URI", "relative/folder")
    settings = ApiSettings(_env_file=None)
    assert settings.queue == "from-env" and settings.max_attempts == 5
    assert settings.storage_uri.startswith("file:///") and settings.storage_uri.endswith(
        "/relative/folder"
    )
