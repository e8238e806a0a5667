"""One-class detectors fitted on benign signals only: score → higher means more anomalous.

Every detector keeps what it needs to score again as plain arrays (safetensors) plus JSON parameters — no
pickle. How each one is rebuilt from those arrays:

- ``ae`` — the paper's autoencoder (x → 32 → 8 → 32 → x, ReLU, ≈3k parameters for 32 inputs), L2 loss, seeded
  training; score = mean squared reconstruction error. Rebuilt from its weight tensors.
- ``mahalanobis`` — Ledoit-Wolf shrunk covariance (scikit-learn); score = (x − μ)ᵀ Σ⁻¹ (x − μ). Rebuilt exactly
  from the stored location, covariance and precision.
- ``knn`` — mean Euclidean distance to the k nearest benign signals (scikit-learn ``NearestNeighbors``).
  Rebuilt exactly from the stored reference set.
- ``ocsvm`` — RBF one-class SVM (scikit-learn); score = −f(x), f(x) = Σ_i α_i exp(−γ‖x − s_i‖²) + ρ. Stored as
  support vectors, dual coefficients, intercept and γ; f is recomputed with ``rbf_kernel`` (checked against
  ``decision_function`` at fit time).
- ``iforest`` — Isolation Forest (scikit-learn); score = −``score_samples``. Its trees are not stored: the
  forest is refitted deterministically from the stored training signals and seed, and the refit must reproduce
  the stored scores of the training signals (it does under the pinned scikit-learn), or loading fails.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.ensemble import IsolationForest
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import OneClassSVM
from torch import nn

from ..errors import SriError
from ..registry import Registry


class Detector(ABC):
    """Fit on benign rows ``x [N, F]``; :meth:`score` returns ``[N]``, higher = more anomalous."""

    kind: ClassVar[str]

    #: whether fitting draws random numbers (so ``seed`` changes the detector)
    seeded: bool = True

    def __init__(self, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.params = params
        self.dim: int | None = None

    def fit(self, x: np.ndarray) -> Detector:
        x = _as_matrix(x, "benign signals")
        if len(x) < 2:
            raise SriError(f"{self.kind} needs at least 2 benign signals to fit (got {len(x)}); give more prompts")
        self.dim = x.shape[1]
        self._fit(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        if self.dim is None:
            raise RuntimeError(f"{self.kind} detector is not fitted")
        x = _as_matrix(x, "signals")
        if x.shape[1] != self.dim:
            raise SriError(f"signals have {x.shape[1]} values but the {self.kind} detector was fitted on {self.dim}; "
                           "score signals with the same number of steps")
        return self._score(x)

    @abstractmethod
    def _fit(self, x: np.ndarray) -> None: ...

    @abstractmethod
    def _score(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """The arrays that rebuild the fitted detector (written to safetensors)."""

    @abstractmethod
    def _load(self, tensors: dict[str, np.ndarray]) -> None: ...

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "dim": self.dim, "params": self.params}

    @classmethod
    def rebuild(cls, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Detector:
        """A fitted detector from :meth:`config` and :meth:`state`."""
        det = DETECTORS[config["kind"]](seed=config["seed"], **config["params"])
        det.dim = int(config["dim"])
        det._load(tensors)
        return det


# ------------------------------------------------------------------------------------------ autoencoder
class SignalAutoencoder(nn.Module):
    """Two encoder and two decoder layers: x → hidden → bottleneck → hidden → x (ReLU between)."""

    def __init__(self, dim: int, hidden: int = 32, bottleneck: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, bottleneck), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(bottleneck, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class AutoencoderDetector(Detector):
    """The paper's SRI Guard: reconstruction error of a tiny autoencoder trained with L2 loss on benign signals.

    Inputs are standardised with the benign mean and standard deviation (floored at ``min_std``) so that one
    architecture fits signals and activations alike; score = mean_j (x̂_j − x_j)² in standardised units.
    """

    kind = "ae"

    def __init__(self, seed: int = 0, hidden: int = 32, bottleneck: int = 8, epochs: int = 200, lr: float = 3e-3,
                 batch_size: int = 64, min_std: float = 0.01) -> None:
        super().__init__(seed, hidden=hidden, bottleneck=bottleneck, epochs=epochs, lr=lr, batch_size=batch_size,
                         min_std=min_std)
        self.net: SignalAutoencoder | None = None
        self.mean = np.zeros(0)
        self.std = np.ones(0)

    def _fit(self, x: np.ndarray) -> None:
        p = self.params
        self.mean = x.mean(0)
        self.std = np.maximum(x.std(0), p["min_std"])
        data = torch.from_numpy((x - self.mean) / self.std).float()
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = SignalAutoencoder(x.shape[1], p["hidden"], p["bottleneck"])
        opt = torch.optim.Adam(net.parameters(), lr=p["lr"])
        n, bs = len(data), min(p["batch_size"], len(data))
        net.train()
        with single_thread():
            for _ in range(p["epochs"]):
                order = torch.randperm(n, generator=gen)
                for start in range(0, n, bs):
                    batch = data[order[start:start + bs]]
                    loss = torch.nn.functional.mse_loss(net(batch), batch)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        self.net = net.eval()

    def _score(self, x: np.ndarray) -> np.ndarray:
        assert self.net is not None
        z = torch.from_numpy((x - self.mean) / self.std).float()
        with torch.inference_mode(), single_thread():
            return ((self.net(z) - z) ** 2).mean(-1).double().numpy()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters()) if self.net is not None else 0

    def state(self) -> dict[str, np.ndarray]:
        assert self.net is not None
        weights = {f"net.{k}": v.detach().numpy() for k, v in self.net.state_dict().items()}
        return {"mean": self.mean, "std": self.std, **weights}

    def _load(self, tensors: dict[str, np.ndarray]) -> None:
        p = self.params
        self.mean, self.std = tensors["mean"].astype(np.float64), tensors["std"].astype(np.float64)
        net = SignalAutoencoder(int(self.dim), p["hidden"], p["bottleneck"])
        net.load_state_dict({k.removeprefix("net."): torch.from_numpy(np.ascontiguousarray(v))
                             for k, v in tensors.items() if k.startswith("net.")})
        self.net = net.eval()


# ------------------------------------------------------------------------------------------ scikit-learn
class MahalanobisDetector(Detector):
    """Squared Mahalanobis distance to the benign mean under the Ledoit-Wolf covariance."""

    kind = "mahalanobis"
    seeded = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.model = LedoitWolf()

    def _fit(self, x: np.ndarray) -> None:
        self.model = LedoitWolf().fit(x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        return self.model.mahalanobis(x)

    def state(self) -> dict[str, np.ndarray]:
        m = self.model
        return {"location": m.location_, "covariance": m.covariance_, "precision": m.precision_,
                "shrinkage": np.array([m.shrinkage_])}

    def _load(self, tensors: dict[str, np.ndarray]) -> None:
        m = LedoitWolf()
        m.location_, m.covariance_, m.precision_ = tensors["location"], tensors["covariance"], tensors["precision"]
        m.shrinkage_ = float(tensors["shrinkage"][0])
        self.model = m


class KNNDetector(Detector):
    """Mean Euclidean distance to the ``k`` nearest benign signals (k = 5, or every signal when fewer were given;
    the k used is the one recorded)."""

    kind = "knn"
    seeded = False

    def __init__(self, seed: int = 0, k: int = 5) -> None:
        super().__init__(seed, k=k)
        self.reference = np.zeros((0, 0))
        self.index: NearestNeighbors | None = None

    def _fit(self, x: np.ndarray) -> None:
        self.reference = x
        self.params["k"] = min(self.params["k"], len(x))  # fewer benign signals than k: all of them, recorded so
        self.index = NearestNeighbors(n_neighbors=self.params["k"]).fit(x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        assert self.index is not None
        distances, _ = self.index.kneighbors(x)
        return distances.mean(1)

    def state(self) -> dict[str, np.ndarray]:
        return {"reference": self.reference}

    def _load(self, tensors: dict[str, np.ndarray]) -> None:
        self._fit(tensors["reference"].astype(np.float64))


class OneClassSVMDetector(Detector):
    """RBF one-class SVM; score = −f(x) with f(x) = Σ_i α_i K(x, s_i) + ρ, K(x, s) = exp(−γ‖x − s‖²)."""

    kind = "ocsvm"
    seeded = False

    def __init__(self, seed: int = 0, nu: float = 0.05, gamma: str | float = "scale") -> None:
        super().__init__(seed, nu=nu, gamma=gamma)
        self.support = np.zeros((0, 0))
        self.dual = np.zeros(0)
        self.intercept = 0.0
        self.gamma = 1.0

    def _fit(self, x: np.ndarray) -> None:
        svm = OneClassSVM(kernel="rbf", nu=self.params["nu"], gamma=self.params["gamma"]).fit(x)
        self.support, self.dual = svm.support_vectors_, svm.dual_coef_[0]
        self.intercept, self.gamma = float(svm.intercept_[0]), float(svm._gamma)
        ref = svm.decision_function(x)
        if not np.allclose(self._decision(x), ref, rtol=1e-7, atol=1e-9):
            raise RuntimeError("one-class SVM decision function could not be reproduced from its support vectors")

    def _decision(self, x: np.ndarray) -> np.ndarray:
        return rbf_kernel(x, self.support, gamma=self.gamma) @ self.dual + self.intercept

    def _score(self, x: np.ndarray) -> np.ndarray:
        return -self._decision(x)

    def state(self) -> dict[str, np.ndarray]:
        return {"support": self.support, "dual": self.dual, "intercept": np.array([self.intercept]),
                "gamma": np.array([self.gamma])}

    def _load(self, tensors: dict[str, np.ndarray]) -> None:
        self.support, self.dual = tensors["support"], tensors["dual"]
        self.intercept, self.gamma = float(tensors["intercept"][0]), float(tensors["gamma"][0])


class IsolationForestDetector(Detector):
    """Isolation Forest; score = −score_samples(x) (the forest's anomaly score, higher = easier to isolate)."""

    kind = "iforest"

    def __init__(self, seed: int = 0, n_estimators: int = 200) -> None:
        super().__init__(seed, n_estimators=n_estimators)
        self.train = np.zeros((0, 0))
        self.train_scores = np.zeros(0)
        self.model: IsolationForest | None = None

    def _fit(self, x: np.ndarray) -> None:
        self.train = x
        self.model = IsolationForest(n_estimators=self.params["n_estimators"], random_state=self.seed).fit(x)
        self.train_scores = self._score(x)

    def _score(self, x: np.ndarray) -> np.ndarray:
        assert self.model is not None
        return -self.model.score_samples(x)

    def state(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "train_scores": self.train_scores}

    def _load(self, tensors: dict[str, np.ndarray]) -> None:
        stored = tensors["train_scores"]
        self._fit(tensors["train"].astype(np.float64))
        if not np.array_equal(self.train_scores, stored):
            raise SriError("the Isolation Forest refitted from the stored signals scores differently than when it "
                           "was saved (another scikit-learn version?); refit the guard with `sri guard fit`")


DETECTORS: Registry[type[Detector]] = Registry("detector")
for _d in (AutoencoderDetector, MahalanobisDetector, IsolationForestDetector, OneClassSVMDetector, KNNDetector):
    DETECTORS.add(_d.kind, _d)


def make_detector(kind: str, seed: int = 0, **params: Any) -> Detector:
    """A fresh detector of ``kind`` (one of :data:`DETECTORS`; unknown → a did-you-mean :class:`SriError`)."""
    return DETECTORS[kind](seed=seed, **params)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run a tiny network on one CPU thread: thread hand-offs cost more than its arithmetic, and far more on a
    busy machine (measured ≈40× slower training with 2 threads on a loaded 2-core CPU)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise SriError(f"{what} must be a matrix [N, steps] (got shape {x.shape})")
    if not np.isfinite(x).all():
        raise SriError(f"{what} contain NaN or infinite values; recompute them with `sri signal`")
    return x
