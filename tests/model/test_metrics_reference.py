"""The reference implementation's mAP rule (torchmetrics' RetrievalMAP drops relevant items
scored <= 0; docs/method.md#evaluation-protocols) against torchmetrics itself and a
hand-computed case, and its reach through ``retrieval_metrics``, the protocol tables and
``polypindex bench retrieval --map-rule``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.retrieval import tie_free_cosines, torchmetrics_retrieval

from polypindex.benchmarks.protocols import format_table
from polypindex.model.core.errors import InvalidInputError
from polypindex.model.scoring.evaluation import MAP_RULES, retrieval_metrics
from polypindex.model.scoring.metrics import average_precision, reference_average_precision


def _negative_positive_set(seed: int, n: int = 24) -> tuple[np.ndarray, list[str]]:
    """Random 2-D embeddings in which some same-identity pairs have cosine < 0 (the case
    where the two rules differ) and no two cosines tie."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, 2 * np.pi, size=n)
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1) * rng.uniform(0.5, 2.0, (n, 1))
    ids = [f"p{i % 4}" for i in range(n)]  # identities unrelated to angle: many cosines < 0
    return emb, ids


def test_hand_computed_case() -> None:
    # ranks 1..6 by score; relevant at ranks 2 (0.8) and 4 (0.3) and 6 (-0.2)
    scores = np.array([0.9, 0.8, 0.5, 0.3, -0.1, -0.2])
    labels = np.array([0, 1, 0, 1, 0, 1])
    # ours: (1/2 + 2/4 + 3/6) / 3 = 0.5; reference drops rank 6: (1/2 + 2/4) / 2 = 0.5
    assert average_precision(scores, labels) == pytest.approx(0.5)
    assert reference_average_precision(scores, labels) == pytest.approx(0.5)
    # relevant at ranks 1 and 6 (cosine -0.2): ours (1 + 2/6)/2 = 2/3; reference 1.0
    labels = np.array([1, 0, 0, 0, 0, 1])
    assert average_precision(scores, labels) == pytest.approx(2 / 3)
    assert reference_average_precision(scores, labels) == pytest.approx(1.0)
    # the docstring's counter-example: the dropped item raises our AP
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, -0.1])
    labels = np.array([0, 0, 0, 0, 1, 1])
    assert average_precision(scores, labels) == pytest.approx((1 / 5 + 2 / 6) / 2)
    assert reference_average_precision(scores, labels) == pytest.approx(1 / 5)
    # every relevant item <= 0: AP 0 under the reference rule (torchmetrics returns 0)
    assert reference_average_precision(np.array([0.5, 0.0, -0.3]), np.array([0, 1, 1])) == 0.0


def test_equal_when_all_relevant_scores_positive() -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.01, 1.0, size=50)
    labels = rng.integers(0, 2, size=50)
    labels[0] = 1
    assert reference_average_precision(scores, labels) == pytest.approx(
        average_precision(scores, labels), abs=1e-12
    )


def test_rejects_bad_input() -> None:
    with pytest.raises(InvalidInputError):
        reference_average_precision(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(InvalidInputError):
        retrieval_metrics(np.eye(3), ["a", "a", "b"], map_rule="torchmetrics")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_rule_equals_torchmetrics(seed: int) -> None:
    torch, retrieval = torchmetrics_retrieval()
    emb, ids = _negative_positive_set(seed)
    n = len(ids)
    sim = tie_free_cosines(emb, decimals=12)
    same = np.asarray(ids)[:, None] == np.asarray(ids)[None, :]
    off = ~np.eye(n, dtype=bool)
    assert (sim[same & off] <= 0).any(), "the case must have same-identity pairs with cosine <= 0"

    # exactly the reference's evaluator: the full cosine matrix, the diagonal ignored (-1)
    preds = torch.from_numpy(sim)
    target = torch.from_numpy(same.astype(np.int64))
    target.fill_diagonal_(-1)
    indexes = torch.arange(n).unsqueeze(1).expand(-1, n)
    tm_map = retrieval.RetrievalMAP(empty_target_action="error", ignore_index=-1)(
        preds, target, indexes
    )
    tm_hr1 = retrieval.RetrievalHitRate(empty_target_action="error", ignore_index=-1, top_k=1)(
        preds, target, indexes
    )

    result = retrieval_metrics(emb, ids, map_rule="both")
    assert result.map_reference == pytest.approx(float(tm_map), abs=1e-6)
    assert result.hit_rate[1] == pytest.approx(float(tm_hr1), abs=1e-6)
    assert result.map != pytest.approx(result.map_reference, abs=1e-3)  # the rules differ here
    assert retrieval_metrics(emb, ids).map == result.map  # ``map`` is always our rule


def test_rules_in_json_and_table() -> None:
    emb, ids = _negative_positive_set(0)
    assert MAP_RULES == ("ours", "reference", "both")
    ours = retrieval_metrics(emb, ids).to_json_dict()
    assert "map_reference" not in ours
    both = retrieval_metrics(emb, ids, map_rule="reference").to_json_dict()
    assert both["map"] == ours["map"]
    assert both["map_rule"] == "reference" and both["map_reference"] != both["map"]

    results = {
        "map_rule": "both",
        "rows": [
            {"name": "chance", "retrieval": {"map": 0.1}},
            {"name": "enc", "retrieval": {**both, "map_rule": "both"}},
        ],
    }
    table = format_table(results, "retrieval").splitlines()
    assert table[0].startswith("| row | mAP | mAP (torchmetrics rule) | HR@1")
    assert f"| enc | {both['map']:.3f} | {both['map_reference']:.3f} |" in table[-1]
    assert table[2].startswith("| chance | 0.100 | – |")
    results["map_rule"] = "reference"
    table = format_table(results, "retrieval").splitlines()
    assert table[0].startswith("| row | mAP (torchmetrics rule) | HR@1")
    assert f"| enc | {both['map_reference']:.3f} |" in table[-1]


def test_bench_retrieval_map_rule_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from polypindex.cli import app

    seen: dict[str, object] = {}

    def fake_evaluate(*args: object, **kwargs: object) -> dict[str, object]:
        seen.update(kwargs)
        row = {"map": 0.5, "map_reference": 0.54, "map_rule": kwargs["map_rule"], "hit_rate": {}}
        return {"map_rule": kwargs["map_rule"], "rows": [{"name": "enc", "retrieval": row}]}

    monkeypatch.setattr("polypindex.benchmarks.protocols.evaluate", fake_evaluate)
    base = ["bench", "retrieval", "--data", str(tmp_path), "--model", "enc=m.onnx"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path), "--map-rule", "both"])
    assert result.exit_code == 0, result.output
    assert seen["map_rule"] == "both"
    assert "mAP (torchmetrics rule)" in result.output and "| enc | 0.500 | 0.540 |" in result.output
    bad = CliRunner().invoke(app, [*base, "--map-rule", "torchmetrics"])
    assert bad.exit_code == 2
    reid = CliRunner().invoke(
        app, ["bench", "reid", "--data", str(tmp_path), "--model", "m.onnx", "--map-rule", "both"]
    )
    assert reid.exit_code == 2 and "--map-rule" in reid.output
