import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_service_environment(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unit tests never pick up a developer's NACS_* settings (the e2e tests set their own)."""
    if request.node.get_closest_marker("e2e"):
        return
    for name in ("NACS_BASE_URL", "NACS_API_KEY", "NACS_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
