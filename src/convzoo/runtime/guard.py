"""The accuracy guard: a lower-precision predictor checked against the fp32 one on labelled images.

The goal (issue 16): on the held-out images, the candidate's top-1 is at most 0.5 points below fp32's,
and the candidate's top-1 class agrees with fp32's on at least 98% of the images. A candidate better than
fp32 passes the first test; a large difference either way shows in the agreement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import AccuracyGuardError, DataError
from .inference import Predictor

GUARD_MAX_DROP = 0.5
GUARD_MIN_AGREEMENT = 98.0


@dataclass(frozen=True)
class GuardResult:
    """fp32's and the candidate's top-1 accuracy and their top-1 agreement, in percent of ``n`` images,
    and the limits they were judged by (points of top-1 the candidate may lose; agreement needed)."""

    top1_fp32: float
    top1_candidate: float
    agreement: float
    n: int
    max_drop: float = GUARD_MAX_DROP
    min_agreement: float = GUARD_MIN_AGREEMENT

    @property
    def drop(self) -> float:
        """Points of top-1 the candidate loses against fp32 (negative when it gains)."""
        return self.top1_fp32 - self.top1_candidate

    @property
    def passed(self) -> bool:
        """Whether both figures are within the guard."""
        return self.drop <= self.max_drop and self.agreement >= self.min_agreement

    def shortfalls(self) -> list[str]:
        """How far each figure falls outside the guard, one phrase each (empty when it passes)."""
        out = []
        if self.drop > self.max_drop:
            out.append(f"top-1 {self.top1_candidate:.2f}% is {self.drop:.2f} points below fp32's "
                       f"{self.top1_fp32:.2f}% (at most {self.max_drop:g} allowed, {self.drop - self.max_drop:.2f} over)")
        if self.agreement < self.min_agreement:
            out.append(f"top-1 agreement with fp32 {self.agreement:.2f}% (at least {self.min_agreement:g}% needed, "
                       f"{self.min_agreement - self.agreement:.2f} points short)")
        return out

    def check(self, what: str = "the candidate") -> "GuardResult":
        """This result, or :class:`AccuracyGuardError` (one line naming ``what``, e.g. 'openvino int8', and
        by how much each figure is outside) when it fails the guard."""
        if not self.passed:
            raise AccuracyGuardError(f"{what} fails the accuracy guard on {self.n} images: "
                                     + "; ".join(self.shortfalls()))
        return self


class GuardCount:
    """The running counts of the guard: :meth:`add` the reference's (fp32) and the candidate's logits of each
    batch, then :meth:`result`. For a pass that also needs the candidate's logits for itself (``convzoo
    eval``'s tally); :func:`compare_predictors` is the whole pass."""

    def __init__(self) -> None:
        self.right_ref = self.right_cand = self.same = self.n = 0

    def add(self, reference: torch.Tensor, candidate: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: logits (N, classes) of both predictors and the labels (N,).

        Raises :class:`DataError` when the logits differ in shape or do not match the labels."""
        if reference.shape != candidate.shape or reference.shape[0] != labels.shape[0]:
            raise DataError(f"expected logits ({labels.shape[0]}, classes) from both predictors, found "
                            f"{tuple(reference.shape)} and {tuple(candidate.shape)}")
        p_ref, p_cand, y = reference.argmax(1).cpu(), candidate.argmax(1).cpu(), labels.cpu()
        self.right_ref += int((p_ref == y).sum())
        self.right_cand += int((p_cand == y).sum())
        self.same += int((p_ref == p_cand).sum())
        self.n += y.shape[0]

    def result(self, max_drop: float = GUARD_MAX_DROP, min_agreement: float = GUARD_MIN_AGREEMENT) -> GuardResult:
        """The counts so far as a :class:`GuardResult`; :class:`DataError` when no image was counted."""
        if self.n == 0:
            raise DataError("expected labelled images to compare the predictors on, found none")
        return GuardResult(100.0 * self.right_ref / self.n, 100.0 * self.right_cand / self.n,
                           100.0 * self.same / self.n, self.n, max_drop, min_agreement)


@torch.inference_mode()
def compare_predictors(reference: Predictor, candidate: Predictor,
                       batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                       max_drop: float = GUARD_MAX_DROP, min_agreement: float = GUARD_MIN_AGREEMENT) -> GuardResult:
    """Run ``reference`` (fp32) and ``candidate`` (a lower precision) on the same ``batches`` of (inputs
    (N, C, H, W), labels (N,)) and return their top-1 accuracies and top-1 agreement (percent) as a
    :class:`GuardResult`; call its ``check()`` to raise when it falls outside the guard.

    Raises :class:`DataError` when ``batches`` is empty or a predictor returns logits of another shape.
    """
    count = GuardCount()
    for x, y in batches:
        count.add(reference(x), candidate(x), y)
    return count.result(max_drop, min_agreement)
