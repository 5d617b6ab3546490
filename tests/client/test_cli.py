"""The nacs CLI against a scripted service: output, tables and exit codes."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from nacs_client import Client
from nacs_client import cli as cli_module
from nacs_client.cli import CliState, main
from tests.client.fakes import BASE_URL, FakeClock, ScriptedService, error_response, job_json


def ok(body, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


def invoke(service: ScriptedService, *args: str, env: dict[str, str] | None = None):
    clock = FakeClock()
    seen: dict[str, object] = {}

    def factory(base_url, api_key):
        seen.update(base_url=base_url, api_key=api_key)
        return Client(
            base_url or BASE_URL,
            api_key,
            transport=service.transport,
            sleep=clock.sleep,
            clock=clock,
        )

    result = CliRunner().invoke(main, list(args), obj=CliState(client_factory=factory), env=env)
    result.seen = seen  # type: ignore[attr-defined]
    return result


def test_submit_prints_the_job_id():
    service = ScriptedService(ok(job_json("job-42"), 202))
    result = invoke(
        service,
        "submit",
        "s3://bucket/train.parquet",
        "--ratio",
        "0.1",
        "--method",
        "nacs",
        "--option",
        "rounds=2",
        "--option",
        "backbone=dcnv2",
        "--option",
        "class_balance=none",
        "--feature-column",
        "a",
        "--feature-columns",
        "b,c",
        "--numeric-columns",
        "c",
        "--no-numeric-detection",
        "--column-names",
        "label,a",
        "--column-name",
        "b",
        "--column-name",
        "c",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "job-42\n"
    assert service.bodies() == [
        {
            "dataset_uri": "s3://bucket/train.parquet",
            "ratio": 0.1,
            "method": "nacs",
            "options": {"rounds": 2, "backbone": "dcnv2", "class_balance": "none"},
            "feature_columns": ["a", "b", "c"],
            "numeric_columns": ["c"],
            "numeric_detection": False,
            "column_names": ["label", "a", "b", "c"],
        }
    ]


def test_submit_keeps_an_empty_column_name_for_the_service_to_refuse():
    # names are positional: dropping an empty one would shift the names after it
    service = ScriptedService(ok(job_json("job-42"), 202))
    arguments = ["submit", "s3://b/t.csv", "--ratio", "0.1", "--column-names", "a,,label,"]
    assert invoke(service, *arguments).exit_code == 0
    assert service.bodies()[0]["column_names"] == ["a", "", "label"]


def test_global_options_reach_the_client():
    service = ScriptedService(ok(job_json()))
    result = invoke(service, "--base-url", "http://x.test", "--api-key", "k1", "status", "job-1")
    assert result.exit_code == 0
    assert result.seen == {"base_url": "http://x.test", "api_key": "k1"}
    result = invoke(
        service, "status", "job-1", env={"NACS_BASE_URL": "http://env.test", "NACS_API_KEY": "k2"}
    )
    assert result.seen == {"base_url": "http://env.test", "api_key": "k2"}


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "file:///d.parquet"],
        ["submit", "file:///d.parquet", "--ratio", "0.1", "--size", "5"],
        ["submit", "file:///d.parquet", "--ratio", "0.1", "--option", "novalue"],
        ["submit", "file:///d.parquet", "--ratio", "1.5"],
        ["jobs", "--limit", "0"],
        ["jobs", "--status", "done"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(args):
    service = ScriptedService(ok(job_json(), 202))
    result = invoke(service, *args)
    assert result.exit_code == 2, result.output
    assert service.requests == []
    assert "Traceback" not in result.output


def test_submit_wait_prints_the_finished_job():
    succeeded = job_json(
        "job-1",
        "succeeded",
        result={
            "output_uri": "file:///out/job-1/",
            "coreset_uri": "file:///out/job-1/coreset.parquet",
            "manifest_uri": "file:///out/job-1/manifest.json",
            "size": 10,
        },
    )
    service = ScriptedService(
        ok(job_json("job-1"), 202),
        ok(job_json("job-1", "running", phase="selecting", fraction=0.5)),
        ok(succeeded),
    )
    result = invoke(
        service, "submit", "file:///d.parquet", "--size", "10", "--wait", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["status"] == "succeeded"
    assert lines["size"] == "10"
    assert lines["coreset"] == "file:///out/job-1/coreset.parquet"


def test_submit_wait_json():
    service = ScriptedService(ok(job_json("job-1"), 202), ok(job_json("job-1", "succeeded")))
    result = invoke(service, "submit", "file:///d.parquet", "--size", "10", "--wait", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["status"] == "succeeded"


def test_wait_on_a_failed_job_exits_1_with_one_error_line():
    failed = job_json(
        "job-1", "failed", error={"code": "no_label_column", "message": "no column 'label'"}
    )
    service = ScriptedService(ok(job_json("job-1", "running", phase="loading")), ok(failed))
    result = invoke(service, "wait", "job-1")
    assert result.exit_code == 1
    # Off a terminal, progress lines come first; the error is the one last line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: job job-1 failed (no_label_column): no column 'label'"]
    assert result.stderr.endswith(errors[0] + "\n")
    assert "no_label_column: no column 'label'" in result.stdout


def test_wait_on_a_cancelled_job_exits_1():
    service = ScriptedService(ok(job_json("job-1", "cancelled")))
    result = invoke(service, "wait", "job-1")
    assert result.exit_code == 1
    assert "cancelled" in result.stderr


def test_wait_timeout_exits_6():
    service = ScriptedService(ok(job_json("job-1", "running", phase="selecting", fraction=0.3)))
    result = invoke(service, "wait", "job-1", "--timeout", "3", "--poll-interval", "1")
    assert result.exit_code == 6
    assert "did not finish within 3 s" in result.stderr


@pytest.mark.parametrize(
    ("response", "code"),
    [
        (error_response(404, "job_not_found", "no job job-1"), 3),
        (error_response(401, "unauthorized", "missing or unknown API key"), 4),
        (error_response(503, "unavailable", "redis is unreachable"), 5),
        (error_response(429, "rate_limited", "too many jobs"), 5),
        (error_response(500, "internal", "oops"), 5),
        (error_response(409, "idempotency_conflict", "key reused"), 2),
        (error_response(422, "invalid_request", "ratio: must be < 1", {"field": "ratio"}), 2),
        (httpx.ConnectError("connection refused"), 5),
    ],
)
def test_errors_map_to_exit_codes(response, code):
    result = invoke(ScriptedService(response), "status", "job-1")
    assert result.exit_code == code
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_status_shows_a_readable_job():
    body = job_json("job-1", "running", phase="denoising", fraction=0.625, message="pass 5 of 8")
    result = invoke(ScriptedService(ok(body)), "status", "job-1")
    assert result.exit_code == 0
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["status"] == "running"
    assert lines["progress"] == "denoising 62%  pass 5 of 8"
    assert lines["budget"] == "ratio 0.1"
    assert lines["created"] == "2026-11-29 20:00:00"


def test_jobs_prints_an_aligned_table_across_pages():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("cursor") is None:
            return ok(
                {
                    "jobs": [
                        job_json(
                            "job-long-identifier", "running", phase="selecting", fraction=0.42
                        ),
                        job_json(
                            "job-2",
                            "succeeded",
                            result={
                                "output_uri": "file:///o/",
                                "coreset_uri": "file:///o/coreset.parquet",
                                "manifest_uri": "file:///o/manifest.json",
                                "size": 1234,
                            },
                        ),
                    ],
                    "next_cursor": "c1",
                }
            )
        return ok({"jobs": [job_json("job-3", "queued")], "next_cursor": None})

    service = ScriptedService(answer)
    result = invoke(service, "jobs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "PHASE", "PROGRESS", "CREATED", "SIZE"]
    assert lines[1].split() == [
        "job-long-identifier",
        "running",
        "selecting",
        "42%",
        "2026-11-29",
        "20:00:00",
        "-",
    ]
    assert lines[2].split() == ["job-2", "succeeded", "-", "100%", "2026-11-29", "20:00:00", "1234"]
    assert lines[3].split() == ["job-3", "queued", "-", "-", "2026-11-29", "20:00:00", "-"]
    # Columns are aligned: every column starts at the same offset on every line.
    starts = [
        line.index(word)
        for line, word in zip(lines, ["ID", "job-long", "job-2", "job-3"], strict=True)
    ]
    assert len(set(starts)) == 1
    status_column = lines[0].index("STATUS")
    assert [line[status_column:].split()[0] for line in lines[1:]] == [
        "running",
        "succeeded",
        "queued",
    ]


def test_jobs_limit_and_status_filter():
    service = ScriptedService(
        ok({"jobs": [job_json(f"j{i}", "failed") for i in range(5)], "next_cursor": "c"})
    )
    result = invoke(service, "jobs", "--status", "failed", "--limit", "2")
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 3
    assert len(service.requests) == 1
    assert dict(service.requests[0].url.params) == {"status": "failed", "limit": "2"}


def test_jobs_when_there_are_none():
    result = invoke(ScriptedService(ok({"jobs": [], "next_cursor": None})), "jobs")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no jobs" in result.stderr


def test_cancel():
    service = ScriptedService(ok(job_json("job-1", "cancelled")))
    result = invoke(service, "cancel", "job-1")
    assert result.exit_code == 0
    assert result.stdout.split() == ["job-1", "cancelled"]
    assert service.requests[0].url.path == "/jobs/job-1/cancel"


def test_download(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    pq.write_table(
        pa.table(
            {"row": [0], "label": [1], "soft_label": [0.9], "weight": [1.0], "uncertainty": [0.1]}
        ),
        folder / "coreset.parquet",
    )
    (folder / "manifest.json").write_text('{"job_id": "job-1"}')
    succeeded = job_json(
        "job-1",
        "succeeded",
        result={
            "output_uri": folder.as_uri(),
            "coreset_uri": (folder / "coreset.parquet").as_uri(),
            "manifest_uri": (folder / "manifest.json").as_uri(),
            "size": 1,
        },
    )
    service = ScriptedService(ok(succeeded), ok({"job_id": "job-1"}))
    result = invoke(service, "download", "job-1", str(tmp_path / "here"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        str(tmp_path / "here" / "coreset.parquet"),
        str(tmp_path / "here" / "manifest.json"),
    ]
    assert (tmp_path / "here" / "manifest.json").read_text() == '{"job_id": "job-1"}'


def test_download_of_a_missing_file_is_one_line_exit_7(tmp_path):
    succeeded = job_json(
        "job-1",
        "succeeded",
        result={
            "output_uri": (tmp_path / "gone").as_uri(),
            "coreset_uri": (tmp_path / "gone" / "coreset.parquet").as_uri(),
            "manifest_uri": (tmp_path / "gone" / "manifest.json").as_uri(),
        },
    )
    result = invoke(
        ScriptedService(ok(succeeded), ok({})), "download", "job-1", str(tmp_path / "here")
    )
    assert result.exit_code == 7
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert list((tmp_path / "here").iterdir()) == []


# --- plugins ---------------------------------------------------------------------------------


class FakeEntryPoint:
    def __init__(self, name: str, load):
        self.name = name
        self.value = f"fake:{name}"
        self._load = load

    def load(self):
        return self._load()


def test_plugins_load_lazily_and_fail_with_an_install_hint(monkeypatch):
    import click

    loaded: list[str] = []

    @click.command()
    @click.option("--port", type=int, default=1)
    def serve(port):
        click.echo(f"serving on {port}")

    def load_serve():
        loaded.append("serve")
        return serve

    def load_worker():
        loaded.append("worker")
        raise ModuleNotFoundError("No module named 'rq'", name="rq")

    monkeypatch.setattr(
        cli_module,
        "_plugin_entry_points",
        lambda: {
            "serve": FakeEntryPoint("serve", load_serve),
            "worker": FakeEntryPoint("worker", load_worker),
        },
    )
    runner = CliRunner()
    help_result = runner.invoke(main, ["--help"])
    assert help_result.exit_code == 0
    assert "serve" in help_result.stdout and "worker" in help_result.stdout
    assert loaded == []  # --help imports no plugin

    served = runner.invoke(main, ["serve", "--port", "9"])
    assert served.exit_code == 0 and served.stdout == "serving on 9\n"

    missing = runner.invoke(main, ["worker", "--queue", "q"])
    assert missing.exit_code == 2
    assert "'rq' is not installed" in missing.stderr
    assert "pip install 'nacs[server,engine]'" in missing.stderr
    assert "Traceback" not in missing.output


def test_the_installed_entry_points_are_declared():
    names = {entry.name for entry in metadata.entry_points(group="nacs.cli")}
    assert {"serve", "worker", "up", "select", "evaluate"} <= names


def test_an_unexpected_error_is_still_one_line():
    result = invoke(ScriptedService(RuntimeError("the transport broke")), "status", "job-1")
    assert result.exit_code == 7
    assert result.stderr == "error: unexpected RuntimeError: the transport broke\n"


def test_submit_wait_prints_plain_progress_lines_off_a_terminal():
    service = ScriptedService(
        ok(job_json("job-1"), 202),
        ok(job_json("job-1", "running", phase="selecting", fraction=0.5)),
        ok(job_json("job-1", "succeeded")),
    )
    result = invoke(service, "submit", "file:///d.parquet", "--size", "10", "--wait")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].split()[:4] == ["job-1", "running", "30.0%", "selecting"]
    assert lines[-1].split() == ["job-1", "succeeded", "100.0%"]
    assert "\r" not in result.stderr, "no bar redrawn in a log"
    assert "status" in result.stdout, "the job itself still goes to stdout"


def _report_service(page: str) -> ScriptedService:
    return ScriptedService(httpx.Response(200, text=page, headers={"content-type": "text/html"}))


def test_report_prints_the_page():
    page = "<!DOCTYPE html><html><body><svg></svg></body></html>"
    service = _report_service(page)
    result = invoke(service, "report", "job-1")
    assert result.exit_code == 0, result.output
    assert result.stdout == page
    assert service.requests[0].url.path == "/jobs/job-1/report"


def test_report_out_writes_the_file_and_open_opens_it(tmp_path, monkeypatch):
    page = "<!DOCTYPE html><html><body>report</body></html>"
    opened: list[str] = []
    monkeypatch.setattr(cli_module.webbrowser, "open", lambda url: opened.append(url) or True)
    target = tmp_path / "r.html"
    result = invoke(_report_service(page), "report", "job-1", "--out", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_text() == page and result.stdout.strip() == str(target)
    assert opened == []
    result = invoke(_report_service(page), "report", "job-1", "--open")
    assert result.exit_code == 0, result.output
    written = Path(result.stdout.strip())
    assert written.read_text() == page and written.name == "report-job-1.html"
    assert opened == [written.as_uri()]


def test_report_of_a_failed_job_exits_2_with_the_reason():
    message = "job job-1 is failed (labels_not_binary: no); a report is written only when..."
    service = ScriptedService(error_response(409, "job_not_succeeded", message))
    result = invoke(service, "report", "job-1")
    assert result.exit_code == 2
    assert "labels_not_binary" in result.stderr and "Traceback" not in result.output
