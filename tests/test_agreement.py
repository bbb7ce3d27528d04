"""Agreement statistics checked against independent computations: scikit-learn and the krippendorff package called
directly, Fleiss' kappa by its textbook formula, and small examples worked out by hand."""

from __future__ import annotations

import csv
import json
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
