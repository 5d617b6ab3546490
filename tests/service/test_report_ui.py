"""GET /jobs/{id}/report and the /ui page through the real app and Redis (no worker)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.service.conftest import assert_error
from worker.records import JobError, JobResult, JobStatus


def _body(dataset: Path) -> dict:
    return {"dataset_uri": str(dataset), "ratio": 0.1, "method": "random"}


def _policy(response) -> dict[str, str]:
    """The Content-Security-Policy's directives by name."""
    directives = [part.strip() for part in response.headers["content-security-policy"].split(";")]
    return {d.split(" ", 1)[0]: (d.split(" ", 1)[1] if " " in d else "") for d in directives if d}


def test_the_report_of_a_succeeded_job_is_served_to_its_tenant_only(
    client: TestClient, dataset: Path, tmp_path: Path, beta_headers: dict[str, str]
) -> None:
    store = client.app.state.jobs.store
    job = client.post("/jobs", json=_body(dataset)).json()
    output = tmp_path / "storage" / "alpha" / "jobs" / job["id"]
    result = JobResult(
        output_uri=f"file://{output}", coreset_uri=f"file://{output}/coreset.parquet",
        manifest_uri=f"file://{output}/manifest.json", size=20,
    )
    store.transition(job["id"], JobStatus.running, attempts=1)
    store.transition(job["id"], JobStatus.succeeded, result=result)
    assert_error(client.get(f"/jobs/{job['id']}/report"), 404, "result_missing")
    output.mkdir(parents=True)
    page = "<!DOCTYPE html><html><body><h1>Coreset report</h1><svg></svg></body></html>"
    (output / "report.html").write_text(page)

    served = client.get(f"/jobs/{job['id']}/report")
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/html")
    assert served.text == page
    policy = _policy(served)
    assert policy["default-src"] == "'none'" and "script-src" not in policy, "nothing runs"
    assert "sandbox" in policy and policy["base-uri"] == "'none'"
    assert served.headers["x-content-type-options"] == "nosniff"

    other = client.get(f"/jobs/{job['id']}/report", headers=beta_headers)
    missing = client.get("/jobs/nosuchjob/report")
    assert assert_error(other, 404, "job_not_found") == {
        **assert_error(missing, 404, "job_not_found"), "message": f"no job {job['id']}"
    }, "another tenant's job looks like one that does not exist"
    wrong = {"Authorization": "Bearer not-a-key"}
    assert_error(client.get(f"/jobs/{job['id']}/report", headers=wrong), 401)


def test_a_job_without_a_result_says_why_it_has_no_report(
    client: TestClient, dataset: Path
) -> None:
    store = client.app.state.jobs.store
    queued = client.post("/jobs", json=_body(dataset)).json()
    assert_error(client.get(f"/jobs/{queued['id']}/report"), 409, "job_not_succeeded", "queued")
    failed = client.post("/jobs", json=_body(dataset)).json()
    error = JobError(code="labels_not_binary", message="label: 2 is not 0/1")
    store.transition(failed["id"], JobStatus.failed, error=error)
    message = assert_error(
        client.get(f"/jobs/{failed['id']}/report"), 409, "job_not_succeeded"
    )["message"]
    assert "failed" in message and "labels_not_binary" in message


def test_the_page_and_its_assets_are_served_under_a_strict_policy(client: TestClient) -> None:
    page = client.get("/ui", headers={})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = _policy(page)
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "<noscript>" in page.text and "needs JavaScript" in page.text
    assert '<script src="/ui/app.js"' in page.text
    assert "<script>" not in page.text, "no inline script"
    assert "http://" not in page.text and "https://" not in page.text, "no other origin"
    script = client.get("/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "sessionStorage" in script.text and "Authorization" in script.text
    assert "localStorage" not in script.text and "document.cookie" not in script.text
    assert "innerHTML" not in script.text, "the page writes server data as text only"
    style = client.get("/ui/app.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")


def test_the_report_route_and_the_page_are_in_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    report = paths["/jobs/{job_id}/report"]["get"]
    assert "text/html" in report["responses"]["200"]["content"]
    assert {"401", "404", "409"} <= set(report["responses"])
    for status in ("401", "404", "409"):
        assert set(report["responses"][status]["content"]) == {"application/json"}, status
    assert "text/html" in paths["/ui"]["get"]["responses"]["200"]["content"]
    assert "/ui/app.js" not in paths
