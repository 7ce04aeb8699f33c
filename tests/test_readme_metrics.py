"""scripts/readme_metrics.py --check compares the README and the reports as committed.

`make repro` on another CPU rewrites reports/ with slightly different figures; `make test`
(which runs --check) must still pass afterwards, and fail only when what is committed disagrees.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from stagerun import REPO

TEMPLATE = "# Title\n\n<!-- metrics:start -->\nold\n<!-- metrics:end -->\n\nmore\n"


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_metrics",
                                                  REPO / "scripts/readme_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _test_report(macro_f1: float) -> str:
    row = {"precision": macro_f1, "recall": macro_f1, "f1": macro_f1, "support": 5}
    return json.dumps({"accuracy": macro_f1, "macro_f1": macro_f1, "n_images": 10,
                       "model": {"name": "m", "epoch": 0},
                       "per_class": {"happy": row, "sad": row}})


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   cwd=repo, check=True, capture_output=True)


def _args(root: Path) -> list[str]:
    return ["--readme", str(root / "README.md"), "--test", str(root / "reports/test.json"),
            "--train", str(root / "reports/absent.json"),
            "--bench", str(root / "reports/absent.json"), "--reports", str(root / "reports")]


def _write(root: Path, macro_f1: float) -> None:
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports/test.json").write_text(_test_report(macro_f1))


def test_check_reads_the_committed_readme_and_reports(tool, tmp_path):
    _git(tmp_path, "init", "-q")
    _write(tmp_path, 0.8)
    (tmp_path / "README.md").write_text(TEMPLATE)
    assert tool.main(_args(tmp_path)) == 0  # render from the reports
    _git(tmp_path, "add", "README.md", "reports")
    _git(tmp_path, "commit", "-q", "-m", "reports and README")
    assert tool.main([*_args(tmp_path), "--check"]) == 0

    # A local re-run (another CPU) writes different figures: the committed pair still agrees.
    _write(tmp_path, 0.79)
    assert tool.main([*_args(tmp_path), "--check"]) == 0
    assert tool.main(_args(tmp_path)) == 0  # README follows the local reports ...
    assert "| Test macro-F1 | 0.790 |" in (tmp_path / "README.md").read_text()
    assert tool.main([*_args(tmp_path), "--check"]) == 0  # ... HEAD is unchanged

    # Committing new reports without the README they imply is what --check catches.
    _git(tmp_path, "add", "reports")
    _git(tmp_path, "commit", "-q", "-m", "reports only")
    assert tool.main([*_args(tmp_path), "--check"]) == 1
    _git(tmp_path, "add", "README.md")
    _git(tmp_path, "commit", "-q", "-m", "README")
    assert tool.main([*_args(tmp_path), "--check"]) == 0


def test_check_reads_the_working_tree_outside_git(tool, tmp_path):
    """No commit to compare with (a source archive): the files on disk are checked."""
    _write(tmp_path, 0.8)
    (tmp_path / "README.md").write_text(TEMPLATE)
    assert tool.main([*_args(tmp_path), "--check"]) == 1
    assert tool.main(_args(tmp_path)) == 0
    assert tool.main([*_args(tmp_path), "--check"]) == 0


def test_committed_text_of_a_file_missing_from_head(tool, tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("a\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "a")
    (tmp_path / "a.txt").write_text("changed\n")
    (tmp_path / "new.txt").write_text("new\n")
    assert tool.committed_text(tmp_path / "a.txt") == "a\n"
    assert tool.committed_text(tmp_path / "new.txt") is None
    assert tool.committed_text(tmp_path / "sub" / "none.json") is None


def test_loss_comparison_is_rendered_best_first(tool, tmp_path):
    runs = {name: {"minority_mean_f1": f1, "macro_f1": f1 - 0.01, "data_source": "demo"}
            for name, f1 in (("ce", 0.886), ("ldam", 0.903))}
    report = {"classes": ["fearful", "angry"], "split": "test", "runs": runs,
              "best_minority_mean_f1": "ldam"}
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/test.json").write_text(_test_report(0.5))
    (tmp_path / "reports/loss_comparison.json").write_text(json.dumps(report))
    (tmp_path / "README.md").write_text(TEMPLATE + "<!-- losses:start -->\n<!-- losses:end -->\n")
    assert tool.main(_args(tmp_path)) == 0
    text = (tmp_path / "README.md").read_text()
    assert "ldam 0.903, ce 0.886" in text and "best: ldam" in text


def test_detector_table_names_the_cpu_and_the_options(tool):
    row = {"detector": "mtcnn", "options": {"scale_factor": 0.6}, "found": 3, "faces": 4,
           "recall": 0.75, "false_positives": 0, "ms_per_image_median": 16.4, "threshold": 0.9}
    report = {"faces_total": 4, "images": [{}, {}], "machine": {"cpu": "Some CPU, 2 cores"},
              "results": [row], "recommended": {"detector": "mtcnn", "rule": "best F1"}}
    text = tool.render_detectors(report)
    assert "4 real faces in 2 images, Some CPU, 2 cores" in text
    assert "| mtcnn | scale_factor 0.6 | 0.9 | 3 of 4 | 0.750 | 0 | 16 |" in text


def test_soak_line_shows_every_process_memory_and_health(tool):
    report = {"duration_s": 600.0, "warmup_s": 30.0, "clients": 50, "pass": False,
              "cpu": {"description": "Some CPU, 2 cores"},
              "load": {"requests": 1000, "errors": 2, "latency_ms": {"p99": 120.4}},
              "rss_mb": {"start": {"1": 100.0, "2": 300.2}, "end": {"1": 100.0, "2": 420.0}},
              "health": {"probes": 60, "failures": 1, "after_load_status": 200}}
    [line] = tool.serve_soak(report)
    assert "Soak (10 min at 50 clients" in line and "Some CPU, 2 cores" in line
    assert "1000 requests, 2 errors, p99 120 ms" in line
    assert "100 -> 100, 300 -> 420" in line and "59 of 60 probes" in line
    assert line.endswith("(**fail**).")


def test_service_path_sentence_names_the_chosen_and_the_configured_margin(tool):
    report = {"detector": {"name": "mtcnn"}, "chosen_margin": 0.05, "configured_margin": 0.15,
              "val": {"found_rate": 0.76, "accuracy_on_found_by_margin": {"0.05": 0.67,
                                                                          "0.15": 0.64}},
              "test": {"found_rate": 0.75, "whole_image_accuracy_on_found": 0.68,
                       "accuracy_on_found_by_margin": {"0.05": 0.6675, "0.15": 0.6373}}}
    text = tool.render_service_path(report)
    assert "0.05 67.0%, 0.15 64.0%; chosen: **0.05**" in text
    assert "PrivateTest at 0.05: **66.75%**, vs 68.00%" in text
    assert "`serve.face_margin` is 0.15: 63.73% on PrivateTest." in text


def test_serve_load_table_shows_every_run_when_repeated(tool):
    def scenario(p50s):
        runs = [{"p50": p, "p90": p + 1, "p99": p + 2, "requests_per_s": 10.0, "errors": 0}
                for p in p50s]
        return {"requests_per_s": 10.0, "errors": 0, "runs": runs,
                "latency_ms": {"p50": sorted(p50s)[1], "p90": 0.0, "p99": 0.0}}

    report = {"tool": "locust 2", "cpu": {"description": "Some CPU, 2 cores"},
              "model": {"what": "m"}, "ceiling": {"threads": 1, "batch_1_img_s": 100.0},
              "scenarios": {"single_faces": scenario([22.4, 25.1, 24.0])}}
    text = "\n".join(tool.serve_load(report))
    assert "medians of 3 runs per scenario" in text
    assert "| 24.0 | 0.0 | 0.0 | 0 | 22.4, 25.1, 24.0 |" in text


def test_serve_load_names_the_face_step_per_size_and_the_photo_target(tool):
    report = {"tool": "locust 2", "cpu": {"description": "Some CPU, 2 cores"},
              "model": {"what": "m"}, "ceiling": {"threads": 1, "batch_1_img_s": 100.0},
              "scenarios": {}, "targets": {"single_faces_p50_ms": {
                  "value": 28.0, "limit": 15.0, "pass": False}},
              "detection_by_size": {"max_side": 1280, "sizes": [
                  {"size": "640x480", "faces": 1, "detect_ms_p50": 19.2},
                  {"size": "4032x3024", "faces": 1, "detect_ms_p50": 141.0}]}}
    text = "\n".join(tool.serve_load(report))
    assert "`faces.max_side` 1280): 640x480 19 ms, 4032x3024 141 ms." in text
    assert "Photo p50 target 15 ms: not met." in text


def test_parity_table_has_a_row_per_photo_and_the_agreement(tool):
    photo = {"photo": "astronaut", "size": [512, 512], "format": "png", "service_faces": 1,
             "app_faces": 1, "matched": 1, "labels_agree": 1, "app_detect_ms": 210.4}
    report = {"min_iou": 0.8, "photos": [photo, {**photo, "photo": "blank", "service_faces": 0,
                                                 "app_faces": 0, "matched": 0,
                                                 "labels_agree": 0}],
              "faces": 1, "faces_matched": 1, "label_agreement": 1.0, "browser": "chromium 1",
              "hardware": "Some CPU, 2 cores",
              "alternative": {"detector": "tiny", "faces_found": 0, "of_service_faces": 1,
                              "match_iou": 0.3, "extra_faces": 2, "mean_ms": 80.0}}
    text = tool.render_parity(report)
    assert "| astronaut | 512x512 png | 1 | 1 | 1 | 1 | 210 |" in text
    assert "| blank | 512x512 png | 0 | 0 | 0 | 0 | 210 |" in text
    assert "**1 of 1 faces found by both, label agreement 100.0 %**" in text
    assert "Some CPU, 2 cores" in text and "found 0 of the service's 1" in text


def test_sections_are_rendered_into_whichever_docs_page_holds_them(tool, tmp_path):
    _write(tmp_path, 0.8)
    (tmp_path / "README.md").write_text("# Title\n\nno figures here\n")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "pipeline.md"
    page.write_text("# Pipeline\n\n<!-- metrics:start -->\nold\n<!-- metrics:end -->\n")
    assert tool.main(_args(tmp_path)) == 0
    assert "| Test macro-F1 | 0.800 |" in page.read_text()
    assert tool.main([*_args(tmp_path), "--check"]) == 0  # outside git: the working tree
    _write(tmp_path, 0.7)
    assert tool.main([*_args(tmp_path), "--check"]) == 1
    (tmp_path / "README.md").write_text("<!-- metrics:start -->\n<!-- metrics:end -->\n")
    with pytest.raises(SystemExit, match="exactly one page must hold"):
        tool.main(_args(tmp_path))  # the same section in two pages


def test_the_readme_is_short_and_in_the_newcomers_order():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    order = ["## The two commands", "## Use it", "## The shipped model on faces it has never",
             "## Train on your own faces", "## Where everything else is"]
    assert [readme.index(h) for h in order] == sorted(readme.index(h) for h in order)
    for link in set(re.findall(r"\]\((docs/[^)#]+)", readme)):
        assert (REPO / link).is_file(), link
