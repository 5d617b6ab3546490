"""The report of a job: report.json (the numbers) and report.html (the same, drawn).

``build_report`` reads the data, the selected rows and the engine's diagnostics into a
JSON-ready dict; ``render_html`` draws that dict into one self-contained page: the plots are
inline SVG from matplotlib's SVG backend (text kept as text, no font embedded or fetched),
the style is one inline block, and there is no script. Every method gets a report; a section
that does not apply to the method (no noise estimate, no rounds, no audit) says why.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

REPORT_VERSION = 1
HISTOGRAM_BINS = 20
# Rows of the data encoded per step of the coverage count (bounds its temporary memory).
COVERAGE_CHUNK_ROWS = 262_144


def effective_sample_size(weights: np.ndarray) -> float:
    """(sum w)^2 / sum w^2 of ``weights`` (k,): the rows an unweighted sample would need to
    carry as much information; k when every weight is equal, 0 for no rows."""
    w = np.asarray(weights, dtype=np.float64)
    squares = float(np.square(w).sum())
    return float(w.sum() ** 2 / squares) if squares > 0 else 0.0


def coverage(
    features: np.ndarray, field_dims: Sequence[int], rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Which feature values of the data the coreset holds.

    features: (n, F) int ids, id < field_dims[f]; rows: (k,) positions of the coreset.
    Returns (coreset_vocabulary (F,) distinct ids per field in the coreset,
    missing_by_field (F,) data rows whose id in that field the coreset never holds,
    missing_rows: data rows holding at least one such id).
    """
    dims = np.asarray(field_dims, dtype=np.int64)
    # Ids of all fields in one range: field f's ids start at offsets[f].
    index = np.int32 if dims.sum() < 2**31 else np.int64
    offsets = np.concatenate([[0], np.cumsum(dims)[:-1]]).astype(index)  # (F,)
    held = np.zeros(int(dims.sum()), dtype=bool)
    chosen = np.asarray(features[np.sort(np.asarray(rows, dtype=np.int64))], dtype=index)
    held[(chosen + offsets).ravel()] = True  # chosen: (k, F)
    vocabulary = np.add.reduceat(held, offsets) if held.size else np.zeros(0, dtype=np.int64)
    missing_by_field = np.zeros(dims.shape[0], dtype=np.int64)
    missing_rows = 0
    for start in range(0, int(features.shape[0]), COVERAGE_CHUNK_ROWS):
        chunk = np.asarray(features[start : start + COVERAGE_CHUNK_ROWS], dtype=index)
        absent = ~held[chunk + offsets]  # (c, F)
        missing_by_field += absent.sum(axis=0)
        missing_rows += int(absent.any(axis=1).sum())
    return vocabulary.astype(np.int64), missing_by_field, missing_rows


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    return [int(c) for c in np.histogram(values, bins=edges)[0]]


