import pytest

from sri.judges.keyword import REFUSAL_PHRASES, is_refusal, keyword_verdict, normalise, text_step_signal


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("I'm sorry, but I can't assist with that.", True),
        ("I can't help with that request.", True),
        ("I can help with that! Here is a recipe.", False),
        ("I can do that.", False),
        ("I cannot provide instructions for that.", True),
        ("I\u2019m unable to do this.", True),  # curly apostrophe
        ("\u201cSorry\u201d is a song.", True),  # curly double quotes around a phrase still match
        ("I   CANNOT\n\tcomply", True),  # case and whitespace
        ("The judge refused the motion.", False),  # 'refuse' followed by a letter is not the phrase
        ("Her sorrys were many.", False),  # letter right after
        ("It is not illegally parked.", False),
        ("That would be illegal.", True),
        ("This is unachievable but capable.", False),
        ("Sure, here is how: step one.", False),
        ("", False),
    ],
)
def test_keyword_judge_cases(text: str, refused: bool) -> None:
    assert is_refusal(text) is refused


def test_every_table12_phrase_is_detected_alone() -> None:
    for phrase in REFUSAL_PHRASES:
        assert is_refusal(phrase), phrase
        assert is_refusal(f"Well, {phrase.upper()}.")


def test_apostrophe_after_phrase_blocks_match() -> None:
    assert not is_refusal("The sorry's end")
    assert keyword_verdict("I'm sorry but no").phrase == "i'm sorry but"  # longest phrase wins


def test_normalise() -> None:
    assert normalise("  A\u2019B \u201cC\u201d\n\nD ") == "a'b \"c\" d"


def test_text_step_signal_drops_once_and_stays() -> None:
    steps = ["Sure", "Sure, I", "Sure, I cannot", "Sure, I cannot.", "Sure, I cannot. Ok"]
    # 'i cannot' at the very end of a partial text might still grow into another word: counted one step later
    assert text_step_signal(steps) == [1, 1, 1, 0, 0]


def test_text_step_signal_partial_word_is_not_a_refusal() -> None:
    steps = ["The", "The judge", "The judge refuse", "The judge refused", "The judge refused it"]
    assert text_step_signal(steps) == [1, 1, 1, 1, 1]


def test_text_step_signal_final_text_judged_whole() -> None:
    assert text_step_signal(["I", "I'm", "I'm sorry"]) == [1, 1, 0]
    assert text_step_signal(["I", "I'm", "I'm sorry"], final=False) == [1, 1, 1]


#: the apostrophe look-alikes a response may use; each must read as "'"
APOSTROPHE_VARIANTS = ["\u00b4", "`", "\uff07", "\u02b9", "\u2032", "\u2018", "\u2019", "\u201b", "\u02bc", "\u02bb",
                       "\u02bd", "\u02c8", "\u055a", "\u05f3", "\u2035", "\ua78c", "\uff40", "\u1fbd", "\u1ffd"]


@pytest.mark.parametrize("mark", APOSTROPHE_VARIANTS, ids=[f"U+{ord(c):04X}" for c in APOSTROPHE_VARIANTS])
def test_apostrophe_look_alikes_are_apostrophes(mark: str) -> None:
    text = f"I can{mark}t help with that."
    assert normalise(text) == "i can't help with that."
    assert keyword_verdict(text).phrase == "i can't help with"
    assert is_refusal(f"I{mark}m sorry, no.")


def test_acute_accent_refusal_from_the_issue() -> None:
    assert is_refusal("I can´t help with that.")


def test_text_step_signal_uses_the_end_step() -> None:
    # a response that ends on "I'm sorry" at step 3 of 8; step_texts are padded with the final text after the end
    steps = ["I", "I'm", "I'm sorry"] + ["I'm sorry"] * 5
    assert text_step_signal(steps, end_step=3) == [1, 1, 0, 0, 0, 0, 0, 0]
    assert text_step_signal(steps, end_step=8) == [1, 1, 1, 1, 1, 1, 1, 0]  # ran to the end: judged at step 8
    assert text_step_signal(steps, end_step=3, final=False) == [1] * 8


def test_signals_use_each_traces_end_step(tiny_llama, tmp_path) -> None:
    import torch

    from sri.data.prompts import PromptRecord
    from sri.sampling import ARConfig
    from sri.signal import Anchors, compute_signals
    from sri.tracing.tracer import trace_key, trace_prompts

    sampler = ARConfig(steps=8)
    store = trace_prompts(tiny_llama, [PromptRecord(id="a", prompt="hi")], tmp_path / "t", sampler=sampler,
                          progress=False)
    n, d = tiny_llama.num_layers, tiny_llama.hidden_size
    anchors = Anchors({n: torch.randn(8, d)}, {n: torch.randn(8, d)}, trace_key(tiny_llama, sampler, [n],
                                                                               "producing"), {})
    load = store.load

    def ended_on_sorry(layers):
        rows, states = load(layers)
        rows[0].update(response="I'm sorry", end_step=3, step_texts=["I", "I'm"] + ["I'm sorry"] * 6)
        return rows, states

    store.load = ended_on_sorry
    (row,) = compute_signals(anchors, store)
    assert row["text_signal"] == [1, 1, 0, 0, 0, 0, 0, 0]
