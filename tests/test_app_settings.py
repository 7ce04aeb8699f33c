"""What the web app and the service are told by params.yaml about each other: the face detector
settings in the app's config.json, the service URL of the app's fallback, and the web origins
the service lets call it (CORS)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from emorec.config import Params
from emorec.errors import ParamsError
from emorec.faces import FaceSettings, MtcnnDetector, YunetDetector
from emorec.mobile import MobileAssetsError, MobileSettings, face_config
from emorec.serving.settings import ServeSettings

REPO = Path(__file__).resolve().parents[1]


def edited(raw: dict, section: str, **values) -> Params:
    raw = copy.deepcopy(raw)
    raw[section].update(values)
    return Params(raw)


def test_the_app_gets_the_services_detector_settings(repo_params_raw):
    params = edited(repo_params_raw, "faces", min_size=30, max_faces=5, whole_image_max_side=200,
                    detector="mtcnn", score_threshold=None)
    faces = face_config(FaceSettings.from_params(params))
    assert faces["detector"] == "mtcnn"
    assert faces["min_size"] == 30 and faces["max_faces"] == 5
    assert faces["whole_image_max_side"] == 200
    assert faces["score_threshold"] == MtcnnDetector.default_threshold
    assert faces["stage_thresholds"] == list(MtcnnDetector.stage_thresholds)
    assert faces["scale_factor"] == params.number("faces.mtcnn.scale_factor")
    assert sorted(faces["files"]) == ["onet", "pnet", "rnet"]


def test_the_app_gets_yunets_settings(repo_params_raw):
    params = edited(repo_params_raw, "faces", detector="yunet", score_threshold=0.65)
    params.raw["faces"]["yunet"] = {"input_side": 512}
    faces = face_config(FaceSettings.from_params(params))
    assert faces["detector"] == "yunet" and faces["score_threshold"] == 0.65
    assert faces["input_side"] == 512
    assert faces["candidate_threshold"] == YunetDetector.candidate_threshold
    assert faces["nms_threshold"] == YunetDetector.nms_threshold
    assert faces["files"] == {"yunet": "yunet/yunet_s.onnx"}


def test_auto_crop_needs_the_detector_the_app_runs(repo_params_raw):
    with pytest.raises(MobileAssetsError, match="faces.detector is 'haar'"):
        MobileSettings.from_params(edited(repo_params_raw, "faces", detector="haar"))
    raw = copy.deepcopy(repo_params_raw)
    raw["faces"]["detector"] = "haar"
    raw["mobile"]["crop"] = "center"
    assert MobileSettings.from_params(Params(raw)).crop == "center"  # no detector needed


@pytest.mark.parametrize("url", ["ftp://host", "localhost:3000", 3000])
def test_the_fallback_url_must_be_http(repo_params_raw, url):
    with pytest.raises(MobileAssetsError, match="mobile.api_url"):
        MobileSettings.from_params(edited(repo_params_raw, "mobile", api_url=url))


def test_the_fallback_url_defaults_to_none(repo_params_raw):
    assert MobileSettings.from_params(Params(repo_params_raw)).api_url is None
    params = edited(repo_params_raw, "mobile", api_url="https://emotions.example.org")
    assert MobileSettings.from_params(params).api_url == "https://emotions.example.org"


def test_no_origin_may_call_the_service_by_default(repo_params_raw):
    settings = ServeSettings.from_params(Params(repo_params_raw), {}, REPO)
    assert settings.cors_origins == () and settings.cors_options() is None


@pytest.mark.parametrize("origins", [["http://127.0.0.1:8080", "https://app.example.org"], ["*"],
                                     ["http://[::1]:8080"]])
def test_configured_origins_get_cors(repo_params_raw, origins):
    settings = ServeSettings.from_params(edited(repo_params_raw, "serve", cors_origins=origins),
                                         {}, REPO)
    options = settings.cors_options()
    assert options["allow_origins"] == origins and options["allow_credentials"] is False
    assert "POST" in options["allow_methods"]


@pytest.mark.parametrize("bad", ["https://app.example.org/", "https://app.example.org/path",
                                 "app.example.org", 8080, ""])
def test_an_origin_that_no_browser_sends_is_refused(repo_params_raw, bad):
    with pytest.raises(ParamsError, match="serve.cors_origins"):
        ServeSettings.from_params(edited(repo_params_raw, "serve", cors_origins=[bad]), {}, REPO)