def _number(value: Any) -> Any:
    """A JSON-safe number: floats that are not finite become None."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _clean(value: Any) -> Any:
    """``value`` with numpy scalars made plain and non-finite floats made None."""
    if isinstance(value, Mapping):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    if isinstance(value, np.ndarray):
        return [_clean(item) for item in value.tolist()]
    return _number(value)


def build_report(
    *,
    job_id: str,
    request: Mapping[str, Any],
    method: str,
    engine_version: str,
    created_at: str,
    field_names: Sequence[str],
    field_dims: Sequence[int],
    features: np.ndarray,
    data_labels: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    soft_labels: np.ndarray,
    weights: np.ndarray,
    uncertainty: np.ndarray,
    diagnostics: Mapping[str, Any],
    phase_seconds: Mapping[str, float],
) -> dict[str, Any]:
    """The content of report.json for one selection.

    features: (n, F) ids of the data; data_labels: (n,); rows, labels, soft_labels,
    weights, uncertainty: (k,) of the coreset as written; diagnostics: the engine's.
    """
    n, k = int(data_labels.shape[0]), int(rows.shape[0])
    data_clicks = int(np.asarray(data_labels, dtype=np.float64).sum())
    coreset_clicks = int(np.asarray(labels, dtype=np.float64).sum())
    vocabulary, missing_by_field, missing_rows = coverage(features, field_dims, rows)
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    clicked = np.asarray(labels) > 0.5
    soft = np.asarray(soft_labels, dtype=np.float64)
    scores = np.asarray(uncertainty, dtype=np.float64)
    noise = diagnostics.get("noise")
    cuts = (noise or {}).get("uncertainty_cuts") or diagnostics.get("uncertainty_cuts") or {}
    top = max(1.0, float(scores.max()) if k else 1.0, *[float(v) for v in cuts.values()])
    score_edges = np.linspace(0.0, top, HISTOGRAM_BINS + 1)
    w = np.asarray(weights, dtype=np.float64)
    ess = effective_sample_size(w)
    positive = w[w > 0]
    if positive.size and positive.max() > positive.min() * (1 + 1e-6):
        weight_edges = np.geomspace(positive.min(), positive.max(), HISTOGRAM_BINS + 1)
    else:
        middle = float(positive[0]) if positive.size else 1.0
        weight_edges = np.linspace(middle * 0.5, middle * 1.5, HISTOGRAM_BINS + 1)
    rounds = [
        {
            "round": entry.get("round"),
            "selected": entry.get("selected"),
            "objective": entry.get("objective"),
            "seconds": entry.get("seconds"),
        }
        for entry in diagnostics.get("rounds") or []
    ]
    if noise is None and "removed_rows" in diagnostics:
        noise = {"removed_rows": diagnostics["removed_rows"]}
    report = {
        "report_version": REPORT_VERSION,
        "job_id": job_id,
        "method": method,
        "engine_version": engine_version,
        "created_at": created_at,
        "request": dict(request),
        "data": {
            "rows": n,
            "clicks": data_clicks,
            "click_rate": data_clicks / n if n else None,
            "fields": list(field_names),
            "vocabulary": [int(d) for d in field_dims],
        },
        "coreset": {
            "rows": k,
            "clicks": coreset_clicks,
            "click_rate": coreset_clicks / k if k else None,
            # "balanced": up to half clicks, which the weights bring back to the data's rate
            "class_balance": (diagnostics.get("selection") or {}).get("class_balance"),
            "weighted_click_rate": (
                float(np.average(np.asarray(labels, dtype=np.float64), weights=w))
                if k and w.sum() > 0
                else None
            ),
            "share_of_data": k / n if n else None,
            "vocabulary": [int(v) for v in vocabulary],
            "rows_with_unseen_value": missing_rows,
            "rows_with_unseen_value_share": missing_rows / n if n else None,
            "rows_with_unseen_value_by_field": [int(m) for m in missing_by_field],
        },
        "noise": noise,
        "labels": {
            "bins": edges,
            "soft_label_clicked": _histogram(soft[clicked], edges),
            "soft_label_not_clicked": _histogram(soft[~clicked], edges),
            "soft_label_mean": float(soft.mean()) if k else None,
            "mean_shift": float(np.abs(soft - np.asarray(labels)).mean()) if k else None,
            "relabelled": bool(k and np.any(soft != np.asarray(labels))),
        },
        "uncertainty": {
            "scored": bool(k and np.any(scores != 0)),
            "bins": score_edges,
            "counts": _histogram(scores, score_edges),
            "cuts": dict(cuts),
        },
        "weights": {
            "min": float(w.min()) if k else None,
            "max": float(w.max()) if k else None,
            "mean": float(w.mean()) if k else None,
            "quantiles": {
                str(q): float(np.quantile(w, q)) for q in (0.01, 0.5, 0.99)
            } if k else {},
            "bins": weight_edges,
            "counts": _histogram(w, weight_edges),
            "effective_sample_size": ess,
            "effective_share": ess / k if k else None,
        },
        "rounds": rounds,
        "phase_seconds": {name: float(seconds) for name, seconds in phase_seconds.items()},
        "audit": diagnostics.get("audit"),
    }
    return _clean(report)  # type: ignore[no-any-return]


def report_json(report: Mapping[str, Any]) -> bytes:
    return json.dumps(report, indent=2, sort_keys=True, allow_nan=False).encode()


# --- HTML -------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:68rem;
padding:1rem 1.5rem 3rem;color:#1d2330;background:#fff;line-height:1.45}
h1{font-size:1.5rem;margin:.5rem 0}h2{font-size:1.15rem;margin:2rem 0 .5rem;
border-bottom:1px solid #d8dce4;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{text-align:left;padding:.2rem .8rem .2rem 0;border-bottom:1px solid #eef0f4;
vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.8rem 0}figcaption{font-size:.85rem;color:#4a5366}
figure svg{max-width:100%;height:auto}
.verdict{display:inline-block;padding:.1rem .6rem;border-radius:.3rem;font-weight:600}
.better{background:#d9f2e3;color:#145c32}.worse{background:#fbe0e0;color:#8a1c1c}
.level{background:#e8ebf2;color:#333c52}
.note{color:#4a5366;font-size:.9rem}
pre{background:#f5f6f9;padding:.6rem;overflow:auto;font-size:.8rem}
"""
CLICKED, NOT_CLICKED, ACCENT = "#d1495b", "#30638e", "#edae49"


