"""The API's settings: the settings it shares with the workers, plus keys, URI rules and limits.

Every setting is an ``NACS_*`` environment variable; ``.env.example`` lists them.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field

from worker.settings import SharedSettings

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOCAL_TENANT = "local"


class SettingsError(ValueError):
    """The settings cannot run a safe service (no keys, malformed key list)."""


class ApiSettings(SharedSettings):
    """The settings of the API process."""

    api_keys: str | None = None
    """Comma-separated tenant:key pairs, e.g. team-a:secret1,team-b:secret2."""
    api_keys_file: str | None = None
    """File of tenant:key pairs, one per line or comma-separated; # starts a comment."""
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    """Largest request body accepted (413 above)."""
    max_active_jobs_per_tenant: int = Field(default=100, ge=1)
    """Queued plus running jobs a tenant may have (429 above)."""
    api_reaper: bool = True
    """Whether the API process also runs the reaper of lost jobs on a timer."""
    redis_timeout_s: float = Field(default=2.0, gt=0)
    """Connect timeout of the API's Redis calls."""

    def tenant_keys(self) -> dict[str, str]:
        """Map of API key -> tenant. Raises SettingsError for malformed entries."""
        text = self.api_keys or ""
        if self.api_keys_file:
            lines = Path(self.api_keys_file).read_text().splitlines()
            text += "," + ",".join(line.split("#", 1)[0] for line in lines)
        keys: dict[str, str] = {}
        for number, entry in enumerate(filter(None, (e.strip() for e in text.split(","))), start=1):
            tenant, sep, key = entry.partition(":")
            tenant, key = tenant.strip(), key.strip()
            if not sep or not _TENANT.match(tenant) or len(key) < 8:
                raise SettingsError(
                    f"NACS_API_KEYS: entry {number} is not tenant:key "
                    "(tenant of letters, digits, '_.-'; key of 8+ characters)"
                )
            if key in keys and keys[key] != tenant:
                message = f"NACS_API_KEYS: entry {number} reuses a key of tenant {keys[key]}"
                raise SettingsError(message)
            keys[key] = tenant
        return keys

    def check(self) -> dict[str, str]:
        """Validate what a serving process needs; returns the key map."""
        keys = self.tenant_keys()
        if not keys and not self.insecure_local:
            raise SettingsError(
                "no API keys configured: set NACS_API_KEYS (tenant:key,...) or NACS_API_KEYS_FILE, "
                "or NACS_INSECURE_LOCAL=1 to serve one local tenant without authentication"
            )
        return keys
