"""The embedded demo: what the pyramid pooling module adds, on scenes where distant context decides.

The demo generates *context scenes* (:mod:`pspnet.data.context_scenes`): a boat and a car are the
very same sprites, standing on a neutral field; only a band of water or road at least ``gap``
pixels away decides which of the two they are. That is the paper's motivating example (Fig. 2: a
boat mistaken for a car) with the deciding context put out of easy reach.

:func:`run_demo` trains, for a fixed number of iterations and for each of several seeds, the
paper's dilated-FCN baseline (``use_ppm=False``) and PSPNet (bins 1, 2, 3, 6), both on a
ResNet-18 at output stride 8 with the same recipe; evaluates every run on held-out scenes; checks
whether PSPNet is ahead on the context classes on every seed by more than the seed spread
(:func:`seed_agreement`); and writes ``report.html`` / ``report.md``.
"""

from __future__ import annotations

from pspnet.demo.agreement import SeedAgreement, seed_agreement
from pspnet.demo.run import (DEMO_MODELS, FCN_REACH_PX, DemoResult, DemoSettings,
                             demo_model_options, run_demo, vessel_accuracy)

__all__ = ["DEMO_MODELS", "FCN_REACH_PX", "DemoResult", "DemoSettings", "SeedAgreement",
           "demo_model_options", "run_demo", "seed_agreement", "vessel_accuracy"]
