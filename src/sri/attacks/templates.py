"""Template attacks from the pinned pyrit jailbreak set (offline dataset ``jailbreak-templates``).

Each named template is one attack: the behaviour goes into the template's ``{{ prompt }}`` slot. ``in_the_wild``
samples one template per behaviour from pyrit's in-the-wild collection (jailbreaks collected from users;
our offline stand-in for WildJailbreak), seeded per behaviour so the choice does not depend on order.
"""

from __future__ import annotations

import random
from functools import cache

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from ..data.assets import dataset_path
from ..data.prompts import PromptRecord, load_template
from ..errors import SriError
from ..io import read_jsonl
from .registry import AttackContext, attack_record, behaviour_seed, register_attack

#: attack name → (pyrit template id, description)
NAMED_TEMPLATES: dict[str, tuple[str, str]] = {
    "refusal_suppression": ("refusal_suppression", "rules forbidding apologies, disclaimers and refusal words"),
    "prefix_injection": ("prefix_injection", "asks the answer to start with an affirmative prefix"),
    "style_injection": ("style_injection", "asks for a constrained output style (JSON, four-word strings)"),
    "aim": ("aim", "role-play as AIM, an amoral Machiavellian chatbot"),
    "dan_1": ("dan_1", "DAN ('Do Anything Now') persona, variant 1"),
    "dan_5": ("dan_5", "DAN persona, variant 5 (token-penalty game)"),
    "dan_7": ("dan_7", "DAN persona, variant 7"),
    "dan_8": ("dan_8", "DAN persona, variant 8"),
    "dan_9": ("dan_9", "DAN persona, variant 9"),
    "dan_11": ("dan_11", "DAN persona, variant 11 ('DAN Mode enabled')"),
    "better_dan": ("better_dan", "BetterDAN: two answers, a normal one and an unfiltered one"),
    "superior_dan": ("superior_dan", "Superior DAN (SDA) persona"),
}


def _template_attack(name: str, template_id: str):
    def attack(records: list[PromptRecord], *, context: AttackContext) -> list[PromptRecord]:
        template = load_template(template_id)
        return [attack_record(r, name, fill_template(template, r.prompt), template=template_id) for r in records]

    attack.__name__ = f"template_{name}"
    return attack


_JINJA = SandboxedEnvironment(keep_trailing_newline=False)


def fill_template(template: str, prompt: str) -> str:
    """Render a pyrit template (Jinja2, as pyrit does: ``{% raw %}`` blocks, ``{{ prompt }}``) in a sandbox; the
    prompt is passed as a value, never interpreted."""
    try:
        return _JINJA.from_string(template).render(prompt=prompt).strip()
    except TemplateError as e:
        raise SriError(f"jailbreak template does not render ({e}); choose another template") from None


for _name, (_template_id, _description) in NAMED_TEMPLATES.items():
    register_attack(_name, family="template", description=f"pyrit template '{_template_id}': {_description}")(
        _template_attack(_name, _template_id))


@cache
def _in_the_wild(max_chars: int | None) -> tuple[tuple[str, str], ...]:
    rows = read_jsonl(dataset_path("jailbreak-templates"))
    keep = tuple((r["id"], r["template"]) for r in rows
                 if r["collection"] == "in_the_wild" and r["has_slot"]
                 and (max_chars is None or len(r["template"]) <= max_chars))
    if not keep:
        raise SriError(f"no in-the-wild template is at most {max_chars} characters long; raise max_chars")
    return keep


def _check_in_the_wild(*, max_chars: int | None, **_: object) -> None:
    if max_chars is not None and max_chars <= 0:
        raise SriError(f"in_the_wild max_chars must be positive (got {max_chars})")


@register_attack("in_the_wild", family="template", check=_check_in_the_wild,
                 description="one in-the-wild jailbreak template per behaviour, sampled with the seed "
                             "(offline stand-in for WildJailbreak)")
def in_the_wild(records: list[PromptRecord], *, context: AttackContext,
                max_chars: int | None = None) -> list[PromptRecord]:
    """``max_chars`` keeps only templates up to that length (long templates are slow to trace on a CPU)."""
    _check_in_the_wild(max_chars=max_chars)
    pool = _in_the_wild(max_chars)
    out = []
    for r in records:
        template_id, template = random.Random(behaviour_seed(context.seed, r)).choice(pool)
        out.append(attack_record(r, "in_the_wild", fill_template(template, r.prompt), template=template_id))
    return out
