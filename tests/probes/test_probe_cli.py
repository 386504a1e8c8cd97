"""`polypindex probe train` and `polypindex bench size|histology` on a tiny dataset; the
benchmark's stored metrics equal scikit-learn's on its stored predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from typer.testing import CliRunner

from polypindex.cli import app
from polypindex.model.core.layout import Layout
from polypindex.model.runtime.loader import layout_encoder
from polypindex.model.scoring.probe import load_probe, task_label

runner = CliRunner()


@pytest.fixture(scope="module")
def bench_histology(
    tiny_probe_data: tuple[Path, dict[str, str]],
    tiny_encoder: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    data, _ = tiny_probe_data
    out = tmp_path_factory.mktemp("bench_histology")
    result = runner.invoke(
        app,
        [
            "bench", "histology", "--data", str(data),
            "--model", f"tiny={tiny_encoder}",
            "--seeds", "0", "1",
            "--epochs", "3",
            "--out", str(out),
            "--cache-dir", str(out / "cache"),
            "--home", str(out / "home"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| majority_class |" in result.output and "| tiny |" in result.output
    return {"out": out, "results": json.loads((out / "results.json").read_text()), "data": data}


def test_bench_writes_rows_figures_and_environment(bench_histology: dict[str, Any]) -> None:
    res, out = bench_histology["results"], bench_histology["out"]
    assert [r["name"] for r in res["rows"]] == ["majority_class", "color_histogram", "tiny"]
    assert res["seeds"] == [0, 1]
    for name in ("confusion.png", "reliability_calibrated.png", "reliability_uncalibrated.png"):
        assert (out / name).stat().st_size > 1000
    assert (out / "results.md").read_text().startswith("| row | identity accuracy |")
    env = res["environment"]
    assert env["cpu_count"] >= 1 and env["numpy"] and env["onnxruntime"] and env["torch"]
    for row in res["rows"]:
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]
        acc = [r["accuracy"] for r in row["per_seed"]]
        assert row["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(acc))
        assert row["summary"]["accuracy"]["std"] == pytest.approx(np.std(acc))
    summary = res["data_summary"]
    assert summary["train"]["excluded_unknown_label"]["polyps"] == 1
    for split in summary["probe_splits"].values():
        assert not set(split["probe_train_polyps"]) & set(split["probe_val_polyps"])


def test_bench_metrics_equal_sklearn_on_its_predictions(bench_histology: dict[str, Any]) -> None:
    res = bench_histology["results"]
    test_meta = {}
    for ann in json.loads(
        (bench_histology["data"] / "annotations" / "instances_test.json").read_text()
    )["annotations"]:
        test_meta.setdefault(ann["identity_id"], ann)
    checked = 0
    for row in res["rows"]:
        for r in row["per_seed"]:
            pred = r["predictions"]
            y, p, s = np.asarray(pred["y_true"]), np.asarray(pred["y_pred"]), pred["probability"]
            assert r["accuracy"] == pytest.approx(accuracy_score(y, p))
            assert r["macro_f1"] == pytest.approx(
                f1_score(y, p, average="macro", labels=[0, 1], zero_division=0)
            )
            assert r["sensitivity"] == pytest.approx(recall_score(y, p))
            assert r["specificity"] == pytest.approx(recall_score(y, p, pos_label=0))
            assert r["auroc"] == pytest.approx(roc_auc_score(y, s))
            # the truth is the polyp's annotated histology
            assert y.tolist() == [task_label("histology", test_meta[i]) for i in pred["polyps"]]
            dim = [k for k, i in enumerate(pred["polyps"]) if test_meta[i]["size"] <= 5.0]
            npv = r["npv_diminutive_detail"]
            assert npv["n_diminutive_polyps"] == len(dim)
            if (p[dim] == 0).any():
                expected = precision_score(y[dim], p[dim], pos_label=0)
                assert r["npv_diminutive"] == pytest.approx(expected)
            else:
                assert r["npv_diminutive"] is None and npv["reason"].startswith("undefined")
            checked += 1
    assert checked == 6


def test_majority_baseline_predicts_one_class(bench_histology: dict[str, Any]) -> None:
    for r in bench_histology["results"]["rows"][0]["per_seed"]:
        assert len(set(r["predictions"]["y_pred"])) == 1
        assert r["auroc"] == pytest.approx(0.5)
        q = r["positive_fraction_probe_train"]
        assert set(r["predictions"]["y_pred"]) == {int(q >= 0.5)}


def test_bench_size_reports_identity_macro_f1(
    tiny_probe_data: tuple[Path, dict[str, str]], tiny_encoder: Path, tmp_path: Path
) -> None:
    data, _ = tiny_probe_data
    result = runner.invoke(
        app,
        [
            "bench", "size", "--data", str(data), "--model", str(tiny_encoder),
            "--seeds", "3", "--epochs", "2", "--out", str(tmp_path),
            "--cache-dir", str(tmp_path / "cache"), "--home", str(tmp_path / "home"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.md").read_text().startswith("| row | identity macro F1 |")
    for row in res["rows"]:
        (r,) = row["per_seed"]
        pred = r["predictions"]
        assert r["macro_f1"] == pytest.approx(
            f1_score(
                pred["y_true"], pred["y_pred"], average="macro", labels=[0, 1], zero_division=0
            )
        )
        assert "npv_diminutive" not in r


def test_probe_train_cli_writes_a_loadable_probe(
    tiny_probe_data: tuple[Path, dict[str, str]], tiny_encoder: Path, tmp_path: Path
) -> None:
    data, _ = tiny_probe_data
    out = tmp_path / "p" / "size.npz"
    result = runner.invoke(
        app,
        [
            "probe", "train", "size", "--data", str(data), "--model", str(tiny_encoder),
            "--out", str(out), "--head", "mlp", "--epochs", "2", "--seed", "1",
            "--cache-dir", str(tmp_path / "cache"), "--home", str(tmp_path / "home"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # progress bars go to stderr
    probe = load_probe(out, encoder_version=layout_encoder(Layout(), tiny_encoder).version)
    assert probe.head == "mlp" and summary["version"] == probe.version
    assert summary["excluded_unknown_label"]["polyps"] == 1  # the polyp without a size


@pytest.mark.parametrize(
    "args",
    [
        ["probe", "train", "size", "--data", "{data}", "--model", "{tmp}/missing.onnx"],
        ["bench", "size", "--data", "{data}", "--model", "{tmp}/missing.onnx", "--out", "{tmp}/o"],
        ["bench", "size", "--data", "{tmp}/no_data", "--model", "{enc}", "--out", "{tmp}/o"],
    ],
)
def test_cli_errors_exit_1_with_a_message(
    tiny_probe_data: tuple[Path, dict[str, str]],
    tiny_encoder: Path,
    tmp_path: Path,
    args: list[str],
) -> None:
    data, _ = tiny_probe_data
    filled = [a.format(data=data, tmp=tmp_path, enc=tiny_encoder) for a in args]
    result = runner.invoke(
        app, [*filled, "--cache-dir", str(tmp_path / "c"), "--home", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "error:" in result.output
    assert "not found" in result.output


def test_bench_rejects_non_integer_seeds(tiny_encoder: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "bench",
            "size",
            "--data",
            str(tmp_path),
            "--model",
            str(tiny_encoder),
            "--seeds",
            "0",
            "x",
        ],
    )
    assert result.exit_code != 0
    assert "seeds must be integers" in result.output
