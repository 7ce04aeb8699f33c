"""Several networks answering as one: the mean of their calibrated probabilities.

Nothing ships as an ensemble (one INT8 network ships). The protocol scores one to learn what a
student distilled from it (:mod:`emorec.distill`, same mean of temperature-scaled
probabilities) could reach at best: if the ensemble reads unseen faces no better than its best
member, distilling it will not either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import softmax

from emorec.errors import DataError
from emorec.inference import OnnxClassifier


class Ensemble:
    """The members' mean probability as one classifier, with the interface the scoring path
    (:func:`emorec.cross_corpus.predict_set`) uses: ``classes``, ``preprocess``, ``logits``."""

    def __init__(self, members: Sequence[OnnxClassifier]):
        if len(members) < 2:
            raise DataError(f"an ensemble needs two members or more, got {len(members)}")
        first = members[0]
        for member in members[1:]:
            if list(member.classes) != list(first.classes):
                raise DataError(f"{member.path} predicts {member.classes}, {first.path} "
                                f"{first.classes}: members must share the classes")
            if member.preprocess != first.preprocess:
                raise DataError(f"{member.path} preprocesses as {member.preprocess}, "
                                f"{first.path} as {first.preprocess}: members must read the "
                                "same crop")
        self.members = list(members)
        self.classes = list(first.classes)
        self.preprocess = first.preprocess
        self.path = " + ".join(str(m.path) for m in members)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Log of the mean calibrated probability (each member at its own temperature)."""
        probs = np.mean([softmax(m.logits(batch).astype(np.float64) / m.temperature, axis=1)
                         for m in self.members], axis=0)
        return np.log(np.clip(probs, 1e-12, None)).astype(np.float32)
