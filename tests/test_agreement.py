"""Agreement statistics checked against independent computations: scikit-learn and the krippendorff package called
directly, Fleiss' kappa by its textbook formula, and small examples worked out by hand."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import krippendorff
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import cohen_kappa_score

from sefl_ray.errors import InputNotFoundError, SeflError
from sefl_ray.judge.agreement import run_agreement

HUMANS = ("h1", "h2", "h3")
CHOICE_CODES = {"A": 0, "B": 1, "tie": 2}
N_BOOT = 200
SEFL_RAY = Path(sys.executable).parent / "sefl-ray"


# ---- synthetic data and independent reference computations ----

def _choice_rows(seed: int = 7, n_items: int = 60) -> list[dict]:
    """3 humans who mostly follow a hidden truth (some ratings missing, some ties), a judge that always says A and a
    judge that copies h1. Items 0-9 are rated by every human, so Fleiss' kappa always has items."""
    rng = np.random.default_rng(seed)
    systems = [("sys1", "sys2"), ("sys2", "sys3"), ("sys3", "sys1")]
    rows = []
    for index in range(n_items):
        item = f"item-{index:03d}"
        system_a, system_b = systems[index % 3]
        truth = str(rng.choice(["A", "B", "tie"], p=[0.45, 0.4, 0.15]))
        shown = {"system_a": system_a, "system_b": system_b}
        for human in HUMANS:
            if index >= 10 and rng.random() < 0.2:
                continue
            choice = truth if rng.random() < 0.7 else str(rng.choice(["A", "B", "tie"]))
            rows.append({"item_id": item, "rater": human, "rater_kind": "human", "choice": choice, **shown})
            if human == "h1":
                rows.append({"item_id": item, "rater": "judge_copy", "rater_kind": "judge", "choice": choice,
                             **shown})
        rows.append({"item_id": item, "rater": "judge_first", "rater_kind": "judge", "choice": "A", **shown})
    return rows


