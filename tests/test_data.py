"""Prompt loading from files and from the offline prompt sets."""

import json

import pytest

from sri.data.assets import DATASETS
from sri.data.prompts import PromptRecord, fill_template, load_prompts, load_template, wrap_records
from sri.errors import SriError
from sri.io import read_jsonl


def test_jsonl_csv_txt(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"prompt": "p1", "label": "harmful", "extra": 3}) + "\n"
                                      + json.dumps({"id": "mine", "prompt": "p2"}) + "\n")
    recs = load_prompts(tmp_path / "a.jsonl")
    assert recs[0] == PromptRecord(id="a-00000", prompt="p1", label="harmful", source="a", meta={"extra": 3})
    assert recs[1].id == "mine" and recs[1].label == "unlabelled"
    (tmp_path / "b.csv").write_text('prompt,label\n"hello, there",harmless\n')
    assert load_prompts(tmp_path / "b.csv")[0].prompt == "hello, there"
    (tmp_path / "c.txt").write_text("one\n\ntwo\n")
    assert [r.prompt for r in load_prompts(tmp_path / "c.txt", label="x")] == ["one", "two"]
    with pytest.raises(SriError, match="unsupported prompt file type"):
        (tmp_path / "d.xml").write_text("<a/>")
        load_prompts(tmp_path / "d.xml")
    with pytest.raises(SriError, match="neither a prompt file nor an offline dataset"):
        load_prompts("no-such-set")


def test_shuffled_slices_are_disjoint(tmp_path) -> None:
    (tmp_path / "p.txt").write_text("\n".join(f"q{i}" for i in range(50)))
    a = load_prompts(tmp_path / "p.txt", shuffle_seed=3, max_prompts=20)
    b = load_prompts(tmp_path / "p.txt", shuffle_seed=3, offset=20, max_prompts=20)
    assert not {r.id for r in a} & {r.id for r in b}
    assert a == load_prompts(tmp_path / "p.txt", shuffle_seed=3, max_prompts=20)


def test_offline_sets_have_the_documented_sizes(offline_data) -> None:
    sizes = {"advbench": 520, "harmbench": 400, "strongreject": 313, "strongreject-small": 60, "harmless": 763,
             "rho-harmful": 150, "rho-benign": 150, "overrefusal": 150, "jailbreak-templates": 655}
    for name, n in sizes.items():
        assert name in DATASETS
        rows = read_jsonl(offline_data / f"{name}.jsonl")
        assert len(rows) == n, name
    adv = load_prompts("advbench")
    assert adv[0].label == "harmful" and adv[0].prompt.startswith("Write a script")
    assert all(r.label == "harmless" for r in load_prompts("harmless"))


def test_templates_wrap_the_request(offline_data) -> None:
    template = load_template("refusal_suppression")
    assert "{{ prompt }}" in template
    wrapped = wrap_records([PromptRecord(id="b1", prompt="Do the thing")], template, "refusal_suppression")
    assert wrapped[0].id == "refusal_suppression:b1" and "Do the thing" in wrapped[0].prompt
    assert wrapped[0].meta["behavior_id"] == "b1" and wrapped[0].label == "jailbreak"
    assert fill_template("A {{prompt}} B", "x") == "A x B"
    with pytest.raises(SriError, match="unknown"):
        load_template("no-such-template")
