"""Serving figures: load and soak benchmarks, face detectors, the service crop path, live mode."""

from __future__ import annotations

from typing import Any

SERVE_SCENARIOS = {"single_cropped": "1 client, 64 px face (mode cropped)",
                   "single_faces": "1 client, 640x480 photo (face detection)",
                   "clients_50": "50 clients, 64 px faces", "burst_200": "200 connections at once",
                   "mixed": "good and malformed uploads mixed"}


def serve_load(report: dict[str, Any]) -> list[str]:
    """benchmarks/serve_load.py (Locust): one row per scenario, the ceiling and the CPU."""
    if "scenarios" not in report:  # a report of the thread-client benchmark before Locust
        lat = report["latency_ms"]
        return [f"Service under load ({report['clients']} clients, {report['duration_s']:.0f} s, "
                f"{report['endpoint']}): {report['requests_per_s']:.1f} req/s, "
                f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, errors {report['errors']}."]
    roof = report["ceiling"]
    pinning = report.get("pinning") or {}
    where = (f"server on core(s) {pinning['server_cpus']}, Locust on {pinning['client_cpus']}"
             if pinning.get("server_cpus") else "server and Locust sharing the cores")
    workers = (report.get("batching") or {}).get("workers")
    where += f", {workers} server worker(s)" if workers else ""
    repeats = max((len(s.get("runs", [])) for s in report["scenarios"].values()), default=1)
    medians = f"; medians of {repeats} runs per scenario" if repeats > 1 else ""
    lines = [f"Service under load ({report['tool']}, {report['cpu']['description']}, {where}; "
             f"model: {report['model']['what']}{medians}):", "",
             "| Scenario | req/s | p50 ms | p90 ms | p99 ms | Errors |"
             + (" p50 ms of each run |" if repeats > 1 else ""),
             "|---|---|---|---|---|---|" + ("---|" if repeats > 1 else "")]
    for name, s in report["scenarios"].items():
        lat = s["latency_ms"]
        each = (" " + ", ".join(f"{r['p50']:.1f}" for r in s.get("runs", [])) + " |"
                if repeats > 1 else "")
        lines.append(f"| {SERVE_SCENARIOS.get(name, name)} | {s['requests_per_s']:.1f} | "
                     f"{lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | {s['errors']} |"
                     + each)
    line = (f"In-process onnxruntime ceiling ({roof['threads']} thread, batch 1): "
            f"{roof['batch_1_img_s']:.0f} img/s")
    if report.get("clients_50_vs_ceiling") is not None:
        line += f"; 50 clients reach **{report['clients_50_vs_ceiling']:.2f}x** of it"
    stream = report.get("targets", {}).get("stream_fps")
    if stream:
        line += f"; one 640x480 video stream over /stream: **{stream['value']:.1f} fps**"
    lines += ["", line + "."]
    by_size = report.get("detection_by_size")
    if by_size:
        sizes = ", ".join(f"{r['size']} {r['detect_ms_p50']:.0f} ms" for r in by_size["sizes"])
        detector = {"yunet": "YuNet", "mtcnn": "MTCNN"}.get(by_size.get("detector", "mtcnn"),
                                                            by_size.get("detector"))
        lines += ["", f"The service's face step per photo size ({detector}, crops and "
                      f"preprocessing in-process, median; `faces.max_side` "
                      f"{by_size['max_side']}): {sizes}."]
    photo = report.get("targets", {}).get("single_faces_p50_ms")
    if photo:
        lines[-1] += (f" Photo p50 target {photo['limit']:.0f} ms: "
                      f"{'met' if photo['pass'] else 'not met'}.")
    return lines


def serve_soak(report: dict[str, Any]) -> list[str]:
    """benchmarks/serve_soak.py: errors, memory of every server process, /health."""
    load, rss, health = report["load"], report["rss_mb"], report["health"]
    memory = ", ".join(f"{rss['start'][pid]:.0f} -> {rss['end'][pid]:.0f}"
                       for pid in rss["start"])
    return [f"Soak ({report['duration_s'] / 60:.0f} min at {report['clients']} clients after "
            f"{report['warmup_s']:.0f} s of warm-up, {report['cpu']['description']}): "
            f"{load['requests']} requests, {load['errors']} errors, p99 "
            f"{load['latency_ms']['p99']:.0f} ms; server processes' RSS (MB) {memory}; /health "
            f"answered {health['probes'] - health['failures']} of {health['probes']} probes "
            f"during the load and {health['after_load_status']} after "
            f"({'pass' if report['pass'] else '**fail**'})."]


def render_detectors(report: dict[str, Any]) -> str:
    """The face detector table from ``reports/faces/detector_comparison.json``."""
    machine = report["machine"]
    lines = [f"{report['faces_total']} real faces in {len(report['images'])} images, "
             f"{machine.get('cpu') or str(machine['cpus']) + ' cores'}:", "",
             "| Detector | Options | Threshold | Faces found | Recall | False positives "
             "| Median ms/image |",
             "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        options = ", ".join(f"{k} {v}" for k, v in r.get("options", {}).items())
        threshold = r.get("threshold", r.get("default_threshold"))
        lines.append(f"| {r['detector']} | {options} | {threshold:g} | "
                     f"{r['found']} of {r['faces']} | {r['recall']:.3f} | {r['false_positives']} | "
                     f"{r['ms_per_image_median']:.0f} |")
    best = report["recommended"]
    lines += ["", f"Recommended: **{best['detector']}** ({best['rule']}). "
                  "_Generated from `reports/faces/detector_comparison.json`._"]
    return "\n".join(lines)


def render_service_path(report: dict[str, Any]) -> str:
    """FER2013 through the service's crop path, from ``reports/fer2013_service_path.json``."""
    val, test = report["val"], report["test"]
    chosen, configured = report["chosen_margin"], report["configured_margin"]
    by_margin = ", ".join(f"{m} {acc:.1%}" for m, acc in val["accuracy_on_found_by_margin"].items())
    test_acc = test["accuracy_on_found_by_margin"]
    lines = [f"Through the service's own path ({report['detector']['name']}, eyes levelled, "
             f"square crop with a margin), the detector finds a face in "
             f"{val['found_rate']:.1%} of PublicTest and {test['found_rate']:.1%} of PrivateTest "
             f"(FER2013's 48 px images are tight crops, with little of the head around the "
             f"face). On those faces, PublicTest accuracy by margin: {by_margin}; chosen: "
             f"**{chosen:g}**. PrivateTest at {chosen:g}: **{test_acc[f'{chosen:g}']:.2%}**, "
             f"vs {test['whole_image_accuracy_on_found']:.2%} for the same images taken whole."]
    if f"{configured:g}" != f"{chosen:g}":
        lines.append(f"`serve.face_margin` is {configured:g}: "
                     f"{test_acc[f'{configured:g}']:.2%} on PrivateTest.")
    lines.append("_Generated from `reports/fer2013_service_path.json`._")
    return " ".join(lines)


def render_live(report: dict[str, Any]) -> str:
    """The PWA's live-mode frame rate, from ``reports/faces/live_mode.json``."""
    wasm = report.get("wasm")
    on = report["tfjs_backend"] + (
        f" ({'SIMD' if wasm['simd'] else 'no SIMD'}, {wasm['threads']} thread(s))" if wasm else "")
    bench = ", ".join(f"{name} {ms:.0f} ms" for name, ms in report["backend_benchmark_ms"].items())
    width, height = report["frame"]
    # fps counts frames processed, so it may exceed the camera's rate (a frame done twice).
    return (f"Live mode at {width}x{height}, {report['faces']} faces, {report['camera_fps']} fps "
            f"camera: **{report['fps']:.1f} frames processed per second** "
            f"(per frame: detection {report['ms_detect_per_frame']:.1f} ms, emotion model "
            f"{report['ms_model_per_frame']:.1f} ms: {report['emotion_model']}); face detector "
            f"on TensorFlow.js {on}, chosen at start as the fastest of {bench} per detection; "
            f"{report['browser']}; {report['cpu']}, {report['cores']} cores. "
            "_Generated from `reports/faces/live_mode.json`._")


def render_parity(report: dict[str, Any]) -> str:
    """The app against the real service on the same photos, from ``reports/mobile/parity.json``."""
    rows = ["| photo | size | faces (service) | faces (app) | same box (IoU >= "
            f"{report['min_iou']}) | same label | app: detection ms |",
            "|---|---|---|---|---|---|---|"]
    for r in report["photos"]:
        rows.append(f"| {r['photo']} | {r['size'][0]}x{r['size'][1]} {r['format']} | "
                    f"{r['service_faces']} | {r['app_faces']} | {r['matched']} | "
                    f"{r['labels_agree']} | {r['app_detect_ms']:.0f} |")
    alt = report["alternative"]
    return ("\n".join(rows) + "\n\n"
            f"**{report['faces_matched']} of {report['faces']} faces found by both, label "
            f"agreement {100 * report['label_agreement']:.1f} %**, {report['browser']} (no "
            f"built-in FaceDetector) against `bentoml serve`, both with the shipped model; "
            f"{report['hardware']}. The alternative, {alt['detector']}, found "
            f"{alt['faces_found']} of the service's {alt['of_service_faces']} detected faces "
            f"(IoU >= {alt['match_iou']}) with {alt['extra_faces']} others, in "
            f"{alt['mean_ms']:.0f} ms per photo. _Generated from `reports/mobile/parity.json` "
            "by `EMOREC_PARITY_REPORT=reports/mobile/parity.json pytest "
            "tests/test_mobile_parity.py`._")