def _score_rows(seed: int = 11, n_items: int = 40) -> list[dict]:
    """3 humans and one noisy judge scoring two dimensions 1-5; clarity never uses 5 (its scale is 1-4)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_items):
        for dimension, top in (("correctness", 5), ("clarity", 4)):
            truth = int(rng.integers(1, top + 1))
            for rater, kind, noise in (*((human, "human", 1) for human in HUMANS), ("judge", "judge", 2)):
                if index >= 5 and rng.random() < 0.15:
                    continue
                score = int(np.clip(truth + rng.integers(-noise, noise + 1), 1, top))
                rows.append({"item_id": index, "rater": rater, "rater_kind": kind, "dimension": dimension,
                             "score": score})
    return rows


def _labels(rows: list[dict], key: str, dimension: str | None = None) -> dict[str, dict[str, object]]:
    labels: dict[str, dict[str, object]] = {}
    for row in rows:
        if dimension is None or row.get("dimension") == dimension:
            labels.setdefault(row["rater"], {})[str(row["item_id"])] = row[key]
    return labels


def _fleiss_by_hand(table: np.ndarray) -> float:
    """Fleiss (1971): table[i, j] = raters who put item i in category j, the same number of raters per item."""
    n_items, raters = table.shape[0], table[0].sum()
    p_category = table.sum(axis=0) / (n_items * raters)
    p_item = ((table ** 2).sum(axis=1) - raters) / (raters * (raters - 1))
    p_bar, p_expected = p_item.mean(), (p_category ** 2).sum()
    return (p_bar - p_expected) / (1 - p_expected)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _agreement(paths: list[Path], out_dir: Path, **kwargs) -> dict:
    kwargs.setdefault("n_bootstrap", N_BOOT)
    path = run_agreement(paths, out_dir, **kwargs)
    assert path == out_dir / "agreement.json"
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    return json.loads(text)


@pytest.fixture(scope="module")
def choice_report(tmp_path_factory) -> tuple[dict, list[dict]]:
    """The synthetic pairwise set split over a CSV (humans), a JSONL and a parquet file (one judge each)."""
    folder = tmp_path_factory.mktemp("choices")
    rows = _choice_rows()
    humans = [row for row in rows if row["rater_kind"] == "human"]
    copy = [row for row in rows if row["rater"] == "judge_copy"]
    first = [row for row in rows if row["rater"] == "judge_first"]
    pq.write_table(pa.Table.from_pylist(first), folder / "judge_first.parquet")
    paths = [_write_csv(folder / "humans.csv", humans), _write_jsonl(folder / "judge_copy.jsonl", copy),
             folder / "judge_first.parquet"]
    return _agreement(paths, folder / "out"), rows


# ---- pairwise choices ----

def test_pairwise_kappa_matches_sklearn(choice_report):
    report, rows = choice_report
    overall = report["dimensions"]["overall"]
    labels = _labels(rows, "choice")
    assert report["rating_type"] == "choice" and overall["categories"] == ["A", "B", "tie"]
    assert [rater["rater"] for rater in report["raters"]] == ["h1", "h2", "h3", "judge_copy", "judge_first"]
    assert len(overall["pairwise"]) == 10
    for pair in overall["pairwise"]:
        a, b = labels[pair["rater_a"]], labels[pair["rater_b"]]
        items = sorted(a.keys() & b.keys())
        assert pair["n"] == len(items)
        assert pair["percent_agreement"] == pytest.approx(np.mean([a[i] == b[i] for i in items]), abs=1e-6)
        expected = cohen_kappa_score([a[i] for i in items], [b[i] for i in items])
        assert pair["cohen_kappa"] == pytest.approx(expected, abs=1e-6), pair
        assert pair["reason"] is None
    by_pair = {(pair["rater_a"], pair["rater_b"]): pair for pair in overall["pairwise"]}
    assert by_pair[("h1", "judge_copy")]["cohen_kappa"] == pytest.approx(1.0)
    assert by_pair[("h1", "judge_copy")]["percent_agreement"] == 1.0
    assert by_pair[("h1", "judge_first")]["cohen_kappa"] == pytest.approx(0.0)


def test_confidence_intervals_contain_estimate_and_match_a_reference_bootstrap(choice_report):
    report, rows = choice_report
    overall = report["dimensions"]["overall"]
    for pair in overall["pairwise"]:
        assert pair["ci_low"] - 1e-9 <= pair["cohen_kappa"] <= pair["ci_high"] + 1e-9, pair
    for block in (overall["fleiss_kappa"], overall["krippendorff_alpha"]):
        assert block["ci_low"] - 1e-9 <= block["value"] <= block["ci_high"] + 1e-9, block
        assert block["n_resamples"] == N_BOOT
    # the same bootstrap done the slow way: sklearn on each resample of the shared items, seed 0
    labels = _labels(rows, "choice")
    items = sorted(labels["h1"].keys() & labels["h2"].keys())
    a = np.array([labels["h1"][i] for i in items])
    b = np.array([labels["h2"][i] for i in items])
    resamples = np.random.default_rng(0).integers(0, len(items), size=(N_BOOT, len(items)))
    kappas = [cohen_kappa_score(a[r], b[r], labels=["A", "B", "tie"]) for r in resamples]
    low, high = np.percentile([k for k in kappas if np.isfinite(k)], [2.5, 97.5])
    pair = next(p for p in overall["pairwise"] if (p["rater_a"], p["rater_b"]) == ("h1", "h2"))
    assert (pair["ci_low"], pair["ci_high"]) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))


def test_fleiss_kappa_matches_textbook_formula(choice_report):
    report, rows = choice_report
    fleiss = report["dimensions"]["overall"]["fleiss_kappa"]
    labels = _labels(rows, "choice")
    items = sorted(set.intersection(*(set(labels[h]) for h in HUMANS)))
    table = np.zeros((len(items), 3))
    for row, item in enumerate(items):
        for human in HUMANS:
            table[row, CHOICE_CODES[labels[human][item]]] += 1
    assert fleiss["raters"] == list(HUMANS) and fleiss["n"] == len(items) >= 10
    assert fleiss["value"] == pytest.approx(_fleiss_by_hand(table), abs=1e-6)


def test_krippendorff_alpha_matches_package(choice_report):
    report, rows = choice_report
    alpha = report["dimensions"]["overall"]["krippendorff_alpha"]
    labels = _labels(rows, "choice")
    items = sorted({item for human in HUMANS for item in labels[human]})
    data = np.array([[CHOICE_CODES[labels[h][i]] if i in labels[h] else np.nan for i in items] for h in HUMANS])
    assert np.isnan(data).any()  # missing ratings are part of the test
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert alpha["level"] == "nominal" and alpha["raters"] == list(HUMANS)
    assert alpha["n"] == int((np.isfinite(data).sum(axis=0) >= 2).sum())
    assert alpha["value"] == pytest.approx(expected, abs=1e-6)


def test_judges_against_human_majority(choice_report):
    report, rows = choice_report
    majority_block = report["dimensions"]["overall"]["vs_human_majority"]
    labels = _labels(rows, "choice")
    majority, tied, single = {}, 0, 0
    for item in sorted({item for human in HUMANS for item in labels[human]}):
        votes = Counter(labels[h][item] for h in HUMANS if item in labels[h])
        counts = sorted(votes.values(), reverse=True)
        if sum(counts) < 2:
            single += 1
        elif len(counts) > 1 and counts[0] == counts[1]:
            tied += 1
        else:
            majority[item] = votes.most_common(1)[0][0]
    assert tied > 0  # the synthetic set has items where the humans split
    assert (majority_block["n_items"], majority_block["excluded_tied"], majority_block["excluded_single_human"]) == (
        len(majority), tied, single)
    assert [entry["rater"] for entry in majority_block["raters"]] == ["judge_copy", "judge_first"]
    for entry in majority_block["raters"]:
        items = sorted(labels[entry["rater"]].keys() & majority.keys())
        judged, truth = [labels[entry["rater"]][i] for i in items], [majority[i] for i in items]
        assert entry["n"] == len(items)
        assert entry["cohen_kappa"] == pytest.approx(cohen_kappa_score(judged, truth), abs=1e-6)
        assert entry["accuracy"] == pytest.approx(np.mean([j == t for j, t in zip(judged, truth)]), abs=1e-6)
        assert entry["ci_low"] <= entry["cohen_kappa"] <= entry["ci_high"]
        assert entry["accuracy_ci_low"] <= entry["accuracy"] <= entry["accuracy_ci_high"]


def test_position_bias_and_win_rates(choice_report):
    report, rows = choice_report
    overall = report["dimensions"]["overall"]
    positions = {entry["rater"]: entry for entry in overall["position_a_rate"]}
    assert positions["judge_first"]["value"] == 1.0 and positions["judge_first"]["n_ties"] == 0
    for human in HUMANS:
        choices = Counter(row["choice"] for row in rows if row["rater"] == human)
        assert positions[human]["value"] == pytest.approx(choices["A"] / (choices["A"] + choices["B"]), abs=1e-6)
        assert positions[human]["n_ties"] == choices["tie"]
    first = [entry for entry in overall["win_rates"] if entry["rater"] == "judge_first"]
    assert [entry["systems"] for entry in first] == [["sys1", "sys2"], ["sys1", "sys3"], ["sys2", "sys3"]]
    for entry in first:  # always A: the system shown first wins every time
        shown_first = Counter(row["system_a"] for row in rows
                              if row["rater"] == "judge_first" and sorted((row["system_a"], row["system_b"]))
                              == entry["systems"])
        by_system = {result["system"]: result for result in entry["by_system"]}
        assert entry["ties"] == 0 and entry["n"] == sum(shown_first.values())
        for system in entry["systems"]:
            assert by_system[system]["wins"] == shown_first[system]
            assert by_system[system]["losses"] == entry["n"] - shown_first[system]
            assert by_system[system]["win_rate"] == pytest.approx(shown_first[system] / entry["n"])
    h2 = next(e for e in overall["win_rates"] if e["rater"] == "h2" and e["systems"] == ["sys1", "sys2"])
    mine = [row for row in rows if row["rater"] == "h2" and row["system_a"] == "sys1"]
    wins = Counter({"A": "sys1", "B": "sys2", "tie": "tie"}[row["choice"]] for row in mine)
    results = {result["system"]: result for result in h2["by_system"]}
    assert results["sys1"]["wins"] == wins["sys1"] == results["sys2"]["losses"]
    assert results["sys1"]["win_rate"] == pytest.approx((wins["sys1"] + wins["tie"] / 2) / len(mine))


def test_same_seed_same_report_other_seed_other_intervals(tmp_path):
    source = _write_jsonl(tmp_path / "ratings.jsonl", _choice_rows(n_items=30))
    first = run_agreement([source], tmp_path / "one", n_bootstrap=50, seed=3).read_text()
    again = run_agreement([source], tmp_path / "two", n_bootstrap=50, seed=3).read_text()
    other = json.loads(run_agreement([source], tmp_path / "three", n_bootstrap=50, seed=4).read_text())
    assert first == again
    pairs = json.loads(first)["dimensions"]["overall"]["pairwise"]
    other_pairs = other["dimensions"]["overall"]["pairwise"]
    assert [p["cohen_kappa"] for p in pairs] == [p["cohen_kappa"] for p in other_pairs]
    assert [p["ci_low"] for p in pairs] != [p["ci_low"] for p in other_pairs]


# ---- small examples worked out by hand ----

def test_tiny_example_by_hand(tmp_path):
    """r1 = A A B tie, r2 = A B B tie. Cohen: po 3/4, pe (2*1 + 1*2 + 1*1)/16 = 5/16, kappa = (7/16)/(11/16).
    Fleiss: P_bar 3/4, P_e (3/8)^2 + (3/8)^2 + (2/8)^2 = 11/32, kappa = 13/21.
    Krippendorff: D_o = 2/8, D_e = 2 * (3*3 + 3*2 + 3*2) / (8*7) = 3/4, alpha = 2/3."""
    rows = [{"item_id": item, "rater": rater, "rater_kind": "human", "choice": choice}
            for rater, choices in (("r1", "A A B tie"), ("r2", "A B B tie"))
            for item, choice in enumerate(choices.split())]
    overall = _agreement([_write_jsonl(tmp_path / "tiny.jsonl", rows)], tmp_path)["dimensions"]["overall"]
    (pair,) = overall["pairwise"]
    assert (pair["n"], pair["percent_agreement"]) == (4, 0.75)
    assert pair["cohen_kappa"] == pytest.approx(7 / 11, abs=1e-9)
    assert overall["fleiss_kappa"]["value"] == pytest.approx(13 / 21, abs=1e-9)
    assert overall["krippendorff_alpha"]["value"] == pytest.approx(2 / 3, abs=1e-9)
    assert overall["vs_human_majority"]["excluded_tied"] == 1  # item 1 splits A/B
    assert overall["win_rates"] == []


def test_quadratic_kappa_weighs_score_distance_by_hand(tmp_path):
    """r1 = 1 2 5 5, r2 = 1 5 5 2: observed mean squared distance (0 + 9 + 0 + 9) / 4 = 4.5; both marginals
    1: 1/4, 2: 1/4, 5: 1/2, so chance = 2 * (1/16 * 1 + 1/8 * 16 + 1/8 * 9) = 6.375 and kappa = 1 - 4.5/6.375 = 5/17.
    Weights by rank instead (1, 2, 5 as 0, 1, 2) would give 7/11."""
    rows = [{"item_id": item, "rater": rater, "rater_kind": "human", "score": score}
            for rater, scores in (("r1", (1, 2, 5, 5)), ("r2", (1, 5, 5, 2))) for item, score in enumerate(scores)]
    overall = _agreement([_write_csv(tmp_path / "tiny.csv", rows)], tmp_path)["dimensions"]["overall"]
    assert overall["categories"] == [1, 2, 3, 4, 5]
    assert overall["pairwise"][0]["cohen_kappa"] == pytest.approx(5 / 17, abs=1e-9)
    assert overall["krippendorff_alpha"]["level"] == "ordinal"


def test_swapped_presentation_is_aligned_before_agreement(tmp_path):
    """h2 saw every pair in the reverse order and agrees with h1 on which system is better: full agreement, while
    its position rate shows the mirror image of h1's."""
    h1 = ["A", "B", "A", "tie"]
    rows = []
    for item, choice in enumerate(h1):
        rows.append({"item_id": item, "rater": "h1", "rater_kind": "human", "choice": choice,
                     "system_a": "x", "system_b": "y"})
        rows.append({"item_id": item, "rater": "h2", "rater_kind": "human", "choice": {"A": "B", "B": "A"}.get(
            choice, choice), "system_a": "y", "system_b": "x"})
    overall = _agreement([_write_jsonl(tmp_path / "swapped.jsonl", rows)], tmp_path)["dimensions"]["overall"]
    assert overall["pairwise"][0]["percent_agreement"] == 1.0
    assert overall["pairwise"][0]["cohen_kappa"] == pytest.approx(1.0)
    positions = {entry["rater"]: entry["value"] for entry in overall["position_a_rate"]}
    assert positions == {"h1": pytest.approx(2 / 3), "h2": pytest.approx(1 / 3)}
    for entry in overall["win_rates"]:
        results = {result["system"]: result for result in entry["by_system"]}
        assert (results["x"]["wins"], results["y"]["wins"], entry["ties"]) == (2, 1, 1)


