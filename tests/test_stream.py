"""Real-time serving: the micro-batcher, the face tracker and the ``/stream`` WebSocket.

The batcher and the tracker are plain Python and tested directly (fast). The WebSocket is tested
against a real ``bentoml serve`` on loopback, with video frames made from real photos shipped
with scikit-image (the astronaut moving across a 640x480 frame, built by
``benchmarks/serve_load.py``, whose ``--stream`` run records the frame rate).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from emorec.config import Params
from emorec.faces import Face, FaceSettings
from emorec.inference import OnnxClassifier
from emorec.serving import (
    BentoServer,
    FaceTracker,
    FoundFaces,
    MicroBatcher,
    Overloaded,
    box_iou,
    find_faces,
    parse_server_timing,
    server_timing,
    stream_answer,
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["a", "b", "c"]


def _load_bench():
    spec = importlib.util.spec_from_file_location("serve_load_bench",
                                                  REPO / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# MicroBatcher


class SlowModel:
    """Row sums as 'probabilities', taking ``delay`` seconds per call; records batch sizes."""

    def __init__(self, delay: float = 0.02, fail_on: float | None = None):
        self.delay, self.fail_on, self.batches = delay, fail_on, []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        time.sleep(self.delay)
        if self.fail_on is not None and np.any(batch == self.fail_on):
            raise RuntimeError("model failed")
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)


def rows(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1, 1)


def test_idle_batcher_runs_a_call_at_once():
    model = SlowModel(delay=0.0)
    batcher = MicroBatcher(model, max_batch_size=8, max_queue=64)
    result = asyncio.run(batcher(rows(1, 2)))
    np.testing.assert_array_equal(result.probabilities[:, 0], [1, 2])
    assert model.batches == [2] and result.wait_ms < 5 and result.batch_rows == 2


def test_overlapping_calls_share_the_next_batch_and_keep_their_rows():
    model = SlowModel(delay=0.05)
    batcher = MicroBatcher(model, max_batch_size=4, max_queue=64)

    async def many():
        first = asyncio.create_task(batcher(rows(0)))
        await asyncio.sleep(0.01)  # the first call is running now; these queue behind it
        rest = [asyncio.create_task(batcher(rows(i, 10 * i))) for i in range(1, 5)]
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(many())
    assert model.batches == [1, 4, 4]  # alone, then merged up to max_batch_size rows
    assert first.probabilities[0, 0] == 0
    for i, result in enumerate(rest, start=1):
        np.testing.assert_array_equal(result.probabilities[:, 0], [i, 10 * i])
        assert result.wait_ms > 20  # waited for the batch before
    assert batcher.stats.to_json() == {"batches": 3, "rows": 9, "largest": 4, "mean_rows": 3.0}


def test_large_request_is_split_into_batches():
    model = SlowModel(delay=0.0)
    batcher = MicroBatcher(model, max_batch_size=3, max_queue=64)
    result = asyncio.run(batcher(rows(*range(7))))
    np.testing.assert_array_equal(result.probabilities[:, 0], np.arange(7))
    assert sum(model.batches) == 7 and max(model.batches) <= 3


def test_full_queue_refuses_instead_of_waiting():
    batcher = MicroBatcher(SlowModel(delay=0.05), max_batch_size=2, max_queue=3)

    async def flood():
        running = asyncio.create_task(batcher(rows(1)))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(batcher(rows(1, 2, 3)))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="serve.max_queue"):
            await batcher(rows(4))
        await running, await queued

    asyncio.run(flood())


def test_failed_batch_fails_its_callers_only_and_the_batcher_goes_on():
    model = SlowModel(delay=0.02, fail_on=13)
    batcher = MicroBatcher(model, max_batch_size=1, max_queue=64)

    async def mixed():
        return await asyncio.gather(batcher(rows(13)), batcher(rows(5)), return_exceptions=True)

    bad, good = asyncio.run(mixed())
    assert isinstance(bad, RuntimeError)
    assert good.probabilities[0, 0] == 5
    assert asyncio.run(batcher(rows(6))).probabilities[0, 0] == 6


def test_server_timing_round_trip():
    header = server_timing({"decode": 0.4, "queue": 0.0, "model": 1.25})
    assert header == "decode;dur=0.400, queue;dur=0.000, model;dur=1.250"
    assert parse_server_timing(header) == {"decode": 0.4, "queue": 0.0, "model": 1.25}


# ---------------------------------------------------------------------------------------------
# FaceTracker


def probs(*p: float) -> np.ndarray:
    return np.array([p], dtype=np.float32)


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_tracker_follows_a_moving_face_and_smooths_its_probabilities():
    tracker = FaceTracker(smoothing=0.5, match_iou=0.3, max_missed=1)
    (first,) = tracker.update([(100, 100, 50, 50)], probs(1, 0, 0))
    (second,) = tracker.update([(104, 102, 50, 50)], probs(0, 1, 0))
    assert first[0] == second[0] == 0
    np.testing.assert_allclose(second[1], [0.5, 0.5, 0])  # EMA: half new, half before
    (third,) = tracker.update([(108, 104, 50, 50)], probs(0, 1, 0))
    np.testing.assert_allclose(third[1], [0.25, 0.75, 0])


def test_tracker_tells_faces_apart_and_forgets_lost_ones():
    tracker = FaceTracker(smoothing=0.5, match_iou=0.3, max_missed=1)
    left, right = (10, 10, 40, 40), (200, 10, 40, 40)
    ids = [i for i, _ in tracker.update([left, right], np.vstack([probs(1, 0, 0),
                                                                  probs(0, 0, 1)]))]
    assert ids == [0, 1]
    # the order of faces in a frame does not matter, the boxes do
    swapped = tracker.update([right, left], np.vstack([probs(0, 0, 1), probs(1, 0, 0)]))
    assert [i for i, _ in swapped] == [1, 0]
    np.testing.assert_allclose(swapped[0][1], [0, 0, 1])
    tracker.update([left], probs(1, 0, 0))       # right missed once: kept
    tracker.update([left], probs(1, 0, 0))       # missed twice: dropped
    (back,) = tracker.update([right], probs(0, 1, 0))
    assert back[0] == 2  # a new track, no memory of the old one
    np.testing.assert_allclose(back[1], [0, 1, 0])


def test_smoothing_one_means_per_frame_answers():
    tracker = FaceTracker(smoothing=1.0, match_iou=0.3, max_missed=5)
    tracker.update([(0, 0, 20, 20)], probs(1, 0, 0))
    (now,) = tracker.update([(1, 1, 20, 20)], probs(0, 0, 1))
    np.testing.assert_allclose(now[1], [0, 0, 1])


def test_stream_answer_carries_track_ids_and_no_face_message():
    tracker = FaceTracker(smoothing=0.5, match_iou=0.3, max_missed=5)
    found = FoundFaces([Face((5, 5, 30, 30), 0.99, None)], [np.zeros((1, 8, 8))])
    message = stream_answer(3, found, probs(0.2, 0.7, 0.1), tracker, CLASSES)
    (face,) = message["faces"]
    assert message["frame"] == 3 and "message" not in message
    assert face["track_id"] == 0 and face["label"] == "b" and face["box"] == [5, 5, 30, 30]
    empty = stream_answer(4, FoundFaces([], []), np.empty((0, 3)), tracker, CLASSES)
    assert empty == {"frame": 4, "faces": [], "message": "no face found"}


# ---------------------------------------------------------------------------------------------
# The /stream WebSocket of the real server

STREAM = {"smoothing": 0.5, "match_iou": 0.3, "max_missed": 2, "max_in_flight": 3,
          "max_frame_bytes": 300_000}


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory, tiny_onnx, repo_params_raw):
    tmp = tmp_path_factory.mktemp("stream")
    raw = json.loads(json.dumps(repo_params_raw))
    raw["serve"].update(stream=STREAM, workers=1)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {"EMOREC_MODEL": str(tiny_onnx["fp32"]), "EMOREC_PARAMS": str(tmp / "params.yaml"),
           "BENTOML_HOME": str(tmp / "bentoml_home")}
    with BentoServer(log_path=tmp / "serve.log", env=env) as srv:
        srv.params = Params(raw)
        yield srv


def connect(server: BentoServer, query: str = "mode=faces"):
    from websocket import create_connection

    return create_connection(f"ws://127.0.0.1:{server.port}/stream?{query}", timeout=30)


def expected_raw(model: OnnxClassifier, frame: bytes, settings: FaceSettings) -> np.ndarray:
    found = find_faces(Image.open(io.BytesIO(frame)), "faces", settings, model.preprocess)
    return model.probabilities(np.stack(found.inputs))


@pytest.mark.slow
def test_stream_answers_every_frame_in_order_with_smoothed_tracked_faces(stream_server,
                                                                          tiny_onnx):
    bench = _load_bench()
    frames = bench.video_frames(12)
    ws = connect(stream_server)
    try:
        for frame in frames[:3]:  # pipelined: several frames in flight before any answer
            ws.send_binary(frame)
        answers = [json.loads(ws.recv()) for _ in range(3)]
        for frame in frames[3:]:
            ws.send_binary(frame)
            answers.append(json.loads(ws.recv()))
    finally:
        ws.close()
    assert [a["frame"] for a in answers] == list(range(len(frames)))
    assert all(len(a["faces"]) == 1 for a in answers), answers[0]
    assert {a["faces"][0]["track_id"] for a in answers} == {0}  # one face, followed throughout
    # the face is where the photo was put in each frame
    for offset, answer in zip(np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False)), answers,
                              strict=True):
        x = int(round((640 - 480) * (0.5 + 0.5 * offset)))
        astronaut = (x + 172 * 480 // 512, 62 * 480 // 512, 100 * 480 // 512, 108 * 480 // 512)
        assert box_iou(tuple(answer["faces"][0]["box"]), astronaut) > 0.4
    # smoothing: frame 1's probabilities are the EMA of frames 0 and 1 (alpha 0.5)
    model = OnnxClassifier(tiny_onnx["fp32"])
    settings = FaceSettings.from_params(stream_server.params)
    raw0, raw1 = (expected_raw(model, frames[i], settings)[0] for i in (0, 1))
    got = [np.array([a["faces"][0]["probabilities"][c] for c in model.classes])
           for a in answers[:2]]
    np.testing.assert_allclose(got[0], raw0, atol=1e-4)
    np.testing.assert_allclose(got[1], 0.5 * raw1 + 0.5 * raw0, atol=1e-4)


@pytest.mark.slow
def test_bad_frames_get_an_error_and_the_stream_goes_on(stream_server):
    bench = _load_bench()
    good = bench.video_frames(2)[0]
    blank = bench.jpeg(np.full((480, 640, 3), 128, dtype=np.uint8))
    ws = connect(stream_server)
    try:
        ws.send_binary(b"not a jpeg")
        ws.send("a text message")
        ws.send_binary(b"\xff" * (STREAM["max_frame_bytes"] + 1))
        ws.send_binary(blank)
        ws.send_binary(good)
        answers = [json.loads(ws.recv()) for _ in range(5)]
    finally:
        ws.close()
    assert [a["frame"] for a in answers] == [0, 1, 2, 3, 4]
    assert "frame 0: corrupt" in answers[0]["error"]
    assert "binary message" in answers[1]["error"]
    assert "too_large" in answers[2]["error"]
    assert answers[3] == {"frame": 3, "faces": [], "message": "no face found"}
    assert len(answers[4]["faces"]) == 1


@pytest.mark.slow
def test_cropped_stream_and_unknown_mode(stream_server):
    from websocket import ABNF

    crop = _load_bench().face_crops(64, 1)[0]
    ws = connect(stream_server, "mode=cropped")
    try:
        ws.send_binary(crop)
        (face,) = json.loads(ws.recv())["faces"]
        assert face["box"] == [0, 0, 64, 64] and face["track_id"] == 0
    finally:
        ws.close()
    ws = connect(stream_server, "mode=everything")  # refused: close code 1008, with the reason
    try:
        opcode, frame = ws.recv_data_frame(True)
    finally:
        ws.close()
    assert opcode == ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1008 and b"mode must be" in frame.data


@pytest.mark.slow
def test_client_leaving_mid_stream_does_not_hurt_the_next_one(stream_server):
    frames = _load_bench().video_frames(6)
    for _ in range(3):  # leave with frames in flight and more sent than the server takes at once
        ws = connect(stream_server)
        for frame in frames:
            ws.send_binary(frame)
        ws.close()
    ws = connect(stream_server)
    try:
        ws.send_binary(frames[0])
        answer = json.loads(ws.recv())
    finally:
        ws.close()
    assert answer["frame"] == 0 and len(answer["faces"]) == 1
    assert requests.get(f"{stream_server.url}/health", timeout=10).status_code == 200
    assert "Traceback" not in stream_server.log_tail(200)