@contextmanager
def _figure(
    width_in: float = 6.4, height_in: float = 3.0, *, left: float = 0.11, bottom_in: float = 0.5,
    space: float = 0.35,
) -> Iterator[Any]:
    """A figure with fixed margins (a layout engine would double the time of each plot)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in))
    figure.subplots_adjust(
        left=left, right=0.97, top=1 - 0.12 / height_in, bottom=bottom_in / height_in,
        wspace=space,
    )
    yield figure


def _svg(figure: Any, salt: str) -> str:
    """The figure as an <svg> element to inline in HTML (no XML prolog, ids unique per salt)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None) -> str:
    out = ["<table>"]
    if headers:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>")
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, (int, float)) and not isinstance(cell, bool)
            text = _fmt(cell) if not isinstance(cell, str) else cell
            cells.append(f"<td class=\"n\">{html.escape(text)}</td>" if numeric
                         else f"<td>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _figure_block(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _labels_plot(report: Mapping[str, Any], salt: str) -> str:
    labels = report["labels"]
    edges = np.asarray(labels["bins"])
    with _figure() as figure:
        axes = figure.subplots()
        for key, color, name in (
            ("soft_label_not_clicked", NOT_CLICKED, "given label 0"),
            ("soft_label_clicked", CLICKED, "given label 1"),
        ):
            counts = np.asarray(labels[key], dtype=np.float64)
            total = counts.sum()
            share = counts / total if total else counts
            axes.stairs(share, edges, fill=True, alpha=0.6, color=color,
                        label=f"{name} ({int(total):,} rows)")
        axes.set_xlabel("soft label")
        axes.set_ylabel("share of the rows with that label")
        axes.legend(frameon=False, loc="upper center", fontsize="small")
        return _svg(figure, f"{salt}-labels")


def _uncertainty_plot(report: Mapping[str, Any], salt: str) -> str:
    part = report["uncertainty"]
    with _figure() as figure:
        axes = figure.subplots()
        axes.stairs(part["counts"], np.asarray(part["bins"]), fill=True, color=NOT_CLICKED,
                    alpha=0.7, label="coreset rows")
        for name, cut in sorted(part["cuts"].items()):
            color = CLICKED if name == "positive" else ACCENT
            axes.axvline(cut, color=color, linestyle="--",
                         label=f"removal cut, given label {1 if name == 'positive' else 0}")
        axes.set_xlabel("uncertainty")
        axes.set_ylabel("coreset rows")
        axes.legend(frameon=False, loc="upper right", fontsize="small")
        return _svg(figure, f"{salt}-uncertainty")


def _weights_plot(report: Mapping[str, Any], salt: str) -> str:
    part = report["weights"]
    edges = np.asarray(part["bins"])
    with _figure() as figure:
        axes = figure.subplots()
        axes.stairs(part["counts"], edges, fill=True, color=NOT_CLICKED, alpha=0.7)
        if edges[0] > 0 and edges[-1] / edges[0] > 10:
            axes.set_xscale("log")
        axes.axvline(1.0, color=ACCENT, linestyle="--", label="weight 1")
        axes.set_xlabel("weight")
        axes.set_ylabel("coreset rows")
        axes.legend(frameon=False, loc="upper right", fontsize="small")
        return _svg(figure, f"{salt}-weights")


def _rounds_plot(rounds: Sequence[Mapping[str, Any]], salt: str) -> str:
    numbers = [int(entry["round"]) for entry in rounds]
    with _figure() as figure:
        picks, objective = figure.subplots(1, 2)
        picks.bar(numbers, [entry["selected"] or 0 for entry in rounds], color=NOT_CLICKED)
        picks.set_xlabel("round")
        picks.set_ylabel("rows picked")
        picks.set_xticks(numbers)
        objective.plot(numbers, [entry["objective"] or 0 for entry in rounds], marker="o",
                       color=CLICKED)
        objective.set_xlabel("round")
        objective.set_ylabel("facility-location objective")
        objective.set_xticks(numbers)
        return _svg(figure, f"{salt}-rounds")


def _phases_plot(phases: Mapping[str, float], salt: str) -> str:
    names = list(phases)
    with _figure(6.4, 0.6 + 0.3 * len(names), left=0.14) as figure:
        axes = figure.subplots()
        axes.barh(names, [phases[name] for name in names], color=NOT_CLICKED)
        axes.invert_yaxis()
        axes.set_xlabel("seconds")
        return _svg(figure, f"{salt}-phases")


def _audit_plot(families: Mapping[str, Mapping[str, Any]], salt: str) -> str:
    names = list(families)
    positions = np.arange(len(names), dtype=np.float64)
    with _figure() as figure:
        auc, difference = figure.subplots(1, 2)
        coreset = _floats([families[name]["coreset"]["auc"] for name in names])
        random = _floats([families[name]["random"]["auc"] for name in names])
        auc.bar(positions - 0.2, coreset, 0.4, color=CLICKED, label="coreset")
        auc.bar(positions + 0.2, random, 0.4, color=NOT_CLICKED, label="random subset")
        both = np.concatenate([coreset, random])
        if np.isfinite(both).any():
            low, high = float(np.nanmin(both)), float(np.nanmax(both))
            auc.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.05))
        auc.set_xticks(positions, names)
        auc.set_ylabel("AUC on held-back rows")
        auc.legend(frameon=False, loc="upper left", ncols=2, fontsize="small")
        means = _floats([families[name]["auc_difference"] for name in names])
        errors = 2 * np.nan_to_num(_floats([families[name]["auc_difference_se"] for name in names]))
        colors = [
            {"better": "#2a9d5c", "worse": CLICKED}.get(families[name]["verdict"], "#8a93a6")
            for name in names
        ]
        difference.bar(positions, means, 0.5, yerr=errors, capsize=6, color=colors)
        difference.axhline(0.0, color="#1d2330", linewidth=0.8)
        difference.set_xticks(positions, names)
        difference.set_ylabel("AUC coreset - random (±2 SE)")
        return _svg(figure, f"{salt}-audit")