def test_undefined_statistics_are_null_with_a_reason(tmp_path):
    rows = [{"item_id": item, "rater": rater, "rater_kind": "human", "choice": "A"}
            for rater in ("h1", "h2") for item in range(5)]
    rows += [{"item_id": 0, "rater": "judge", "rater_kind": "judge", "choice": "tie"}]
    overall = _agreement([_write_jsonl(tmp_path / "flat.jsonl", rows)], tmp_path)["dimensions"]["overall"]
    pair = overall["pairwise"][0]
    assert pair["cohen_kappa"] is None and pair["ci_low"] is None and "expected agreement is 1" in pair["reason"]
    assert pair["percent_agreement"] == 1.0
    assert overall["fleiss_kappa"]["value"] is None and overall["fleiss_kappa"]["reason"]
    assert overall["krippendorff_alpha"]["value"] is None and overall["krippendorff_alpha"]["reason"]
    judge = {entry["rater"]: entry for entry in overall["position_a_rate"]}["judge"]
    assert judge["value"] is None and judge["reason"]


def test_one_human_has_no_group_statistics(tmp_path):
    rows = [{"item_id": item, "rater": rater, "rater_kind": kind, "choice": choice}
            for rater, kind in (("h1", "human"), ("judge", "judge")) for item, choice in enumerate("ABAB")]
    overall = _agreement([_write_jsonl(tmp_path / "one.jsonl", rows)], tmp_path)["dimensions"]["overall"]
    assert overall["pairwise"][0]["cohen_kappa"] == pytest.approx(1.0)
    assert overall["fleiss_kappa"]["reason"] == "fewer than two human raters"
    assert overall["krippendorff_alpha"]["reason"] == "fewer than two human raters"
    assert overall["vs_human_majority"]["reason"] == "fewer than two human raters"
    assert overall["vs_human_majority"]["raters"][0]["cohen_kappa"] is None


