"""The HTML report: every figure embedded, tables present, nothing fetched from outside the file."""

from html.parser import HTMLParser

import numpy as np
import pytest

from sri.errors import SriError
from sri.io import write_json, write_jsonl
from sri.report.html import build_report
from sri.stats.recovery import analyze_run


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def _run_dir(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for group, label, refused_share, base in (("harmless", "harmless", 0.0, 0.85), ("harmful", "harmful", 0.6, 0.3),
                                              ("flip", "jailbreak", 0.2, 0.6)):
        for i in range(12):
            refused = i < refused_share * 12
            sri = np.clip(base + 0.25 * np.sin(np.linspace(0, 3, 16) + i) + rng.normal(0, 0.05, 16), 0, 1)
            rows.append({"id": f"{group}-{i}", "group": group, "label": label, "refused": refused,
                         "sri": sri.tolist(), "text_signal": [1] * 10 + [0 if refused else 1] * 6,
                         "response": "See https://example.com/x for more" if i == 0 else f"response {i}",
                         "llm_harmful": None if label == "harmless" else bool(i % 3)})
    write_jsonl(tmp_path / "signals.jsonl", rows)
    (tmp_path / "config.yaml").write_text("name: test\nmodel: tiny\n", encoding="utf-8")
    write_json(tmp_path / "provenance.json", {"model": {"model": "tiny", "fingerprint": "f"}, "sampler": {"steps": 16}})
    return tmp_path


def test_report_embeds_every_figure_and_references_nothing_outside(tmp_path) -> None:
    run = _run_dir(tmp_path)
    with pytest.raises(SriError, match="sri analyze"):
        build_report(run)
    analyze_run(run, resamples=50)
    path = build_report(run)
    text = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert figures == ["irr.png", "lda.png", "prompts.png", "rates.png", "trajectories.png"]
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == len(figures)
    assert all(str(a["src"]).startswith("data:image/png;base64,") for a in images)
    for tag, attrs in parser.tags:
        assert tag not in {"script", "link", "iframe", "object", "embed"}
        for key, value in attrs.items():
            if key in {"src", "href", "action", "srcset", "poster", "data"}:
                assert str(value).startswith("data:"), (tag, key, value)
    assert all("url(" not in css and "@import" not in css for css in parser.styles)
    assert "<a " not in text  # nothing is linked, not even URLs inside model responses
    # the tables and the configuration are in the page
    for needle in ("Table 3 shape", "IRR λ_r=0.3", "flip", "name: test", "Provenance", "Skipped"):
        assert needle in text
