"""Decisions free of a dataset's prior: post-hoc logit adjustment, baked into the model file.

A network trained with cross-entropy learns ``p(class | face)`` under its training set's class
mix. About a third of FER+ faces are voted neutral, so an argmax carries that prior to every user:
an unsure angry or fearful face comes back "neutral", even on a set with no neutral face at all.
Menon et al. (2021, "Long-tail learning via logit adjustment") show that subtracting
``tau * log(prior)`` from the logits turns the argmax into the balanced-error decision (``tau =
1`` for a calibrated model; the protocol picks ``tau``, :mod:`emorec.unseen`).

The offset goes into the ONNX graph itself (:func:`adjust_onnx`: one ``Add`` after the logits),
so the service, the web app, the cross-corpus stage and any user of the file get the same answer
without code of their own. The temperature and the "uncertain" threshold were fitted on the old
logits; :func:`recalibrate` fits both again on the adjusted ones.

Why one ``tau`` and not an offset per class: :func:`cross_fit` fits a free offset for every
class on all unseen sets but one and scores the one left out. If the free offsets read that set
worse than the single ``tau`` does, they learnt the sets they were fitted on, not a rule that
carries to new faces (``unseen.py decide --cross-fit`` records it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from emorec.calibration import fit_temperature, scaled_probabilities, threshold_for_coverage
from emorec.readers import Candidate

#: ONNX metadata: ``{"tau": .., "prior": {class: p}}`` of the adjustment in the graph.
META_ADJUSTMENT = "emorec.logit_adjustment"
BIAS_NAME = "emorec_logit_bias"


def class_prior(candidates: Iterable[Candidate], classes: Sequence[str]) -> np.ndarray:
    """The label distribution of ``candidates``: soft targets (FER+ votes) count as their
    distribution, hard labels as one vote each; candidates without a label (None, or empty:
    a FER+ row whose image FER2013 removed) are skipped."""
    index = {c: k for k, c in enumerate(classes)}
    total = np.zeros(len(classes))
    for cand in candidates:
        if not cand.label:
            continue
        if cand.soft is not None:
            total += np.asarray(cand.soft, dtype=np.float64)
        else:
            total[index[cand.label]] += 1.0
    if total.sum() <= 0:
        raise ValueError("no labelled candidate to estimate the class prior from")
    return total / total.sum()


def logit_offset(prior: Sequence[float], tau: float) -> np.ndarray:
    """``-tau * log(prior)``, centred on zero (a shift of every logit changes nothing).

    A class missing from the prior (probability 0) would get an infinite offset; it is floored
    at a thousandth of the smallest nonzero share instead.
    """
    p = np.asarray(prior, dtype=np.float64)
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"prior must be non-negative with a positive sum, got {list(p)}")
    p = p / p.sum()
    p = np.where(p > 0, p, p[p > 0].min() / 1000)
    offset = -tau * np.log(p)
    return (offset - offset.mean()).astype(np.float32)


T = TypeVar("T")


def fit_class_offsets(score: Callable[[np.ndarray], float], start: np.ndarray,
                      steps: Sequence[float], rounds: int = 2) -> np.ndarray:
    """Per-class logit offsets that maximise ``score``, by coordinate ascent from ``start``:
    each round moves every class's offset, in turn, to the best of ``start + step`` (ties: the
    smallest step), the others held."""
    offset = np.asarray(start, dtype=np.float64).copy()
    ordered = sorted(steps, key=abs)
    for _ in range(rounds):
        for k in range(len(offset)):
            def trial(step: float, k: int = k) -> float:
                candidate = offset.copy()
                candidate[k] = start[k] + step
                return score(candidate)
            best = max(ordered, key=trial)  # max keeps the first (smallest) of equal scores
            offset[k] = start[k] + best
    return offset


def cross_fit(sets: Mapping[str, T], score: Callable[[T, np.ndarray], float],
              start: np.ndarray, steps: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Leave one set out: free per-class offsets fitted (:func:`fit_class_offsets`) on the mean
    ``score`` of the other sets, then ``score`` on the set left out, beside ``start``'s."""
    out = {}
    for held in sets:
        others = [name for name in sets if name != held]
        offset = fit_class_offsets(
            lambda o, others=others: float(np.mean([score(sets[n], o) for n in others])),
            start, steps)
        out[held] = {"fitted_on": others, "steps": [float(v) for v in offset - start],
                     "score": float(score(sets[held], offset)),
                     "score_at_start": float(score(sets[held], start))}
    return out


def tau_left_out(scores: Mapping[str, Mapping[str, float]],
                 pooled: Sequence[Mapping[str, Mapping[str, float]]] = ()) -> dict[str, str]:
    """For each set, the tau the rule picks without it: the best mean score over the other sets
    (ties: the smaller tau). ``scores`` maps each tau tried (as written, ``"1.25"``) to its
    score per set; ``pooled`` are other models' scores of the same form that the rule averages
    in (a shipped file's tau is pooled with its recipe's runs), their copies of the set left
    out too. Each model's mean counts once, as in the pooled choice itself.

    A tau chosen on every set flatters each of them (on Yale's 59 faces by up to 17 points);
    the one chosen on the others is what a new set would get.
    """
    taus = sorted(scores, key=float)
    sets = list(scores[taus[0]])
    if len(sets) < 2:
        raise ValueError(f"choosing tau without a set needs two sets or more, got {sets}")

    def without(held: str, tau: str) -> float:
        means = [float(np.mean(rest)) for run in (scores, *pooled) if tau in run
                 for rest in [[v for s, v in run[tau].items() if s != held]] if rest]
        return float(np.mean(means))

    return {held: max(taus, key=lambda t, held=held: (without(held, t), -float(t)))
            for held in sets}


def recalibrate(logits: np.ndarray, labels: np.ndarray, coverage: float) -> dict[str, float]:
    """Temperature (NLL on ``logits``, already adjusted) and the confidence threshold that
    answers ``coverage`` of these faces, as the evaluate stage fits them on val."""
    temperature = fit_temperature(logits, labels)
    probs = scaled_probabilities(logits, temperature)
    return {"temperature": float(temperature),
            "min_confidence": float(threshold_for_coverage(probs, coverage))}


def adjust_onnx(src: Path, dst: Path, offset: np.ndarray, record: dict[str, Any],
                metadata: dict[str, str] | None = None) -> None:
    """Write ``src`` to ``dst`` with ``logits + offset`` as its output (same name, same shape)
    and ``record`` under :data:`META_ADJUSTMENT`; ``metadata`` entries replace others."""
    import onnx
    from onnx import helper, numpy_helper

    from emorec.inference import add_metadata

    model = onnx.load(str(src))
    graph = model.graph
    if any(init.name == BIAS_NAME for init in graph.initializer):
        raise ValueError(f"{src} is already logit-adjusted; adjust the unadjusted file")
    output = graph.output[0].name
    raw = f"{output}_unadjusted"
    for node in graph.node:
        node.output[:] = [raw if name == output else name for name in node.output]
        node.input[:] = [raw if name == output else name for name in node.input]
    bias = np.asarray(offset, dtype=np.float32).reshape(1, -1)
    graph.initializer.append(numpy_helper.from_array(bias, BIAS_NAME))
    graph.node.append(helper.make_node("Add", [raw, BIAS_NAME], [output],
                                       name="logit_adjustment"))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(metadata or {})
    meta[META_ADJUSTMENT] = json.dumps(record, sort_keys=True)
    add_metadata(model, meta)
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