# ---- scores, per dimension ----

def test_score_ratings_per_dimension(tmp_path):
    rows = _score_rows()
    report = _agreement([_write_jsonl(tmp_path / "scores.jsonl", rows)], tmp_path)
    assert report["rating_type"] == "score"
    assert sorted(report["dimensions"]) == ["clarity", "correctness"]
    for dimension, block in report["dimensions"].items():
        labels = _labels(rows, "score", dimension)
        scale = list(range(min(min(v.values()) for v in labels.values()), max(max(v.values()) for v in labels.values())
                           + 1))
        assert block["categories"] == scale == list(range(1, {"clarity": 4, "correctness": 5}[dimension] + 1))
        assert "position_a_rate" not in block and "win_rates" not in block
        for pair in block["pairwise"]:
            a, b = labels[pair["rater_a"]], labels[pair["rater_b"]]
            items = sorted(a.keys() & b.keys())
            expected = cohen_kappa_score([a[i] for i in items], [b[i] for i in items], weights="quadratic",
                                         labels=scale)
            assert pair["cohen_kappa"] == pytest.approx(expected, abs=1e-6)
            assert pair["ci_low"] <= pair["cohen_kappa"] <= pair["ci_high"]
        items = sorted({item for human in HUMANS for item in labels[human]})
        data = np.array([[labels[h].get(i, np.nan) for i in items] for h in HUMANS], dtype=float)
        expected_alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
        assert block["krippendorff_alpha"]["level"] == "ordinal"
        assert block["krippendorff_alpha"]["value"] == pytest.approx(expected_alpha, abs=1e-6)
        complete = [i for i in items if all(i in labels[h] for h in HUMANS)]
        table = np.array([[sum(labels[h][i] == s for h in HUMANS) for s in scale] for i in complete], dtype=float)
        assert block["fleiss_kappa"]["n"] == len(complete)
        assert block["fleiss_kappa"]["value"] == pytest.approx(_fleiss_by_hand(table), abs=1e-6)
        (judge,) = block["vs_human_majority"]["raters"]
        assert judge["rater"] == "judge" and judge["n"] > 0


# ---- calibration against humans ----

# Items 0-2 compare x with y, items 3-5 x with z; lengths (characters of A, B) are those of the feedback shown.
CALIBRATION_LENGTHS = [(100, 50), (80, 120), (60, 60), (200, 100), (50, 90), (70, 30)]
CALIBRATION_CHOICES = {  # rater -> (kind, choices on items 0-5, '-' for not rated)
    "h1": ("human", "A B A A B tie"),
    "h2": ("human", "A B A B B A"),
    "h3": ("human", "A B B tie - A"),  # no lengths given
    "j_copy": ("judge", "A B A tie B A"),  # the human majority; verdicts over both orders (order: both)
    "j_inv": ("judge", "B A B tie A B"),  # the opposite of the human majority
    "j_first": ("judge", "A A A A A A"),
}


def _calibration_rows() -> list[dict]:
    rows = []
    for rater, (kind, choices) in CALIBRATION_CHOICES.items():
        for item, choice in enumerate(choices.split()):
            if choice == "-":
                continue
            row = {"item_id": item, "rater": rater, "rater_kind": kind, "choice": choice,
                   "system_a": "x", "system_b": "y" if item < 3 else "z"}
            if rater != "h3":
                row["length_a"], row["length_b"] = CALIBRATION_LENGTHS[item]
            if rater == "j_copy":
                row["order"] = "both"
            rows.append(row)
    return rows


def _loo_hits(labels: dict[str, dict], rater: str, left_out: str, items: set | None = None) -> list[bool]:
    """AlpacaEval's leave-one-out by loops: on the items `left_out` rated where the other humans' choices have a
    unique mode, whether `rater` (a judge, or `left_out` itself) made that choice."""
    hits = []
    for item in labels[left_out]:
        if (items is not None and item not in items) or item not in labels[rater]:
            continue
        votes = Counter(labels[other][item] for other in HUMANS if other != left_out and item in labels[other])
        ranked = votes.most_common()
        if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
            hits.append(labels[rater][item] == ranked[0][0])
    return hits


def _loo_reference(labels: dict[str, dict], rater: str, items: set | None = None) -> float | None:
    """A human's LOO agreement with the other humans, or a judge's mean over the humans left out, each in turn."""
    shares = [np.mean(hits) for left_out in ((rater,) if rater in HUMANS else HUMANS)
              if (hits := _loo_hits(labels, rater, left_out, items))]
    return float(np.mean(shares)) if shares else None


