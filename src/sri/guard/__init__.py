"""SRI Guard: benign-only one-class detectors on the SRI signal, offline and inside generation."""

from .detectors import DETECTORS, Detector, SignalAutoencoder, make_detector
from .guard import DEFAULT_REFUSAL, Guard, StepAnchors, fit_guard, signal_matrix
from .streaming import GuardedGeneration, GuardLogitsProcessor, GuardObserver, GuardStoppingCriteria, Verdict, replay

__all__ = ["DEFAULT_REFUSAL", "DETECTORS", "Detector", "Guard", "GuardLogitsProcessor", "GuardObserver",
           "GuardStoppingCriteria", "GuardedGeneration", "SignalAutoencoder", "StepAnchors", "Verdict",
           "fit_guard", "make_detector", "replay", "signal_matrix"]
