"""Shared fixtures. Tiers: unit tests build tiny random models from configs (no assets); tests marked
``integration`` use SmolLM2-135M-Instruct and ``refusal`` the default Qwen2.5-Coder-0.5B-Instruct, both fetched
by ``make test`` (``sri assets fetch``) — they fail with the fetch command in the message when missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from sri.data.assets import MODELS, data_dir


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny models gain nothing from a second one, and on a busy 2-core machine thread
    hand-offs dominate. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"), "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", layers=3, hidden=48, heads=4,
                                kv_heads=1, seed=1)


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir: Path):
    from sri.models import load_model

    return load_model(str(tiny_llama_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_qwen2_dir: Path):
    from sri.models import load_model

    return load_model(str(tiny_qwen2_dir), device="cpu", dtype="fp32")


def _require_model(name: str) -> None:
    if not MODELS[name].is_fetched():
        pytest.fail(f"model {name} is not fetched; run `sri assets fetch --model {name}` (make test does)")


@pytest.fixture(scope="session")
def smollm():
    from sri.models import load_model

    _require_model("smollm2-135m-instruct")
    return load_model("smollm2-135m-instruct", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def qwen05():
    from sri.models import load_model

    _require_model("qwen2.5-coder-0.5b-instruct")
    return load_model("qwen2.5-coder-0.5b-instruct", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def offline_data() -> Path:
    if not (data_dir() / "advbench.jsonl").is_file():
        pytest.fail("offline prompt sets are not fetched; run `sri assets fetch --data` (make test does)")
    return data_dir()