def test_calibration_worked_out_by_hand(tmp_path):
    """Human majority: 0 A, 1 B, 2 A, 3 none (A/B/tie), 4 B, 5 A; unanimous 0, 1, 4; split 2, 5.
    Leave-one-out, the mode of the other humans where unique: h1 on 0 A, 1 B, 4 B (h2 alone), 5 A: 3/4;
    h2 on 0, 1, 4: 3/3; h3 on 0 A, 1 B, 2 A (it said B): 2/3. Ceiling (3/4 + 1 + 2/3) / 3 = 29/36 over 5 items.
    j_first against the same modes: h1 2/4, h2 1/3, h3 2/3, mean 1/2; j_copy 1; j_inv 0.
    Kappa vs the majority on 0 1 2 4 5 (A B A B A): j_copy 1, j_first 0 (pe = po = 3/5), j_inv: po 0,
    pe = 2/5 * 3/5 + 3/5 * 2/5 = 12/25, kappa -12/13.
    First position (non-tie, as shown): h1 3/5, h2 3/6, h3 2/4, j_inv 2/5, j_first 6/6, j_copy none (order both).
    Longer (item 2 has equal lengths): h1 4/4, h2 4/5 (item 3: B is shorter), j_copy 4/4, j_inv 0/4,
    j_first 3/5 (items 0 3 5), h3 none (no lengths)."""
    report = _agreement([_write_jsonl(tmp_path / "calibration.jsonl", _calibration_rows())], tmp_path)
    calibration = report["dimensions"]["overall"]["calibration"]
    ceiling = calibration["human_ceiling"]
    assert (ceiling["value"], ceiling["n"]) == (pytest.approx(29 / 36), 5)
    assert [(h["rater"], h["n"], h["agreement"]) for h in ceiling["raters"]] == [
        ("h1", 4, 0.75), ("h2", 3, 1.0), ("h3", 3, pytest.approx(2 / 3))]
    judges = {judge["rater"]: judge for judge in calibration["judges"]}
    assert list(judges) == ["j_copy", "j_first", "j_inv"]
    expected = {"j_copy": (1.0, 1.0, (3, 1.0), (2, 1.0), None),
                "j_first": (1 / 2, 0.0, (3, 1 / 3), (2, 1.0), "low_agreement"),
                "j_inv": (0.0, -12 / 13, (3, 0.0), (2, 0.0), "inverted_or_broken")}
    for name, (loo, kappa, unanimous, split, flag) in expected.items():
        judge = judges[name]
        assert judge["n"] == 5 and judge["loo_agreement"] == pytest.approx(loo)
        assert judge["vs_ceiling"] == pytest.approx(loo - 29 / 36)
        assert judge["cohen_kappa"] == pytest.approx(kappa)
        assert (judge["unanimous"]["n"], judge["unanimous"]["accuracy"]) == (unanimous[0], pytest.approx(unanimous[1]))
        assert (judge["split"]["n"], judge["split"]["accuracy"]) == (split[0], pytest.approx(split[1]))
        assert judge["flag"] == flag and (judge["flag_message"] is None) == (flag is None)
    assert "κ = -0.92 vs the human majority: inverted or broken" in judges["j_inv"]["flag_message"]
    assert [(f["rater"], f["dimension"], f["flag"]) for f in report["flags"]] == [
        ("j_first", "overall", "low_agreement"), ("j_inv", "overall", "inverted_or_broken")]
    assert report["flags"][1]["cohen_kappa"] == pytest.approx(-12 / 13)

    bias = {entry["rater"]: entry for entry in calibration["bias"]}
    assert list(bias) == ["h1", "h2", "h3", "j_copy", "j_first", "j_inv"]
    first = {"h1": (5, 3 / 5), "h2": (6, 1 / 2), "h3": (4, 1 / 2), "j_inv": (5, 2 / 5), "j_first": (6, 1.0)}
    longer = {"h1": (4, 1.0), "h2": (5, 4 / 5), "j_copy": (4, 1.0), "j_inv": (4, 0.0), "j_first": (5, 3 / 5)}
    for rater, entry in bias.items():
        for key, table in (("first_position", first), ("prefers_longer", longer)):
            share = entry[key]
            if rater in table:
                assert (share["n"], share["value"]) == (table[rater][0], pytest.approx(table[rater][1])), (rater, key)
                assert share["reason"] is None and share["ci_low"] <= share["value"] <= share["ci_high"]
            else:
                assert share["value"] is None and share["ci_low"] is None and share["reason"], (rater, key)
    assert "order: both" in bias["j_copy"]["first_position"]["reason"]
    assert "length_a" in bias["h3"]["prefers_longer"]["reason"]
    positions = {entry["rater"]: entry for entry in report["dimensions"]["overall"]["position_a_rate"]}
    assert positions["j_copy"]["value"] is None and positions["h1"]["value"] == pytest.approx(3 / 5)


def test_calibration_by_system_pair_by_hand(tmp_path):
    """x vs y (items 0-2): LOO h1 2/2, h2 2/2, h3 2/3, ceiling 8/9; majority A B A, so j_inv (B A B) has po 0 and
    pe 1/3 * 2/3 + 2/3 * 1/3 = 4/9: kappa -4/5. x vs z (items 3-5): h1 1/2 (4: B as h2, 5: tie vs A A), h2 1/1,
    h3 none, ceiling 3/4; majority 4 B, 5 A: j_inv kappa -1, j_first kappa 0 and accuracy 1/2."""
    report = _agreement([_write_jsonl(tmp_path / "calibration.jsonl", _calibration_rows())], tmp_path)
    slices = {tuple(entry["systems"]): entry for entry in report["dimensions"]["overall"]["calibration"]
              ["by_system_pair"]}
    assert list(slices) == [("x", "y"), ("x", "z")]
    expected = {  # systems: (items, ceiling, {judge: (n, kappa, accuracy)})
        ("x", "y"): (3, 8 / 9, {"j_copy": (3, 1.0, 1.0), "j_first": (3, 0.0, 2 / 3), "j_inv": (3, -4 / 5, 0.0)}),
        ("x", "z"): (3, 3 / 4, {"j_copy": (2, 1.0, 1.0), "j_first": (2, 0.0, 1 / 2), "j_inv": (2, -1.0, 0.0)})}
    for systems, (n_items, ceiling, judges) in expected.items():
        entry = slices[systems]
        assert (entry["n_items"], entry["human_ceiling"]) == (n_items, pytest.approx(ceiling))
        for judge in entry["judges"]:
            n, kappa, accuracy = judges[judge["rater"]]
            assert (judge["n"], judge["cohen_kappa"], judge["accuracy"]) == (
                n, pytest.approx(kappa), pytest.approx(accuracy)), (systems, judge)