def _floats(values: Sequence[Any]) -> np.ndarray:
    """(n,) float64 of ``values``, None as NaN (a bar that is not drawn)."""
    return np.array([np.nan if value is None else float(value) for value in values])


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


# What to do about a narrowly trusted teacher (nacs_engine.nacs.narrow_trust), here and
# after `nacs select`.
NARROW_TRUST_ADVICE = (
    "on data like this, trust has helped and hurt (docs/BENCHMARKS.md): nacs evaluate "
    "--methods nacs,stratified,random tells which suits these data (stratified draws as an "
    "untrusted teacher does)"
)
NARROW_TRUST_NOTE = (
    "The proxy models were trusted narrowly: their AUC on the given labels is less than three "
    "standard errors of chance above 0.5, yet more than half of the given clicks or "
    "non-clicks were set aside on their word. "
    f"{NARROW_TRUST_ADVICE[0].upper()}{NARROW_TRUST_ADVICE[1:]}."
)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def render_html(report: Mapping[str, Any]) -> str:
    """report.html for ``report`` (``build_report``'s dict): self-contained, no script."""
    salt = str(report["job_id"])
    data, coreset = report["data"], report["coreset"]
    request = report["request"]
    sections: list[str] = []

    fields = data["fields"]
    unseen = coreset["rows_with_unseen_value_by_field"]
    field_rows = [
        (name, data["vocabulary"][i], coreset["vocabulary"][i],
         _pct(unseen[i] / data["rows"]) if data["rows"] else "-")
        for i, name in enumerate(fields)
    ]
    overview = _table(
        [
            ("rows", data["rows"], coreset["rows"]),
            ("clicks", data["clicks"], coreset["clicks"]),
            ("click rate", _pct(data["click_rate"]), _pct(coreset["click_rate"])),
            ("fields", len(fields), len(fields)),
        ],
        ["", "data", "coreset"],
    )
    if coreset.get("class_balance") == "balanced":
        overview += _note(
            "Up to half the coreset's rows are clicks (class_balance \"balanced\", which "
            "\"auto\" takes where clicks are rare); weighted, its click rate is "
            f"{_pct(coreset.get('weighted_click_rate'))}: train with the weights."
        )
    overview += _note(
        f"The coreset keeps {_pct(coreset['share_of_data'])} of the rows. "
        f"{_pct(coreset['rows_with_unseen_value_share'])} of the data's rows "
        f"({_fmt(coreset['rows_with_unseen_value'])}) hold a feature value that no coreset "
        "row holds."
    )
    overview += "<details><summary>Vocabulary by field</summary>" + _table(
        field_rows, ["field", "ids in the data (rare values share one)", "ids in the coreset",
                     "data rows with a value the coreset lacks"]
    ) + "</details>"
    sections.append(_section("Data and coreset", overview, "data"))

    noise = report.get("noise")
    if noise and "flip_rate" in noise:
        # a rate that could not be read is no rate: shown as "-", not as 0%
        rate = _pct(noise.get("flip_rate")) if noise.get("measurable") is not False else "-"
        rows = [
            ("estimated wrong-label rate (flip rate)", rate),
            ("wrong labels among clicks", _pct(noise.get("wrong_share_positive"))),
            ("wrong labels among non-clicks", _pct(noise.get("wrong_share_negative"))),
            ("estimated clean click rate", _pct(noise.get("clean_click_rate"))),
            *(
                [("flip rate the soft labels correct for", _pct(noise["correction_flip_rate"]))]
                if "correction_flip_rate" in noise
                else []
            ),
            *(
                [
                    ("flip rate the set-aside reads", _pct(noise["set_aside_flip_rate"])),
                    ("  wrong labels among clicks at it",
                     _pct(noise.get("set_aside_wrong_share_positive"))),
                    ("  wrong labels among non-clicks at it",
                     _pct(noise.get("set_aside_wrong_share_negative"))),
                ]
                if "set_aside_flip_rate" in noise
                else []
            ),
            ("rows set aside", _fmt(noise.get("set_aside_rows"))),
            ("  of them clicks", _fmt(noise.get("set_aside_positive"))),
            ("  of them non-clicks", _fmt(noise.get("set_aside_negative"))),
            *(
                [
                    (
                        "kept: past the likely wrong labels of their group of duplicates",
                        _fmt(noise["set_aside_capped_rows"]),
                    )
                ]
                if noise.get("set_aside_capped_rows")
                else []
            ),
        ]
        body = _table(rows)
        if noise.get("teacher_trusted") is False:
            body += _note(
                "The proxy models could not rank these rows (their AUC on the given labels is "
                "within what chance reaches on data this size, or under min_teacher_auc): these "
                "estimates are not used; nothing was set aside, "
                "the labels are the given ones and the rows a random draw within each class."
            )
        elif noise.get("measurable") is False:
            body += _note(
                "The flip rate could not be read: with this click rate, the rows the teacher "
                f"ranks lowest ({_fmt(noise.get('anchor_rows'))}) could hold too few wrong "
                "labels to tell flips from chance, so none were estimated and no row was set "
                "aside."
            )
        else:
            if noise.get("narrow_trust"):
                body += _note(NARROW_TRUST_NOTE)
            audit = report.get("audit") or {}
            check = (
                "The audit below says whether the coreset trains better models than a random "
                "subset."
                if "verdict" in audit
                else "No audit checked them here (below): judge the coreset with care."
            )
            body += _note(
                "The rate is an upper bound, read from the rows the proxy models rank lowest "
                "(clean labels too may read a few percent); the set-aside reads it two standard "
                "errors lower, and the rows set aside are those the models contradict most, "
                f"wrong or only hard to predict. {check}"
            )
    elif noise and "removed_rows" in noise:
        body = _table([("rows removed by the denoising", _fmt(noise["removed_rows"]))])
        body += _note("This method does not estimate the wrong-label rate.")
    else:
        body = _note(f"Method {report['method']} does not estimate label noise.")
    sections.append(_section("Noise", body, "noise"))

    labels = report["labels"]
    body = _figure_block(
        _labels_plot(report, salt),
        "Soft labels of the coreset's rows, by their given label (each label's rows sum to 1). "
        "Mean soft label "
        f"{_fmt(labels['soft_label_mean'])}; mean change from the given label "
        f"{_fmt(labels['mean_shift'])}.",
    )
    if not labels["relabelled"]:
        body += _note("This method keeps the given labels: every soft label is 0 or 1.")
    part = report["uncertainty"]
    if part["scored"]:
        cuts = ", ".join(
            f"given label {1 if name == 'positive' else 0}: {_fmt(cut)}"
            for name, cut in sorted(part["cuts"].items())
        )
        caption = "Uncertainty of the coreset's rows. " + (
            f"Rows at or above the removal cut ({cuts}) were removed." if cuts
            else "No rows were removed."
        )
        if cuts and (report.get("noise") or {}).get("set_aside_capped_rows"):
            caption += (
                " Groups of 100 or more identical rows, which share one uncertainty, lost only "
                "their likely wrong labels: some of their rows past the cut remain."
            )
        body += _figure_block(_uncertainty_plot(report, salt), caption)
    else:
        body += _note(f"Method {report['method']} scores no uncertainty.")
    sections.append(_section("Labels and uncertainty", body, "labels"))

    weights = report["weights"]
    body = _table(
        [
            ("effective sample size (sum w)² / sum w²", weights["effective_sample_size"]),
            ("  as a share of the coreset's rows", _pct(weights["effective_share"])),
            ("smallest weight", weights["min"]),
            ("median weight", weights["quantiles"].get("0.5")),
            ("largest weight", weights["max"]),
        ]
    )
    body += _figure_block(_weights_plot(report, salt), "Weights of the coreset's rows.")
    sections.append(_section("Weights", body, "weights"))

    rounds = report["rounds"]
    phases = report["phase_seconds"]
    body = ""
    if rounds:
        body += _figure_block(
            _rounds_plot(rounds, salt), "Rows picked and the facility-location objective by round."
        )
        body += _table(
            [(r["round"], r["selected"], r["objective"], r["seconds"]) for r in rounds],
            ["round", "rows picked", "objective", "seconds"],
        )
    else:
        body += _note(f"Method {report['method']} selects in one pass, not in rounds.")
    if phases:
        body += _figure_block(_phases_plot(phases, salt), "Time per phase (writing: the coreset).")
        body += _table([(name, seconds) for name, seconds in phases.items()], ["phase", "seconds"])
    sections.append(_section("Rounds and time", body, "time"))

    sections.append(_section("Against a random subset", _audit_section(report, salt), "audit"))

    body = "<pre>" + html.escape(json.dumps(request, indent=2, sort_keys=True)) + "</pre>"
    body += _note(
        f"Engine {report['engine_version']}, method {report['method']}, "
        f"report written {report['created_at']}."
    )
    sections.append(_section("Request and options", body, "request"))

    title = f"Coreset report: job {report['job_id']}"
    header = (
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(str(request.get('dataset_uri', '')))}: "
        f"{_fmt(coreset['rows'])} of {_fmt(data['rows'])} rows, method "
        f"{html.escape(report['method'])}.{_verdict_badge(report.get('audit'))}</p>"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{header}{''.join(sections)}</body></html>\n"
    )


