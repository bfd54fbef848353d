"""The seed-agreement check: is PSPNet ahead of the FCN on every seed, by more than the spread?

The demo's claim is a paired comparison: for each seed, both models see the same data order,
augmentations and initialisation of the shared parts, so the per-seed difference
``PSPNet - FCN`` isolates the pyramid. The claim *holds* when

* PSPNet is ahead (difference > 0) on every seed, and
* the mean paired difference exceeds the seed spread, defined as the sample standard deviation
  (``n - 1`` in the denominator) of the paired differences.

With one seed the spread cannot be estimated, so the claim never holds on one seed. A NaN
difference (a class absent from both prediction and truth) counts as "not ahead".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SeedAgreement", "seed_agreement"]


@dataclass(frozen=True)
class SeedAgreement:
    """The outcome of :func:`seed_agreement`.

    Attributes:
        diffs: The paired differences (PSPNet - FCN), one per seed, in seed order.
        ahead: How many of them are > 0.
        mean: Their mean (NaN if any is NaN).
        spread: Their sample standard deviation (NaN with one seed or a NaN difference).
        holds: Ahead on every seed and ``mean > spread``.
    """

    diffs: tuple[float, ...]
    ahead: int
    mean: float
    spread: float
    holds: bool

    def line(self, what: str = "the context classes") -> str:
        """The one-line verdict the demo prints and reports."""
        n = len(self.diffs)
        if n == 1:
            tail = "seed spread n/a with one seed: does not hold (the check needs 2 seeds or more)"
        else:
            tail = (f"seed spread {self.spread:.3f} (sd of the paired differences): "
                    + ("holds" if self.holds else "does not hold"))
        return (f"PSPNet ahead on {what} on {self.ahead} of {n} seeds; "
                f"mean gap {self.mean:+.3f} vs {tail}")


def seed_agreement(diffs: Sequence[float]) -> SeedAgreement:
    """Apply the seed-agreement rule (module docstring) to paired differences.

    Args:
        diffs: ``PSPNet - FCN`` per seed (e.g. of the mean boat/car IoU), at least one.

    Returns:
        The counts, mean, spread and verdict.

    Raises:
        ValueError: ``diffs`` is empty or holds something that is not a number.
    """
    values = tuple(float(d) for d in diffs)
    if not values:
        raise ValueError("seed_agreement needs at least one paired difference, got none")
    ahead = sum(d > 0 for d in values)
    finite = all(math.isfinite(d) for d in values)
    mean = statistics.fmean(values) if finite else math.nan
    spread = statistics.stdev(values) if finite and len(values) > 1 else math.nan
    holds = len(values) > 1 and finite and ahead == len(values) and mean > spread
    return SeedAgreement(values, ahead, mean, spread, holds)