def test_calibration_matches_reference_loops_and_bootstrap(choice_report):
    """The synthetic set: LOO agreements by loops, unanimous/split accuracy, each system pair's slice by sklearn
    on the slice, and the ceiling's interval by a slow bootstrap of the reference."""
    report, rows = choice_report
    calibration = report["dimensions"]["overall"]["calibration"]
    labels = _labels(rows, "choice")
    ceiling = calibration["human_ceiling"]
    per_human = [_loo_reference(labels, human) for human in HUMANS]
    assert [h["agreement"] for h in ceiling["raters"]] == [pytest.approx(value) for value in per_human]
    assert ceiling["value"] == pytest.approx(np.mean(per_human))
    majority = {}
    for item in {item for human in HUMANS for item in labels[human]}:
        votes = [labels[human][item] for human in HUMANS if item in labels[human]]
        ranked = Counter(votes).most_common()
        if len(votes) >= 2 and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
            majority[item] = (ranked[0][0], len(ranked) == 1)
    for judge in calibration["judges"]:
        mine = labels[judge["rater"]]
        assert judge["loo_agreement"] == pytest.approx(_loo_reference(labels, judge["rater"]))
        assert judge["vs_ceiling"] == pytest.approx(judge["loo_agreement"] - ceiling["value"])
        assert judge["ci_low"] <= judge["loo_agreement"] <= judge["ci_high"]
        for key, unanimous in (("unanimous", True), ("split", False)):
            hits = [mine[item] == label for item, (label, agreed) in majority.items()
                    if agreed == unanimous and item in mine]
            assert judge[key]["n"] == len(hits) > 0 and judge[key]["accuracy"] == pytest.approx(np.mean(hits))
    for entry in calibration["by_system_pair"]:
        items = {str(row["item_id"]) for row in rows if sorted((row["system_a"], row["system_b"])) == entry["systems"]}
        assert entry["n_items"] == len(items)
        assert entry["human_ceiling"] == pytest.approx(np.mean(
            [v for v in (_loo_reference(labels, human, items) for human in HUMANS) if v is not None]))
        for judge in entry["judges"]:
            shared = sorted(item for item in items & majority.keys() if item in labels[judge["rater"]])
            judged, truth = [labels[judge["rater"]][i] for i in shared], [majority[i][0] for i in shared]
            assert judge["n"] == len(shared)
            assert judge["cohen_kappa"] == pytest.approx(cohen_kappa_score(judged, truth, labels=["A", "B", "tie"]))
            assert judge["accuracy"] == pytest.approx(np.mean([j == t for j, t in zip(judged, truth)]))
    # the ceiling's interval the slow way: resample the items any human's comparison uses, seed 0
    hit_of = {human: {item: hits[0] for item in labels[human] if (hits := _loo_hits(labels, human, human, {item}))}
              for human in HUMANS}
    covered = sorted(set().union(*hit_of.values()))
    assert ceiling["n"] == len(covered)
    values = []
    for resample in np.random.default_rng(0).integers(0, len(covered), size=(N_BOOT, len(covered))):
        drawn = [covered[i] for i in resample]
        shares = [np.mean(hits) for human in HUMANS
                  if (hits := [hit_of[human][item] for item in drawn if item in hit_of[human]])]
        values.append(np.mean(shares))
    low, high = np.percentile(values, [2.5, 97.5])
    assert (ceiling["ci_low"], ceiling["ci_high"]) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))


def test_undefined_kappa_is_flagged_and_a_judge_without_majority_items_is_not(tmp_path):
    """Both humans and `same` say A throughout: kappa undefined on 3 items, flagged low_agreement since
    agreement beyond chance is not shown; `elsewhere` rated only an item without human ratings: no flag."""
    rows = [{"item_id": item, "rater": rater, "rater_kind": kind, "choice": "A"}
            for rater, kind in (("h1", "human"), ("h2", "human"), ("same", "judge")) for item in range(3)]
    rows.append({"item_id": 9, "rater": "elsewhere", "rater_kind": "judge", "choice": "B"})
    report = _agreement([_write_jsonl(tmp_path / "flat.jsonl", rows)], tmp_path)
    judges = {judge["rater"]: judge for judge in report["dimensions"]["overall"]["calibration"]["judges"]}
    assert judges["same"]["cohen_kappa"] is None and judges["same"]["kappa_reason"]
    assert judges["same"]["flag"] == "low_agreement" and "undefined" in judges["same"]["flag_message"]
    assert judges["same"]["loo_agreement"] == 1.0
    assert judges["elsewhere"]["flag"] is None and judges["elsewhere"]["loo_agreement"] is None
    assert judges["elsewhere"]["reason"] and judges["elsewhere"]["unanimous"]["reason"]
    assert [flag["rater"] for flag in report["flags"]] == ["same"]