def _verdict_badge(audit: Mapping[str, Any] | None) -> str:
    if not audit or "verdict" not in audit:
        return ""
    verdict = str(audit["verdict"])
    return f' Audit: <span class="verdict {html.escape(verdict)}">{html.escape(verdict)}</span>'


def _audit_section(report: Mapping[str, Any], salt: str) -> str:
    audit = report.get("audit")
    if not audit:
        return _note("No audit ran.")
    if "families" not in audit:
        return _note(f"No audit: {audit.get('skipped', 'the engine ran none')}.")
    families = audit["families"]
    verdict = str(audit.get("verdict"))
    body = (
        f"<p>Verdict: <span class=\"verdict {html.escape(verdict)}\">{html.escape(verdict)}"
        "</span> (better: the coreset's AUC is higher than the random subset's by more than two "
        "standard errors in every family; worse: lower in any family; else level).</p>"
    )
    body += _figure_block(
        _audit_plot(families, salt),
        f"Models trained on the coreset and on random subsets of the same size, scored on "
        f"{_fmt(audit.get('scored_rows'))} held-back rows over {_fmt(audit.get('seeds'))} "
        "seed(s); the interval is two standard errors of the paired difference.",
    )
    body += _table(
        [
            (name, entry["coreset"]["auc"], entry["random"]["auc"], entry["auc_difference"],
             entry["auc_difference_se"], entry["verdict"])
            for name, entry in families.items()
        ],
        ["family", "coreset AUC", "random AUC", "difference", "standard error", "verdict"],
    )
    delivered = audit.get("delivered")
    if delivered and delivered != "coreset":
        body += _note(f"The guard delivered the {delivered} instead of the coreset.")
    return body
