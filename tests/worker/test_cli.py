"""``nacs select``: the job's code path from the command line, no server."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from worker.cli import select


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    rng = np.random.default_rng(7)
    n = 1500
    user = rng.integers(0, 40, n)
    item = rng.integers(0, 60, n)
    label = (rng.random(n) < 0.2 + 0.5 * (item % 3 == 0)).astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "clicks.parquet"
    pq.write_table(pa.table({"user": user, "item": item, "label": label}), path)
    return str(path)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("stratified", []),
        ("nacs", ["--option", "rounds=2", "--option", "mc_passes=3", "--option", "min_count=1"]),
    ],
)
def test_select_writes_the_coreset_and_manifest(
    dataset: str, tmp_path, method: str, options: list[str]
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        select, [dataset, "--ratio", "0.1", "--out", str(out), "--method", method, *options]
    )
    assert result.exit_code == 0, result.output
    assert "150 of 1500 rows" in result.output
    table = pq.read_table(out / "coreset.parquet")
    assert table.column_names == ["row", "label", "soft_label", "weight", "uncertainty"]
    rows = table.column("row").to_numpy()
    assert (
        rows.dtype == np.int64
        and len(np.unique(rows)) == 150
        and rows.min() >= 0
        and rows.max() < 1500
    )
    original = pq.read_table(dataset).column("label").to_numpy()
    np.testing.assert_array_equal(table.column("label").to_numpy(), original[rows])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method
    assert manifest["dataset"]["rows"] == 1500 and manifest["coreset"]["rows"] == 150
    # the audit's verdict is on the summary, with each family's difference
    audit = manifest["audit"]
    if "verdict" in audit:
        logistic = audit["families"]["logistic"]
        assert f"audit: {audit['verdict']} (AUC of models on the coreset less on random: " in (
            result.output
        )
        assert f"logistic {logistic['auc_difference']:+.4f} ± " in result.output
    else:
        assert f"audit: none ({audit['skipped']})" in result.output
    if not (manifest.get("noise") or {}).get("set_aside_rows"):
        assert "set aside:" not in result.output


def test_select_says_how_many_rows_it_set_aside(tmp_path) -> None:
    from nacs_engine.data.synthetic import write_synthetic

    path = tmp_path / "flipped.parquet"
    write_synthetic(path, 6_000, n_fields=6, flip_rate=0.2, seed=3)
    out = tmp_path / "out"
    result = CliRunner().invoke(select, [str(path), "--ratio", "0.05", "--out", str(out)])
    assert result.exit_code == 0, result.output
    noise = json.loads((out / "manifest.json").read_text())["noise"]
    assert noise["set_aside_rows"] > 0
    assert (
        f"set aside: {noise['set_aside_rows']:,} rows as likely wrong labels "
        f"({noise['set_aside_positive']:,} given clicks, {noise['set_aside_negative']:,} "
        f"non-clicks) at a flip rate read as {noise['set_aside_flip_rate']:.3f}; "
    ) in result.output
    assert "--option set_aside_factor=0 sets none aside" in result.output


def test_select_with_rare_clicks_says_to_train_with_the_weights(tmp_path) -> None:
    from nacs_engine.data.synthetic import write_synthetic

    path = tmp_path / "rare.parquet"
    write_synthetic(path, 8_000, n_fields=6, click_rate=0.012, flip_rate=0.0, seed=5)
    out = tmp_path / "out"
    result = CliRunner().invoke(select, [str(path), "--ratio", "0.05", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["diagnostics"]["selection"]["class_balance"] == "balanced"
    assert (
        "note: up to half the coreset's rows are clicks (class_balance balanced, as auto takes "
        "where clicks are rare): train with its weights"
    ) in result.output
    # the clicks the coreset holds, well above the data's 1.2%
    assert manifest["coreset"]["clicks"] > 0.2 * manifest["coreset"]["rows"]
    report = json.loads((out / "report.json").read_text())["coreset"]
    assert report["class_balance"] == "balanced"
    table = pq.read_table(out / "coreset.parquet")
    weighted = np.average(table.column("label").to_numpy(), weights=table.column("weight"))
    assert report["weighted_click_rate"] == pytest.approx(weighted)
    assert weighted < 0.5 * report["click_rate"]
    # the soft labels' rate under the weights, near the data's, is printed beside their mean
    soft = np.average(table.column("soft_label").to_numpy(), weights=table.column("weight"))
    assert manifest["coreset"]["weighted_soft_label_mean"] == pytest.approx(soft, rel=1e-5)
    assert f"in the soft labels, {soft:.3f} under the weights; data" in result.output
    page = (out / "report.html").read_text()
    assert f"weighted, its click rate is {100 * weighted:.2f}%: train with the weights." in page


def test_select_takes_columns_repeated_or_comma_separated(dataset: str, tmp_path) -> None:
    out = tmp_path / "out"
    arguments = [dataset, "--ratio", "0.1", "--method", "random", "--out", str(out)]
    columns = ["--feature-column", "user", "--feature-columns", "item,", "--numeric-column", "item"]
    result = CliRunner().invoke(select, [*arguments, *columns])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request"]["feature_columns"] == ["user", "item"]
    assert manifest["request"]["numeric_columns"] == ["item"]
    assert manifest["dataset"]["fields"] == ["user", "item"]


def test_select_buckets_a_float_score_by_quantiles_and_says_so(tmp_path) -> None:
    rng = np.random.default_rng(3)
    score = rng.random(1500)
    path = tmp_path / "scores.parquet"
    pq.write_table(
        pa.table({"score": score, "label": (rng.random(1500) < score).astype(np.int64)}), path
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        select, [str(path), "--ratio", "0.1", "--out", str(out), "--method", "stratified"]
    )
    assert result.exit_code == 0, result.output
    dataset = json.loads((out / "manifest.json").read_text())["dataset"]
    assert dataset["numeric_buckets"] == {"score": "32 quantile buckets"}
    assert dataset["field_dims"] == [33]
    # with the detection off the score's values are categories
    result = CliRunner().invoke(
        select,
        [
            str(path),
            "--ratio",
            "0.1",
            "--out",
            str(out),
            "--method",
            "stratified",
            "--no-numeric-detection",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request"]["numeric_columns"] == []
    assert manifest["request"]["numeric_detection"] is False
    assert manifest["dataset"]["numeric_buckets"] == {}
    assert manifest["dataset"]["field_dims"] == [1]  # every value seen once: out of vocabulary


@pytest.mark.parametrize(
    ("arguments", "exit_code", "message"),
    [
        (["--ratio", "1.5"], 2, "ratio"),
        (["--ratio", "0.1", "--size", "10"], 2, "error: give exactly one budget: --ratio R"),
        ([], 2, "error: give exactly one budget: --ratio R (a fraction of the rows, e.g. 0.01)"),
        (["--ratio", "0.1", "--option", "bogus=1"], 2, "options.bogus"),
        (["--ratio", "0.1", "--option", "rounds"], 2, "key=value"),
        (["--ratio", "0.1", "--method", "magic"], 2, "method"),
        (["--size", "5000"], 1, "budget_too_large"),
        (["--ratio", "0.0001"], 1, "budget_too_small"),
        (["--ratio", "0.1", "--label-column", "clicked"], 1, "label_column_missing"),
    ],
)
def test_select_bad_input_exits_with_a_clear_message(
    dataset: str, tmp_path, arguments: list[str], exit_code: int, message: str
) -> None:
    result = CliRunner().invoke(
        select, [dataset, "--out", str(tmp_path / "out"), "--method", "random", *arguments]
    )
    assert result.exit_code == exit_code, result.output
    assert message in result.output
    assert "Traceback" not in result.output and "Value error" not in result.output
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_select_names_a_store_that_does_not_answer_by_its_code(tmp_path, monkeypatch) -> None:
    pytest.importorskip("aiohttp")
    from tests.engine.test_data_remote import _free_port
    from worker import tasks

    monkeypatch.setattr(tasks.time, "sleep", lambda seconds: None)
    dataset = f"http://127.0.0.1:{_free_port()}/clicks.parquet"
    result = CliRunner().invoke(select, [dataset, "--ratio", "0.1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    assert "error: storage_unavailable: opening the dataset failed" in result.output


def test_select_refuses_an_out_that_cannot_take_the_result_before_selecting(
    dataset: str, tmp_path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = CliRunner().invoke(select, [dataset, "--ratio", "0.1", "--out", str(a_file)])
    assert result.exit_code == 2 and "is a file, expected a folder" in result.output
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pq.read_table(dataset), parts / "part-0.parquet")
    for out in (parts, parts / "coreset"):
        result = CliRunner().invoke(select, [str(parts), "--ratio", "0.1", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert "holds the dataset's folder" in result.output
    assert sorted(p.name for p in parts.iterdir()) == ["part-0.parquet"]


def test_select_says_an_unexpected_error_in_one_line(dataset: str, tmp_path, monkeypatch) -> None:
    import worker.tasks

    def fail(*args, **kwargs):
        raise RuntimeError("the store said no\nsecond line")

    monkeypatch.setattr(worker.tasks, "execute", fail)
    arguments = [dataset, "--ratio", "0.1", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(select, arguments)
    assert result.exit_code == 7
    assert result.output.strip() == "error: RuntimeError: the store said no"
    debug = CliRunner().invoke(select, arguments, env={"NACS_DEBUG": "1"})
    assert debug.exit_code == 7 and "Traceback" in debug.output


def test_a_rerun_into_the_same_folder_leaves_no_earlier_manifest_beside_new_files(
    dataset: str, tmp_path, monkeypatch
) -> None:
    import worker.tasks

    out = tmp_path / "out"
    first = CliRunner().invoke(
        select, [dataset, "--ratio", "0.1", "--out", str(out), "--method", "random"]
    )
    assert first.exit_code == 0 and (out / "manifest.json").exists()
    assert "replaced" not in first.stderr
    # a rerun that succeeds says what it replaced
    again = CliRunner().invoke(
        select, [dataset, "--ratio", "0.1", "--out", str(out), "--method", "random"]
    )
    assert again.exit_code == 0, again.output
    assert f"note: replaced the earlier result in {out} (of {dataset}, 20" in again.stderr

    def broken_page(content):
        raise OSError("disk full")

    monkeypatch.setattr(worker.tasks, "render_html", broken_page)
    second = CliRunner().invoke(
        select, [dataset, "--ratio", "0.2", "--out", str(out), "--method", "random"]
    )
    assert second.exit_code == 7, second.output
    # no part of either run's result is left: the earlier one went before the new one began
    assert sorted(path.name for path in out.iterdir()) == []


def test_select_notes_an_untrusted_teacher_and_a_field_too_rare_to_count(tmp_path) -> None:
    rng = np.random.default_rng(5)
    n = 1500
    path = tmp_path / "noise.parquet"
    pq.write_table(
        pa.table(
            {
                # labels that no feature explains, and an id seen once per row
                "label": (rng.random(n) < 0.3).astype(np.int64),
                "colour": rng.choice(["red", "green", "blue"], n),
                "request_id": [f"r{i}" for i in range(n)],
            }
        ),
        path,
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(select, [str(path), "--ratio", "0.1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "in the soft labels; data" in result.output  # uniform weights: no weighted rate
    assert "note: the proxy models rank these rows no better than AUC" in result.stderr
    assert "note: no value of request_id is seen often enough" in result.stderr


def test_select_pools_crowded_duplicates_unless_told_not_to(tmp_path) -> None:
    # two fields of three values: nine groups of about 330 identical rows each
    rng = np.random.default_rng(7)
    n = 3000
    region, plan = rng.integers(0, 3, n), rng.integers(0, 3, n)
    path = tmp_path / "few.parquet"
    pq.write_table(
        pa.table(
            {
                "label": (rng.random(n) < 0.1 + 0.1 * region + 0.05 * plan).astype(np.int64),
                "region": [f"r{v}" for v in region],
                "plan": [f"p{v}" for v in plan],
            }
        ),
        path,
    )
    for out, extra, prior in (("a", [], 30.0), ("b", ["--option", "duplicate_prior=0"], 0.0)):
        result = CliRunner().invoke(
            select,
            [str(path), "--ratio", "0.1", "--out", str(tmp_path / out), "--option",
             "audit=false", *extra],
        )
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp_path / out / "manifest.json").read_text())
        teacher = manifest["diagnostics"]["teacher"]
        assert teacher["crowded_share"] == 1.0 and teacher["duplicate_prior"] == prior
        assert manifest["request"]["options"]["duplicate_prior"] == (prior if extra else None)


def test_select_notes_a_float_column_of_many_whole_numbers(tmp_path) -> None:
    rng = np.random.default_rng(6)
    n = 1500
    votes = rng.integers(0, 60, n).astype(np.float64)
    votes[::5] = np.nan
    path = tmp_path / "films.parquet"
    pq.write_table(
        pa.table(
            {
                "label": (rng.random(n) < 0.3).astype(np.int64),
                "genre": rng.choice(["drama", "comedy"], n),
                "votes": votes,
            }
        ),
        path,
    )
    out = tmp_path / "out"
    arguments = [str(path), "--ratio", "0.1", "--method", "random", "--option", "min_count=1"]
    result = CliRunner().invoke(select, [*arguments, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: votes: floating-point, whole numbers only, read as categories" in (
        result.stderr
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["whole_number_columns"] == ["votes"]
    named = [*arguments, "--numeric-columns", "votes", "--out", str(tmp_path / "named")]
    result = CliRunner().invoke(select, named)
    assert result.exit_code == 0 and "whole numbers only" not in result.stderr


def _random_select(path, out, *more: str):
    """``nacs select PATH --ratio 0.1 --method random --out OUT [MORE]``: its result and
    manifest."""
    arguments = [str(path), "--ratio", "0.1", "--method", "random", "--out", str(out), *more]
    result = CliRunner().invoke(select, arguments)
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "manifest.json").read_text())


def test_select_reads_labels_written_minus_one_and_one(tmp_path) -> None:
    rng = np.random.default_rng(7)
    n = 1200
    clicks = rng.random(n) < 0.3
    path = tmp_path / "svm.csv"
    genres = rng.choice(["a", "b"], n)
    rows = [f"{1 if c else -1},{g}\n" for c, g in zip(clicks, genres, strict=True)]
    path.write_text("label,genre\n" + "".join(rows))
    result, manifest = _random_select(path, tmp_path / "out")
    assert "note: the labels are written -1/1" in result.stderr
    assert manifest["dataset"]["label_values"] == "-1/1"
    assert manifest["dataset"]["clicks"] == int(clicks.sum())
    labels = pq.read_table(tmp_path / "out" / "coreset.parquet").column("label").to_numpy()
    assert set(np.unique(labels).tolist()) == {0.0, 1.0}


def test_select_missing_file_is_a_data_error(tmp_path) -> None:
    result = CliRunner().invoke(
        select, [str(tmp_path / "absent.parquet"), "--ratio", "0.1", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "dataset_not_found" in result.output


def test_evaluate_prints_a_table_of_each_method(dataset: str) -> None:
    from worker.cli import evaluate

    result = CliRunner().invoke(
        evaluate,
        [
            dataset,
            "--ratio",
            "0.2",
            "--methods",
            "random,stratified,full",
            "--seeds",
            "2",
            "--option",
            "min_count=1",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| clicks.parquet")]
    # by default each coreset is scored by the backbone and by a logistic regression
    assert sorted((line.split("|")[3].strip(), line.split("|")[6].strip()) for line in rows) == [
        (family, method)
        for family in ("deepfm", "logistic")
        for method in ("full", "random", "stratified")
    ]
    # then the paired differences, seed by seed: stratified less random, for each family
    for family in ("deepfm", "logistic"):
        assert f"clicks.parquet, clean, {family}: method less baseline, seed by seed" in (
            result.stdout
        )
    paired = [line for line in result.stdout.splitlines() if "| stratified | random | 2 |" in line]
    assert len(paired) == 2 and all(line.count("/2") == 2 for line in paired)
    # a line on stderr as each of the twelve runs (seeds x methods x families) ends
    lines = result.stderr.splitlines()
    assert [line.split("]")[0] for line in lines] == [f"[{i}/12" for i in range(1, 13)]
    assert "[1/12]" not in result.stdout


def test_evaluate_names_the_seeds_whose_teacher_was_not_trusted(dataset: str, monkeypatch) -> None:
    import nacs_engine.nacs as nacs_module
    from worker.cli import evaluate

    def run(methods: str, floor: str) -> Result:
        result = CliRunner().invoke(
            evaluate,
            [dataset, "--ratio", "0.2", "--methods", methods, "--seeds", "2", "--evaluators",
             "logistic", "--option", "min_count=1", "--option", f"min_teacher_auc={floor}",
             "--quiet"],
        )
        assert result.exit_code == 0, result.output
        return result

    result = run("nacs,denoised-random", "0.999")
    # untrusted, nacs draws the rows denoised-random draws: every seed a tie, and a note
    paired = [line for line in result.stdout.splitlines()
              if "| nacs | denoised-random | 2 |" in line]
    assert len(paired) == 1 and paired[0].count("0/2 (2 tied)") == 2
    assert "note: the teacher was not trusted on 2 of 2 seeds (seeds 0, 1, counted from 0" in (
        result.stdout
    )
    trusted = run("nacs,random", "0")
    assert "not trusted" not in trusted.stdout and "tied" not in trusted.stdout
    assert "trusted narrowly" not in trusted.stdout
    # with a bar no teacher clears, every trusted seed is named as trusted narrowly
    monkeypatch.setattr(nacs_module, "NARROW_TRUST_STANDARD_ERRORS", float("inf"))
    monkeypatch.setattr(nacs_module, "NARROW_TRUST_SET_ASIDE_SHARE", -1.0)
    narrow = run("nacs,random", "0")
    assert "note: the teacher was trusted narrowly on 2 of 2 seeds (seeds 0, 1, counted from 0" in (
        narrow.stdout
    )


def test_evaluate_gives_each_seed_its_own_split(dataset: str) -> None:
    from nacs_engine.evaluate import split_rows
    from worker.cli import evaluate

    args = [dataset, "--ratio", "0.2", "--methods", "random,stratified,nacs", "--seeds", "2"]
    args += ["--json", "--option", "min_count=1", "--option", "seed=5"]
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    # each row as its run ends: the models of a seed train at once, so in any order within it
    assert [row["seed"] for row in rows] == [0] * 6 + [1] * 6
    assert sorted((row["seed"], row["method"]) for row in rows if row["evaluator"] == "deepfm") == [
        (seed, method) for seed in (0, 1) for method in ("nacs", "random", "stratified")
    ]
    assert sorted(row["evaluator"] for row in rows) == ["deepfm"] * 6 + ["logistic"] * 6
    labels = pq.read_table(dataset).column("label").to_numpy()
    for row in rows:  # seed s trains on the training rows of split 5 + s, whatever the method
        training = split_rows(labels.shape[0], seed=5 + row["seed"])[0]
        assert row["data_click_rate"] == pytest.approx(labels[training].mean(), abs=1e-12)
    assert len({row["data_click_rate"] for row in rows}) == 2
    assert [row["teacher_trusted"] for row in rows if row["method"] != "nacs"] == [None] * 8
    assert all(row["teacher_trusted"] in (True, False) for row in rows if row["method"] == "nacs")
    assert all(row["narrow_trust"] in (True, False) for row in rows if row["method"] == "nacs")
    lines = [line.split("]")[0] for line in result.stderr.splitlines() if line.startswith("[")]
    assert lines == [f"[{i}/12" for i in range(1, 13)]


def test_evaluate_scores_each_coreset_with_every_evaluator_under_the_noise_kind(
    dataset: str,
) -> None:
    from worker.cli import evaluate

    args = [dataset, "--ratio", "0.2", "--methods", "random", "--seeds", "1"]
    args += ["--option", "min_count=1"]
    noisy = ["--evaluators", "deepfm,logistic", "--noise-kind", "clicks-to-non-clicks"]
    noisy += ["--flip-rate", "0.6"]
    result = CliRunner().invoke(evaluate, [*args, *noisy, "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert sorted(row["evaluator"] for row in rows) == ["deepfm", "logistic"]
    assert all(row["noise"] == "clicks-to-non-clicks" and row["flip_rate"] == 0.6 for row in rows)
    result = CliRunner().invoke(evaluate, [*args, "--flip-rate", "0.6"])
    assert result.exit_code == 2 and "flip_rate" in result.output  # symmetric flips stay below 0.5
    result = CliRunner().invoke(evaluate, [*args, "--evaluators", "forest"])
    assert result.exit_code == 2 and "forest" in result.output
    result = CliRunner().invoke(evaluate, [*args, "--noise-kind", "burst", "--flip-rate", "0.1"])
    assert result.exit_code == 2 and "noise_kind" in result.output


def test_evaluate_noise_kind_needs_a_flip_rate(dataset: str) -> None:
    from worker.cli import evaluate

    args = [dataset, "--ratio", "0.2", "--methods", "random", "--seeds", "1"]
    result = CliRunner().invoke(evaluate, [*args, "--noise-kind", "clicks-to-non-clicks"])
    assert result.exit_code == 2, result.output
    assert "--noise-kind clicks-to-non-clicks changes no label without --flip-rate" in (
        result.output
    )


def test_evaluate_json_prints_each_row_as_its_run_ends(dataset: str, monkeypatch) -> None:
    from nacs_engine import compare
    from worker.cli import evaluate

    evaluate_selection = compare._evaluate_selection
    calls: list[int] = []

    def interrupted_at_the_fourth_model(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return evaluate_selection(*args, **kwargs)

    monkeypatch.setattr(compare, "_evaluate_selection", interrupted_at_the_fourth_model)
    args = [dataset, "--ratio", "0.2", "--methods", "random,stratified", "--seeds", "1"]
    result = CliRunner().invoke(evaluate, [*args, "--json", "--option", "min_count=1"])
    assert result.exit_code == 130, result.output
    # the four models of the budget train at once, two at a time: the fourth starts only
    # once an earlier one has ended, and that one's row is out before the interrupt
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert 1 <= len(rows) <= 3
    assert "interrupted" in result.stderr


def test_evaluate_json_out_writes_the_rows_beside_the_tables(dataset: str, tmp_path) -> None:
    from worker.cli import evaluate

    rows_path = tmp_path / "rows.jsonl"
    args = [dataset, "--ratio", "0.2", "--methods", "random,stratified", "--seeds", "2"]
    result = CliRunner().invoke(
        evaluate, [*args, "--json-out", str(rows_path), "--option", "min_count=1"]
    )
    assert result.exit_code == 0, result.output
    assert "| stratified | random | 2 |" in result.stdout  # the tables still print
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert len(rows) == 8  # 2 seeds x 2 methods x 2 families
    assert {(row["seed"], row["method"]) for row in rows} == {
        (seed, method) for seed in (0, 1) for method in ("random", "stratified")
    }
    absent = CliRunner().invoke(
        evaluate, [*args, "--json-out", str(tmp_path / "no" / "such" / "rows.jsonl")]
    )
    assert absent.exit_code == 2 and "--json-out" in absent.output


def test_evaluate_noise_kind_with_a_flip_rate_of_zero_is_clean(dataset: str) -> None:
    from worker.cli import evaluate

    args = [dataset, "--ratio", "0.2", "--methods", "random", "--seeds", "1", "--json"]
    args += ["--evaluators", "logistic", "--option", "min_count=1"]
    result = CliRunner().invoke(
        evaluate, [*args, "--noise-kind", "clicks-to-non-clicks", "--flip-rate", "0"]
    )
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert row["noise"] == "clean"


def test_evaluate_early_stopping_on_log_loss_and_an_unknown_monitor(dataset: str) -> None:
    from worker.cli import evaluate

    args = [
        dataset,
        "--ratio",
        "0.2",
        "--methods",
        "random",
        "--seeds",
        "1",
        "--evaluators",
        "deepfm",
        "--option",
        "min_count=1",
        "--json",
    ]
    result = CliRunner().invoke(evaluate, [*args, "--monitor", "log_loss"])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert row["method"] == "random" and 0 < row["test_log_loss"] < 5
    result = CliRunner().invoke(evaluate, [*args, "--monitor", "accuracy"])
    assert result.exit_code == 2 and "accuracy" in result.output


def test_evaluate_unknown_method_is_a_usage_error(dataset: str) -> None:
    from worker.cli import evaluate

    result = CliRunner().invoke(evaluate, [dataset, "--ratio", "0.2", "--methods", "random,magic"])
    assert result.exit_code == 2, result.output
    assert "magic" in result.output and "Traceback" not in result.output


def test_evaluate_on_too_few_clicks_names_the_split(tmp_path) -> None:
    from worker.cli import evaluate

    path = tmp_path / "rare.parquet"
    labels = np.zeros(60, dtype=np.int64)
    labels[0] = 1  # one click: at least two of the three splits hold none
    pq.write_table(pa.table({"label": labels, "item": np.arange(60) % 7}), path)
    result = CliRunner().invoke(evaluate, [str(path), "--seeds", "1", "--methods", "random"])
    assert result.exit_code == 1, result.output
    assert "too_few_clicks: the" in result.output and "hold no click" in result.output
    assert "split seed 0" in result.output
    assert "Traceback" not in result.output


def test_select_refuses_to_write_its_result_over_the_dataset(dataset: str, tmp_path) -> None:
    folder = tmp_path / "self"
    folder.mkdir()
    data = folder / "coreset.parquet"
    pq.write_table(pq.read_table(dataset), data)
    before = data.read_bytes()
    result = CliRunner().invoke(select, [str(data), "--ratio", "0.1", "--out", str(folder)])
    assert result.exit_code == 2 and "would take the place of the dataset" in result.output
    assert data.read_bytes() == before


def test_evaluate_notes_a_field_too_rare_to_count(tmp_path) -> None:
    from worker.cli import evaluate

    rng = np.random.default_rng(8)
    path = tmp_path / "ids.parquet"
    n = 600
    pq.write_table(
        pa.table(
            {
                "label": (rng.random(n) < 0.4).astype(np.int64),
                "colour": rng.choice(["red", "blue"], n),
                "request_id": [f"r{i}" for i in range(n)],
            }
        ),
        path,
    )
    result = CliRunner().invoke(
        evaluate, [str(path), "--seeds", "1", "--methods", "random", "--evaluators", "logistic"]
    )
    assert result.exit_code == 0, result.output
    assert "note: no value of request_id is seen often enough" in result.stderr


def test_select_prints_a_line_per_phase_when_not_on_a_terminal(dataset: str, tmp_path) -> None:
    arguments = [dataset, "--ratio", "0.1"]  # nacs: selecting resumes after the set-aside
    result = CliRunner().invoke(select, [*arguments, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("note:")]
    phases = [line.split(":", 1)[0] for line in lines]
    assert phases[0] == "loading" and {"selecting", "denoising", "writing"} <= set(phases)
    assert len(phases) == len(set(phases))  # a short run: one line a phase
    quiet = CliRunner().invoke(select, [*arguments, "--out", str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0 and "loading:" not in quiet.stderr


def test_select_records_a_relative_dataset_path_as_absolute(
    dataset: str, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(os.path.dirname(dataset))
    out = tmp_path / "out"
    relative = os.path.basename(dataset)
    result = CliRunner().invoke(
        select, [relative, "--ratio", "0.1", "--out", str(out), "--method", "random"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["uri"] == manifest["request"]["dataset_uri"] == dataset


def test_select_reads_a_csv_without_a_header_by_the_names_given(dataset: str, tmp_path) -> None:
    table = pq.read_table(dataset)
    path = tmp_path / "no-header.csv"
    lines = [",".join(str(value) for value in row.values()) for row in table.to_pylist()]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    arguments = [str(path), "--ratio", "0.1", "--method", "random", "--out", str(out)]
    result = CliRunner().invoke(select, arguments)
    assert result.exit_code == 1
    assert "the first line, read as the header, holds numbers" in result.output
    assert "give the columns' names in column_names (--column-names on the" in result.output
    for names, words in [
        ("user,,label", "column_names"),  # an empty name would shift the names after it
        ("user,user,label", "column_names: duplicate column name(s) ['user']"),
        ("user,label", "column_names: 2 names given"),
    ]:
        refused = CliRunner().invoke(select, [*arguments, "--column-names", names])
        assert refused.exit_code == 2 and words in refused.output, refused.output
    result = CliRunner().invoke(select, [*arguments, "--column-names", "user,item,label,"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request"]["column_names"] == ["user", "item", "label"]
    assert manifest["dataset"]["rows"] == 1500 and manifest["dataset"]["fields"] == ["user", "item"]
    coreset = pq.read_table(out / "coreset.parquet")
    rows = coreset.column("row").to_numpy()
    expected = table.column("label").to_numpy()[rows]
    np.testing.assert_array_equal(coreset.column("label").to_numpy(), expected)
    parquet = CliRunner().invoke(
        select, [dataset, "--ratio", "0.1", "--out", str(tmp_path / "o2"), "--column-name", "a"]
    )
    assert parquet.exit_code == 2
    assert "column_names: only for a CSV or TSV file without a header line, or JSON Lines; the " \
        "dataset's name says parquet" in parquet.output


def _nacs_manifest(**fields: Any) -> Any:
    """A manifest of a nacs job (1,000 rows, 250 selected) with ``fields`` set."""
    from worker.outputs import CoresetSummary, DatasetSummary, Manifest

    return Manifest(
        job_id="j", request={}, engine_version="0", method="nacs", seed=0, device="cpu",
        created_at="2026-12-07T00:00:00Z", output_uri="o", manifest_uri="m",
        dataset=DatasetSummary(uri="d", fingerprint="f", rows=1000, clicks=300),
        coreset=CoresetSummary(uri="c", rows=250, clicks=70), **fields,
    )


@pytest.mark.parametrize(
    ("verdict", "best_epochs", "caps", "guard", "suggested"),
    [
        ("worse", [2, 2, 1], [2, 2, 2], "report", 10),  # two of three folds at their cap
        ("worse", [2, 1, 1], [2, 2, 2], "report", None),
        ("worse", [2, 2, 1, 1], [2, 2, 2, 2], "report", None),  # half is not most
        ("level", [2, 2, 2], [2, 2, 2], "report", None),
        ("worse", [1, 1], [1, 1], "report", None),  # one epoch: no sign of still improving
        ("worse", [20, 20], [20, 20], "report", None),  # no higher cap
        ("worse", [5, 5, 5], [5, 5, 5], "fallback", 20),
    ],
)
def test_a_worse_audit_with_a_teacher_cut_short_suggests_more_teacher_epochs(
    verdict: str, best_epochs: list[int], caps: list[int], guard: str, suggested: int | None
) -> None:
    from worker.cli import _notes

    manifest = _nacs_manifest(
        audit={"verdict": verdict, "guard": guard},
        diagnostics={"teacher": {"trusted": True, "best_epochs": best_epochs, "max_epochs": caps}},
    )
    notes = [note for note in _notes(manifest) if "teacher_epochs" in note]
    if suggested is None:
        assert notes == []
        return
    (note,) = notes
    cap = caps[0]
    assert f"still improving at their last allowed epoch ({cap})" in note
    assert f"--option teacher_epochs={suggested}, up to about {suggested // cap} times" in note
    assert ("guard=fallback" in note) == (guard != "fallback")


@pytest.mark.parametrize("narrow", [True, False])
def test_a_narrowly_trusted_teacher_is_noted_with_a_comparison_to_run(narrow: bool) -> None:
    from worker.cli import _notes

    manifest = _nacs_manifest(
        noise={"teacher_trusted": True, "narrow_trust": narrow},
        diagnostics={"teacher": {"trusted": True, "signal_auc": 0.5097,
                                 "min_signal_auc": 0.5083, "signal_standard_errors": 2.34}},
    )
    notes = [note for note in _notes(manifest) if "trusted narrowly" in note]
    if not narrow:
        assert notes == []
        return
    (note,) = notes
    assert "0.510, is 2.3 standard errors of a chance AUC from 0.5" in note
    assert "nacs evaluate --methods nacs,stratified,random tells which" in note


def test_evaluate_names_the_seeds_whose_teacher_was_trusted_narrowly() -> None:
    from worker.cli import _narrow_note

    rows = [
        {"seed": seed, "method": method, "narrow_trust": seed == 2 and method == "nacs"}
        for seed in range(4) for method in ("nacs", "random")
    ]
    note = _narrow_note(rows)
    assert note is not None
    assert note.startswith("the teacher was trusted narrowly on 1 of 4 seeds (seed 2, counted")
    rows[0]["narrow_trust"] = True
    assert "on 2 of 4 seeds (seeds 0, 2, counted" in (_narrow_note(rows) or "")
    assert _narrow_note([{**row, "narrow_trust": False} for row in rows]) is None
    assert _narrow_note([{"seed": 0, "method": "nacs"}]) is None  # rows without the field


def test_select_notes_json_lines_keys_that_are_not_read(tmp_path) -> None:
    path = tmp_path / "late.jsonl"
    lines = [json.dumps({"label": i % 3 == 0, "shop": f"s{i % 7}", "pad": "x" * 200})
             for i in range(6000)]
    lines.append(json.dumps({"label": True, "shop": "s1", "pad": "y", "coupon": "c1"}))
    path.write_text("".join(line + "\n" for line in lines))
    result, manifest = _random_select(path, tmp_path / "out")
    assert "note: coupon (from line 6,001): not read" in result.stderr
    assert "to read it, name every key" in result.stderr
    named = "name every key to read (the label too) in column_names (--column-names)"
    assert named in result.stderr
    assert manifest["dataset"]["unread_keys"] == {"coupon": {"line": 6001}}
    assert manifest["dataset"]["unread_key_count"] == 1
    # named, the late key is read, and a key left out is neither read nor noted
    result, manifest = _random_select(
        path, tmp_path / "named", "--column-names", "label,shop,coupon"
    )
    assert "not read" not in result.stderr
    assert manifest["request"]["column_names"] == ["label", "shop", "coupon"]
    assert manifest["dataset"]["fields"] == ["shop", "coupon"]
    assert manifest["dataset"]["unread_keys"] == {}
    misspelt = CliRunner().invoke(
        select,
        [str(path), "--ratio", "0.1", "--method", "random", "--out", str(tmp_path / "typo"),
         "--column-names", "label,shop,cupon"],
    )
    assert misspelt.exit_code != 0
    assert "column_names: no object of" in misspelt.output
    assert "holds a value for 'cupon'" in misspelt.output
    assert "did you mean 'coupon'?" in misspelt.output


def test_the_note_on_unread_keys_names_the_file_and_counts_the_rest() -> None:
    from worker.cli import _field_notes

    unread = {"k0": {"line": 6001}, "k1": {"line": 12, "file": "day=2/part-0.jsonl"}}
    (note,) = _field_notes(["a"], [3], (), unread, 5)
    assert note.startswith(
        "k0 (from line 6,001), k1 (from line 12 of day=2/part-0.jsonl) and 3 more keys: not read"
    )
