"""The real app (TestClient) against the tests' Redis, on unique keys per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import ApiSettings
from tests.stack import TENANT_KEYS, delete_keys, make_ctr_parquet, unique_name


@pytest.fixture
def make_settings(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., ApiSettings]]:
    """ApiSettings on unique Redis keys with tenants alpha and beta; keyword arguments override."""
    made: list[ApiSettings] = []

    def make(**overrides: Any) -> ApiSettings:
        name = unique_name("service")
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "redis_prefix": f"{name}:",
            "queue": name,
            "storage_uri": str(tmp_path / "storage"),
            "allowed_uris": f"file://{tmp_path}/data/,s3://allowed-bucket/data/,https://example.com/,beta=s3://beta-only/",
            "api_keys": ",".join(f"{t}:{k}" for t, k in TENANT_KEYS.items()),
            "api_reaper": False,
        }
        values.update(overrides)
        settings = ApiSettings(_env_file=None, **values)
        made.append(settings)
        return settings

    yield make
    for settings in made:
        delete_keys(redis_url, settings.redis_prefix, settings.queue)


@pytest.fixture
def settings(make_settings: Callable[..., ApiSettings]) -> ApiSettings:
    return make_settings()


@pytest.fixture
def client(settings: ApiSettings) -> Iterator[TestClient]:
    """A client of tenant alpha (raise_server_exceptions off: a 500 shows as a response)."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = f"Bearer {TENANT_KEYS['alpha']}"
        yield test_client


@pytest.fixture
def beta_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TENANT_KEYS['beta']}"}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_ctr_parquet(tmp_path / "data" / "ctr.parquet", 200)


def assert_error(
    response: Any, status: int, code: str | None = None, mentions: str | None = None
) -> dict[str, Any]:
    """The uniform error body: {"error": {"code", "message", "details"}}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    if mentions is not None:
        assert mentions in body["error"]["message"], body
    return body["error"]