def _panel_rows(n_items: int = 36) -> list[dict]:
    """3 humans who follow a hidden truth 80 % of the time and 4 judges, on SEFL's four criteria as dimensions:
    `copy` says the human majority (a tie where there is none), `inverted` its opposite, `coin` is a coin that
    lands on the majority for a random 60 % of the items and on the other side otherwise (kappa about 0.2; a fair
    coin's kappa straddles 0, so it would be flagged inverted about half the time) and `first` always says A; two
    system pairs, one shown in both orders, with feedback lengths."""
    rng = np.random.default_rng(3)
    opposite = {"A": "B", "B": "A"}
    dimensions = ("accuracy", "actionability", "conciseness", "tone")
    coin_agrees = {dimension: set(rng.permutation(n_items)[:n_items * 6 // 10].tolist()) for dimension in dimensions}
    rows = []
    for index in range(n_items):
        systems = [("sys1", "sys2"), ("sys2", "sys1"), ("sys1", "sys3")][index % 3]
        lengths = {"length_a": int(rng.integers(50, 400)), "length_b": int(rng.integers(50, 400))}
        for dimension in dimensions:
            truth = str(rng.choice(["A", "B"]))
            shown = {"item_id": f"item-{index}", "dimension": dimension, "system_a": systems[0],
                     "system_b": systems[1], **lengths}
            choices = [truth if rng.random() < 0.8 else str(rng.choice(["A", "B", "tie"])) for _ in HUMANS]
            ranked = Counter(choices).most_common()
            majority = ranked[0][0] if len(ranked) == 1 or ranked[0][1] > ranked[1][1] else "tie"
            side = majority if majority != "tie" else str(rng.choice(["A", "B"]))
            judged = {"copy": majority, "inverted": opposite.get(majority, "tie"), "first": "A",
                      "coin": side if index in coin_agrees[dimension] else opposite[side]}
            rows += [{**shown, "rater": human, "rater_kind": "human", "choice": choice}
                     for human, choice in zip(HUMANS, choices)]
            rows += [{**shown, "rater": judge, "rater_kind": "judge", "choice": choice}
                     for judge, choice in judged.items()]
    return rows


def test_cli_writes_every_calibration_figure_with_intervals(tmp_path):
    rows = _panel_rows()
    ratings = _write_csv(tmp_path / "panel.csv", rows)
    done = subprocess.run([str(SEFL_RAY), "agreement", str(ratings), "--out", str(tmp_path / "out"),
                           "--bootstrap", "100"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "out" / "agreement.json")
    report = json.loads((tmp_path / "out" / "agreement.json").read_text())
    assert sorted(report["dimensions"]) == ["accuracy", "actionability", "conciseness", "tone"]

    def has_interval(entry, value, low="ci_low", high="ci_high"):
        return entry[value] is not None and entry[low] - 1e-9 <= entry[value] <= entry[high] + 1e-9

    for dimension, block in report["dimensions"].items():
        calibration = block["calibration"]
        labels = _labels([{**row, "choice": _aligned(row)} for row in rows], "choice", dimension)
        ceiling = calibration["human_ceiling"]
        assert has_interval(ceiling, "value") and all(has_interval(h, "agreement") for h in ceiling["raters"])
        judges = {judge["rater"]: judge for judge in calibration["judges"]}
        assert sorted(judges) == ["coin", "copy", "first", "inverted"]
        for name, judge in judges.items():
            assert has_interval(judge, "loo_agreement") and judge["vs_ceiling"] is not None
            assert judge["loo_agreement"] == pytest.approx(_loo_reference(labels, name))
            assert has_interval(judge, "cohen_kappa", "kappa_ci_low", "kappa_ci_high")
            assert has_interval(judge["unanimous"], "accuracy") and has_interval(judge["split"], "accuracy")
            kappa = judge["cohen_kappa"]
            assert judge["flag"] == ("inverted_or_broken" if kappa < 0 else "low_agreement" if kappa < 0.4 else None)
        assert judges["copy"]["flag"] is None and judges["copy"]["unanimous"]["accuracy"] == 1.0
        assert judges["inverted"]["flag"] == "inverted_or_broken"
        assert judges["coin"]["flag"] == "low_agreement" and judges["first"]["flag"] == "low_agreement"
        assert judges["copy"]["vs_ceiling"] > 0 > judges["coin"]["vs_ceiling"]
        assert len(calibration["bias"]) == 7
        for entry in calibration["bias"]:
            assert has_interval(entry["first_position"], "value") and has_interval(entry["prefers_longer"], "value")
        assert [entry["systems"] for entry in calibration["by_system_pair"]] == [["sys1", "sys2"], ["sys1", "sys3"]]
        for entry in calibration["by_system_pair"]:
            assert entry["human_ceiling"] is not None and len(entry["judges"]) == 4
            for judge in entry["judges"]:
                assert judge["accuracy"] is not None
                assert judge["cohen_kappa"] is None or has_interval(judge, "cohen_kappa")
    flags = Counter((flag["rater"], flag["flag"]) for flag in report["flags"])
    assert flags == {("inverted", "inverted_or_broken"): 4, ("coin", "low_agreement"): 4,
                     ("first", "low_agreement"): 4}
    assert "inverted or broken" in done.stderr  # the flags are logged as warnings


def _aligned(row: dict) -> str:
    """A choice in terms of the sorted system pair, as the agreement aligns presentation orders."""
    if row["system_a"] < row["system_b"]:
        return row["choice"]
    return {"A": "B", "B": "A", "tie": "tie"}[row["choice"]]


def test_cli_bad_length_exits_2_with_one_line(tmp_path):
    rows = [{**GOOD, "length_a": 120, "length_b": "12 words"}]
    done = subprocess.run([str(SEFL_RAY), "agreement", str(_write_jsonl(tmp_path / "bad.jsonl", rows)), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"sefl-ray agreement: error: {tmp_path / 'bad.jsonl'} row 1: length_b '12 words' is not a whole number of "
        "characters (0 or more)"]


def test_judge_verdicts_carry_lengths_and_both_orders():
    from sefl_ray.judge.stats import judgments_to_ratings

    def call(item, criterion, order, winner):
        return {"status": "ok", "kind": "pairwise", "judge": "j", "system_a": "long", "system_b": "short",
                "criterion": criterion, "item_id": item, "order": order, "winner": winner}

    judgments = [call("q1", "accuracy", order, "long") for order in ("AB", "BA")]
    judgments += [call("q1", "tone", "AB", "long"), call("q1", "tone", "BA", "short")]  # inconsistent: a tie
    judgments += [call("q1", "conciseness", order, "short") for order in ("AB", "BA")]
    systems = {"long": {"q1": {"prompt": "p", "feedback": "x" * 40}},
               "short": {"q1": {"prompt": "p", "feedback": "y" * 7}}}
    rows = {row["dimension"]: row for row in judgments_to_ratings(judgments, systems)}
    assert {dimension: row["choice"] for dimension, row in rows.items()} == {
        "accuracy": "A", "conciseness": "B", "tone": "tie", "overall": "tie"}  # one criterion each: no majority
    assert all((row["length_a"], row["length_b"], row["order"], row["item_id"]) == (40, 7, "both", "q1::long::short")
               for row in rows.values())
    plain = judgments_to_ratings(judgments)
    assert len(plain) == 4 and all("length_a" not in row and "order" not in row for row in plain)


def test_calibration_report_sections(tmp_path):
    from sefl_ray.report.calibration import calibration_sections

    report = _agreement([_write_jsonl(tmp_path / "calibration.jsonl", _calibration_rows())], tmp_path)
    sections = calibration_sections(report)
    assert [section["title"] for section in sections] == [
        "Calibration (overall)", "Calibration (overall): position and length bias",
        "Calibration (overall): by system pair", "Calibration (overall): every pair of raters"]
    judges, bias, pairs, _ = sections
    assert judges["warning"] and "⚠ j_inv: κ = -0.92 vs the human majority: inverted or broken" in judges["note"]
    assert "⚠ j_first" in judges["note"] and "j_copy" not in judges["note"]
    header, rows = judges["table"]
    by_rater = {row[0]: dict(zip(header, row)) for row in rows}
    assert by_rater["j_inv"]["flag"] == "inverted or broken" and by_rater["j_copy"]["flag"] == ""
    assert by_rater["h1"]["LOO agreement"] == "0.750" and by_rater["j_first"]["vs ceiling"] == f"{1 / 2 - 29 / 36:+.3f}"
    assert by_rater["j_first"]["unanimous accuracy (n)"] == "0.333 (3)"
    header, rows = bias["table"]
    assert len(rows) == 6 and not bias["warning"]
    assert dict(zip(header, rows[3]))["first-position rate"].startswith("n/a (every verdict")
    assert len(pairs["table"][1]) == 2 * 3 and pairs["plot"] is None
    for section in sections:
        assert section["plot"] is None or section["plot"][:8] == b"\x89PNG\r\n\x1a\n"
    assert judges["plot"] and bias["plot"]
    scores = calibration_sections(_agreement([_write_jsonl(tmp_path / "scores.jsonl", _score_rows())], tmp_path))
    assert [section["title"] for section in scores][::2] == ["Calibration (clarity)", "Calibration (correctness)"]
    assert scores[0]["table"][1][0][0] == "judge"


# ---- malformed input ----

GOOD = {"item_id": "1", "rater": "h1", "rater_kind": "human", "choice": "A"}


@pytest.mark.parametrize(("rows", "message"), [
    ([GOOD, {"item_id": "2", "rater": "h1", "choice": "A"}], r"row 2: column 'rater_kind' is missing"),
    ([GOOD, {**GOOD, "item_id": "2", "choice": "C"}], r"row 2: choice 'C' is not one of A, B, tie"),
    ([GOOD, {**GOOD, "item_id": "2", "choice": None}], r"row 2: neither 'choice' \(A, B or tie\) nor 'score'"),
    ([GOOD, {**GOOD, "item_id": "2", "choice": None, "score": 3}], r"row 2: mixes pairwise choices and scores"),
    ([GOOD, {**GOOD, "item_id": "2", "choice": None, "score": 2.5}], r"row 2: score '2.5' is not a whole number"),
    ([GOOD, {**GOOD, "item_id": "2", "rater_kind": "robot"}], r"row 2: rater_kind 'robot' is not one of"),
    ([GOOD, {**GOOD, "item_id": "2", "rater_kind": "judge"}], r"row 2: rater 'h1' is a judge here but a human"),
    ([GOOD, {**GOOD, "rater": "h2", "system_a": "x", "system_b": "y"}], r"row 2: item '1' gives system_a/system_b"),
    ([GOOD, {**GOOD, "item_id": "2", "system_a": "x"}], r"row 2: give both system_a and system_b"),
    ([GOOD, {**GOOD, "choice": "B"}], r"row 2: duplicate rating of item '1' by rater 'h1'.*already at .*row 1"),
    ([GOOD, {**GOOD, "item_id": "2", "length_a": 10}], r"row 2: give both length_a and length_b"),
    ([GOOD, {**GOOD, "item_id": "2", "length_a": "long", "length_b": 5}], r"row 2: length_a 'long' is not a whole"),
    ([GOOD, {**GOOD, "item_id": "2", "length_a": 5, "length_b": -3}], r"row 2: length_b '-3' is not a whole"),
    ([GOOD, {**GOOD, "item_id": "2", "length_a": 5.5, "length_b": 3}], r"row 2: length_a '5.5' is not a whole"),
    ([GOOD, {**GOOD, "item_id": "2", "order": "reversed"}], r"row 2: order 'reversed' is not one of shown, both"),
])
def test_malformed_rows_name_file_and_row(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SeflError, match=message) as raised:
        run_agreement([path], tmp_path / "out")
    assert str(path) in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_missing_csv_column_and_duplicates_across_files(tmp_path):
    no_kind = _write_csv(tmp_path / "no_kind.csv", [GOOD], columns=["item_id", "rater", "choice"])
    with pytest.raises(SeflError, match=r"no_kind.csv row 1: column 'rater_kind' is missing"):
        run_agreement([no_kind], tmp_path)
    first = _write_csv(tmp_path / "first.csv", [GOOD])
    second = _write_jsonl(tmp_path / "second.jsonl", [{**GOOD, "rater": "h2"}, GOOD])
    with pytest.raises(SeflError, match=r"second.jsonl row 2: duplicate .* already at .*first.csv row 1"):
        run_agreement([first, second], tmp_path)


def test_missing_file_and_other_item_pairs(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"nowhere.csv does not exist"):
        run_agreement([tmp_path / "nowhere.csv"], tmp_path)
    with pytest.raises(SeflError, match=r"no input files"):
        run_agreement([], tmp_path)
    rows = [{**GOOD, "system_a": "x", "system_b": "y"}, {**GOOD, "rater": "h2", "system_a": "x", "system_b": "z"}]
    with pytest.raises(SeflError, match=r"row 2: item '1' compares x vs z here but x vs y"):
        run_agreement([_write_jsonl(tmp_path / "pairs.jsonl", rows)], tmp_path)
