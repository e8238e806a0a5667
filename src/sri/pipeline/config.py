"""The one configuration schema of ``sri run`` (and of its presets ``sri demo`` / ``sri eval``), in pydantic.

Every key is typed and range-checked, unknown keys are refused, and names (samplers, poolings, attacks,
defenses, detectors) are checked against their registries — all before any model loads. A bad file gives one
line naming the key path and what is allowed, e.g. ``config: guard.quantile: must be < 1 (got 7)``.

The sampler section is the same schema as the flags of ``sri trace`` (:func:`sampler_from_options` builds both);
AR order on diffusion weights is spelled ``kind: diffusion-ar`` here and ``--sampler diffusion-ar`` there.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..data.assets import DEFAULT_MODEL
from ..data.prompts import DEFAULT_SYSTEM_PROMPT
from ..errors import SriError, clip
from ..limits import DEFAULT_MAX_PROMPT_TOKENS, MAX_SEED, MAX_THREADS
from ..stats.bootstrap import MAX_RESAMPLES

PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(gt=0, lt=1)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class Section(BaseModel):
    """Strict, closed: no unknown keys, no '32' for 32, no silent coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def changed(self, *names: str) -> list[str]:
        """The fields among ``names`` whose value is not the default — by value, not by ``model_fields_set``: a
        run folder's saved config.yaml lists every field, defaults included. Used to refuse settings a mode ignores."""
        return [f for f in names if getattr(self, f) != type(self).model_fields[f].default]


# --------------------------------------------------------------------------------------------- sampler
class ARSampler(Section):
    """Autoregressive decoding (:class:`sri.sampling.ARConfig`): greedy at temperature 0."""

    kind: Literal["ar"] = "ar"
    steps: PositiveInt = 32
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    top_k: Annotated[int, Field(ge=0)] = 0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: Seed = 0

    @model_validator(mode="after")
    def _greedy_draws_nothing(self) -> ARSampler:
        unused = self.changed("top_k", "top_p", "seed")
        if self.temperature == 0 and unused:
            raise ValueError(f"{', '.join(unused)} would be ignored by greedy decoding (temperature 0); drop them or "
                             "set a temperature > 0")
        return self

    def build(self) -> Any:
        from ..sampling import ARConfig

        return ARConfig(steps=self.steps, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                        seed=self.seed)


class DiffusionSampler(Section):
    """Masked-diffusion sampling (:class:`sri.sampling.DiffusionConfig`). ``schedule`` null: the family's own
    (``dream-native`` for Dream, ``llada`` otherwise)."""

    kind: Literal["diffusion"] = "diffusion"
    steps: PositiveInt = 32
    gen_length: PositiveInt = 128
    block_length: PositiveInt | None = None
    remasking: Literal["low_confidence", "random", "margin", "entropy", "maskgit_plus", "topk_margin",
                       "origin"] = "low_confidence"
    schedule: Literal["llada", "dream-native"] | None = None
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    cfg_scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    top_k: Annotated[int, Field(ge=1)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    eps: Annotated[float, Field(gt=0, lt=1)] = 1e-3
    alg_temp: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    seed: Seed = 0

    def build(self) -> Any:
        from ..sampling import DiffusionConfig

        return DiffusionConfig(**self.model_dump(exclude={"kind"}))


class DiffusionARSampler(Section):
    """AR order on diffusion weights: one token per step at the leftmost masked slot (``steps`` tokens)."""

    kind: Literal["diffusion-ar"] = "diffusion-ar"
    steps: PositiveInt = 32
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    cfg_scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    seed: Seed = 0

    def build(self) -> Any:
        from ..sampling import DiffusionConfig

        return DiffusionConfig.ar_order(self.steps, temperature=self.temperature, cfg_scale=self.cfg_scale,
                                        seed=self.seed)


Sampler = Annotated[ARSampler | DiffusionSampler | DiffusionARSampler, Field(discriminator="kind")]


def sampler_from_options(options: dict[str, Any]) -> Any:
    """A sampler config (``ARConfig`` / ``DiffusionConfig``) from a mapping such as a YAML ``sampler`` section or
    the flags of ``sri trace`` (``None`` values are dropped). One-line :class:`SriError` on bad input."""
    data = {k: v for k, v in options.items() if v is not None}

    class _Holder(Section):
        sampler: Sampler

    try:
        return _Holder(sampler=data).sampler.build()
    except ValidationError as e:
        raise SriError(validation_message(e, "sampler")) from None


# --------------------------------------------------------------------------------------------- prompts
class PromptSet(Section):
    """``n`` prompts of ``dataset`` (an offline set name or a prompt file), seeded shuffle, rows whose metadata
    match every ``where`` entry. Sets of one dataset are disjoint slices of one shuffle."""

    dataset: str
    n: PositiveInt
    where: dict[str, str | int | float | bool] = {}


class LongBenign(Section):
    """Benign prompts as long as the attack prompts: each harmless request padded with benign context
    (other everyday instructions of the same dataset) to at least ``min_chars`` characters."""

    n: PositiveInt
    #: at most 8000: a padded prompt must stay under the default 4096-token prompt limit of every tracer
    min_chars: Annotated[int, Field(ge=1, le=8000)] = 1200


class Prompts(Section):
    """Every prompt set of a run. Anchors are fitted on ``anchor_*``; ``harmless`` and ``harmful`` are the
    evaluation sets (``harmful``: the behaviours the attacks wrap); ``guard_fit`` / ``guard_calibrate`` (benign)
    train SRI Guard; ``overrefusal`` and ``long_benign`` are extra benign controls."""

    anchor_harmless: PromptSet | None = None
    anchor_harmful: PromptSet | None = None
    anchors_file: str | None = None  # reuse fitted anchors (their key must match the traces)
    harmless: PromptSet
    harmful: PromptSet
    guard_fit: PromptSet | None = None
    guard_calibrate: PromptSet | None = None
    overrefusal: PromptSet | None = None
    long_benign: LongBenign | None = None

    @field_validator("anchors_file")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:  # one file, however it was named: a resume compares paths
        return None if v is None else str(Path(v).expanduser().absolute())

    @model_validator(mode="after")
    def _anchors_given(self) -> Prompts:
        if self.anchors_file is None and (self.anchor_harmless is None or self.anchor_harmful is None):
            raise ValueError("give anchor_harmless and anchor_harmful prompt sets, or anchors_file")
        both = [n for n in ("anchor_harmless", "anchor_harmful") if getattr(self, n) is not None]
        if self.anchors_file is not None and both:  # the file's anchors are used: the sets would be traced for nothing
            raise ValueError(f"give either anchor prompt sets (anchors fitted by the run) or anchors_file (anchors "
                             f"reused), not both: {' and '.join(both)} would be traced and never used; drop "
                             f"{'them' if len(both) > 1 else 'it'} or anchors_file")
        if (self.guard_fit is None) != (self.guard_calibrate is None):
            raise ValueError("guard_fit and guard_calibrate go together")
        return self


# --------------------------------------------------------------------------------------------- attacks
class Attack(Section):
    """One registered attack (``sri ls``) on the first ``n`` harmful behaviours (default: all)."""

    name: str
    n: PositiveInt | None = None
    options: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _known(cls, name: str, info: ValidationInfo) -> str:
        if _check_names(info):
            from ..attacks import ATTACKS

            ATTACKS[name]  # did-you-mean error
        return name

    @model_validator(mode="after")
    def _options_known(self, info: ValidationInfo) -> Attack:
        if not _check_names(info):
            return self
        from ..attacks import get_attack
        from ..attacks.registry import check_options

        known = get_attack(self.name).options()
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise ValueError(f"attack '{self.name}' has no option {clip(unknown[0])}; its options: "
                             f"{', '.join(known) or 'none'}")
        try:  # types (the default's: int, float, bool, text) and the attack's own ranges
            check_options(self.name, self.options)
        except SriError as e:
            raise ValueError(f"options: {e}") from None
        return self


class Controls(Section):
    """Benign controls that share the attacks' surface (the fair guard benchmark): ``benign_in_template`` wraps
    the harmless test requests in every template attack of the run."""

    benign_in_template: bool = False


# --------------------------------------------------------------------------------------------- judge, guard
class Judge(Section):
    """The LLM judge of attack success: ``auto`` (the 1.5B coder if fetched, else the default model), a model,
    or ``none``. ``hrr_stride``: judge every k-th diffusion step for HRR/FRR."""

    model: str = "auto"
    batch_size: PositiveInt = 8
    max_chars: PositiveInt = 1500
    threshold: Annotated[float, Field(ge=0, lt=1)] = 0.5
    hrr_stride: PositiveInt = 4

    @model_validator(mode="after")
    def _llm_settings_need_an_llm(self) -> Judge:
        unused = sorted(self.changed(*(f for f in type(self).model_fields if f != "model")))
        if self.model.lower() == "none" and unused:
            raise ValueError(f"{', '.join(unused)} set up the LLM judge, and model: none runs none (keyword judge "
                             "only); drop them (from the command line: --set 'judge={model: none}') or name a judge "
                             "model")
        return self


class GuardSection(Section):
    """SRI Guard, fitted on ``prompts.guard_fit`` and calibrated on ``prompts.guard_calibrate`` (benign only)."""

    detector: str = "ae"
    quantile: Probability = 0.99
    stream: Literal["union", "per-prefix", "off"] = "union"
    every: PositiveInt = 1

    @model_validator(mode="after")
    def _streaming_only(self) -> GuardSection:
        if self.stream == "off" and self.every != 1:
            raise ValueError(f"every: {self.every} applies to the streaming guard only; with stream: off drop it, "
                             "or choose stream: union")
        return self

    @field_validator("detector")
    @classmethod
    def _known(cls, name: str, info: ValidationInfo) -> str:
        if _check_names(info):
            from ..guard.detectors import DETECTORS

            DETECTORS[name]
        return name


class Defenses(Section):
    """Baseline defenses (registry names, ``sri ls``) run on every test set beside SRI Guard."""

    names: list[str] = []
    llm_guard_model: str | None = None  # None: the generator itself
    smoothllm_copies: PositiveInt = 4
    smoothllm_max_prompts: PositiveInt = 16  # per prompt set (a seeded subsample)

    @field_validator("names")
    @classmethod
    def _known(cls, names: list[str], info: ValidationInfo) -> list[str]:
        if _check_names(info):
            from ..defenses import DEFENSES

            for name in names:
                DEFENSES[name]
        if len(set(names)) != len(names):
            raise ValueError("a defense is listed twice")
        return names

    @model_validator(mode="after")
    def _options_of_listed_defenses(self) -> Defenses:
        owners = {"llm_guard_model": "llm-guard", "smoothllm_copies": "smoothllm", "smoothllm_max_prompts": "smoothllm"}
        unused = sorted(self.changed(*(f for f, owner in owners.items() if owner not in self.names)))
        if unused:
            defenses = " and ".join(sorted({owners[f] for f in unused}))
            raise ValueError(f"{', '.join(unused)} set up {defenses}, which is not in names; add it to names or drop "
                             "them")
        return self


class Analysis(Section):
    lambda_c: Probability = 0.5
    lambda_r: list[Probability] = [0.5, 0.3, 0.1]
    lambda_dip: Probability = 0.5
    bootstrap: Annotated[int, Field(ge=0, le=MAX_RESAMPLES)] = 1000
    panels: PositiveInt = 4

    @field_validator("lambda_r")
    @classmethod
    def _non_empty(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one λ_r")
        return v

    @model_validator(mode="after")
    def _thresholds(self) -> Analysis:
        from ..stats.recovery import check_settings

        try:
            check_settings(self.lambda_c, self.lambda_r, self.lambda_dip, self.bootstrap)
        except SriError as e:
            raise ValueError(str(e)) from None
        return self


class ExecutionSection(Section):
    """Where and how traces are computed (:class:`sri.tracing.executors.Execution`); not part of the run's
    identity, so a run started locally may be resumed on Ray and vice versa."""

    backend: Literal["local", "ray"] = "local"
    workers: Annotated[str, Field(pattern=r"^\d+(-\d+)?$")] | PositiveInt = 1  # N or MIN-MAX (ray)
    gpus_per_worker: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    address: str = "local"  # local (a private cluster) | auto | HOST:PORT
    max_failed_batches: Annotated[int, Field(ge=0)] = 0
    max_retries: Annotated[int, Field(ge=0)] = 2
    #: CPUs of a private local cluster (default: all)
    num_cpus: Annotated[int, Field(ge=1, le=MAX_THREADS)] | None = None
    #: torch CPU threads of this process (1 is fastest on a busy 2-core machine)
    threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] | None = None

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: str | int, info: ValidationInfo) -> str | int:
        if _check_names(info):
            from ..tracing.executors import parse_workers

            try:
                parse_workers(v)
            except SriError as e:
                raise ValueError(str(e).removeprefix("--workers ")) from None
        return v

    @model_validator(mode="after")
    def _ray_settings_need_ray(self) -> ExecutionSection:
        ray_only = [name for name, given in (("workers", str(self.workers).strip() != "1"),
                                             ("gpus_per_worker", self.gpus_per_worker != 0),
                                             ("address", self.address != "local"),
                                             ("num_cpus", self.num_cpus is not None)) if given]
        if self.backend == "local" and ray_only:
            raise ValueError(f"{', '.join(ray_only)} appl{'ies' if len(ray_only) == 1 else 'y'} to backend: ray "
                             "only; set backend: ray or drop them")
        return self

    def build(self, log: Any = None) -> Any:
        from ..tracing.executors import Execution

        return Execution.from_config(self.model_dump(exclude={"threads"}), log=log)


# --------------------------------------------------------------------------------------------- the run
class RunConfig(Section):
    """One run of the pipeline (:func:`sri.pipeline.run`). See ``configs/`` for examples."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)]
    model: str = DEFAULT_MODEL
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")] = "auto"
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    trust_remote_code: bool = False
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    stop_tokens: list[str] = []
    seed: Seed = 0
    sampler: Sampler = ARSampler()
    samplers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")], Sampler] = {}
    layers: str = "final"
    pooling: str | None = None
    batch_size: PositiveInt = 8
    #: the longest rendered prompt traced (tokens), as `sri trace --max-prompt-tokens`; a check, not a setting
    max_prompt_tokens: PositiveInt = DEFAULT_MAX_PROMPT_TOKENS
    prompts: Prompts
    attacks: list[Attack] = []
    controls: Controls = Controls()
    attacker: str | None = None  # chat model that writes PAIR prompts (default: the target)
    attack_model: str | None = None  # causal model optimising attacks run against (default: the target)
    judge: Judge = Judge()
    guard: GuardSection | None = None
    defenses: Defenses = Defenses()
    analysis: Analysis = Analysis()
    execution: ExecutionSection = ExecutionSection()

    @field_validator("pooling")
    @classmethod
    def _pooling_known(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is not None and _check_names(info):
            from ..pooling import POOLINGS

            POOLINGS[name]
        return name

    @model_validator(mode="after")
    def _coherent(self, info: ValidationInfo) -> RunConfig:
        names = [a.name for a in self.attacks]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"attack '{dup}' is listed twice; list each attack once")
        for i, a in enumerate(self.attacks):
            if a.n is not None and a.n > self.prompts.harmful.n:
                raise ValueError(f"attacks[{i}] ({a.name}): n must be ≤ prompts.harmful.n = {self.prompts.harmful.n}")
        if self.attack_model and _check_names(info):
            from ..attacks import get_attack

            if not any(get_attack(n).needs_target for n in names):
                raise ValueError("attack_model is the model that optimising attacks (random_search, pair) run on, and "
                                 "none is listed; add one to attacks or drop attack_model")
        if self.attacker and "pair" not in names:
            raise ValueError("attacker is the attacker model of PAIR, and no pair attack is listed; add it to attacks "
                             "or drop attacker")
        if self.controls.benign_in_template and not self.attacks:
            raise ValueError("controls.benign_in_template wraps harmless requests in the run's template attacks, and "
                             "no attack is listed; add attacks or drop the control")
        if self.samplers and "sampler" in self.model_fields_set:
            raise ValueError("give either 'sampler' (one run) or 'samplers' (several, compared), not both")
        seen: dict[str, str] = {}
        for name, s in self.samplers.items():  # a comparison of a sampler with itself compares nothing
            same = seen.setdefault(s.model_dump_json(), name)
            if same != name:
                raise ValueError(f"samplers '{same}' and '{name}' are the same settings; compare different samplers")
        kinds = {_kind_of(s) for s in (self.samplers or {"": self.sampler}).values()}
        if len(kinds) > 1:
            raise ValueError("samplers mixes autoregressive and diffusion samplers; one model is either kind — "
                             "compare AR order on diffusion weights with kind: diffusion-ar")
        for s in (self.samplers or {"": self.sampler}).values():
            if s.steps < 2:
                raise ValueError(f"sampler steps must be ≥ 2 for a run (got {s.steps}): the analysis needs a "
                                 "trajectory")
        if self.guard is not None and self.prompts.guard_fit is None:
            raise ValueError("guard needs prompts.guard_fit and prompts.guard_calibrate (benign prompt sets)")
        if self.guard is not None and self.prompts.guard_fit.n < 2:  # one signal has no spread to learn
            raise ValueError(f"prompts.guard_fit.n must be ≥ 2: a guard is fitted on the spread of several benign "
                             f"signals (got {self.prompts.guard_fit.n}); use dozens for a useful threshold")
        if self.guard is None and self.prompts.guard_fit is not None:
            raise ValueError("prompts.guard_fit and guard_calibrate are the guard's fit and calibration sets, and "
                             "there is no guard section; add one (e.g. guard: {detector: ae}) or drop those sets")
        if self.defenses.names and self.guard is None:
            raise ValueError("defenses are compared beside SRI Guard: add a guard section")
        if _check_names(info):  # the samplers' own cross-field rules (imports the samplers)
            for where, s in ({f"samplers.{k}": v for k, v in self.samplers.items()} or {"sampler": self.sampler}
                             ).items():
                try:
                    s.build()
                except SriError as e:
                    raise ValueError(f"{where}: {e}") from None
            if self.pooling is not None:
                from ..pooling import get_pooling

                for s in (self.samplers or {"": self.sampler}).values():
                    get_pooling(self.pooling, _kind_of(s))
        return self

    @property
    def sampler_kind(self) -> str:
        return _kind_of(next(iter(self.samplers.values())) if self.samplers else self.sampler)


def _check_names(info: ValidationInfo) -> bool:
    """False in the first, structural pass (keys, types, ranges: no registry is imported, so it takes well under a
    second); True in the second pass, which checks names against the registries."""
    return not (info.context or {}).get("structure_only", False)


def _kind_of(sampler: BaseModel) -> str:
    return "ar" if getattr(sampler, "kind", "ar") == "ar" else "diffusion"


# --------------------------------------------------------------------------------------------- reading
class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for user-written settings that refuses what YAML accepts silently: a key given twice in
    one mapping (the last would win) and aliases (``*name``: a few lines of nested aliases — "billion laughs" —
    expand to gigabytes). Both are one-line :class:`SriError` with the line number."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise SriError(f"line {event.start_mark.line + 1}: YAML aliases (*{clip(event.anchor, 40)[1:-1]}) are not "
                           "supported in sri settings; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                if key in seen:
                    raise SriError(f"line {key_node.start_mark.line + 1}: key {clip(key)} is given twice in one "
                                   f"mapping (first on line {seen[key]}); keep one")
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse user-written YAML with :class:`StrictLoader` (raises ``yaml.YAMLError`` or :class:`SriError`, the
    latter also for nesting too deep for the recursive parser)."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass
    except RecursionError:
        raise SriError("the YAML nests too deeply (hundreds of levels); flatten it") from None


def validation_message(e: ValidationError, root: str = "config") -> str:
    """The first problem of a pydantic error as one line with its key path."""
    errors = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")  # an unknown key explains the rest
    err = errors[0]
    path = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    got = err.get("input")
    shown = "" if err["type"] in ("missing", "value_error") or isinstance(got, dict) else f" (got {clip(got)})"
    if isinstance(got, bool) and err["type"] in ("literal_error", "string_type", "enum"):
        shown += "; YAML reads unquoted off/on/yes/no as true/false: quote the word, e.g. \"off\""
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        shown = ""
        allowed = _allowed_keys(err["loc"])
        if allowed:
            msg += f"; allowed: {', '.join(allowed)}"
    extra = f" — and {len(e.errors()) - 1} more problem(s)" if len(e.errors()) > 1 else ""
    where = f"{root}: {path}: " if path else f"{root}: "
    return f"{where}{msg}{shown}{extra}"


_UNION_TAGS = ("ar", "diffusion", "diffusion-ar")


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part in _UNION_TAGS:
            model = {"ar": ARSampler, "diffusion": DiffusionSampler, "diffusion-ar": DiffusionARSampler}[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and
                      issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def parse_config(data: Any) -> RunConfig:
    """Validate a parsed YAML document (one-line :class:`SriError`)."""
    if data is None:
        raise SriError("config: the file is empty (or only comments); write the settings, see configs/ for examples")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a single value ({clip(data)})"
        raise SriError(f"config: the file must hold a mapping of settings (key: value lines), not {kind}")
    try:
        RunConfig.model_validate(data, context={"structure_only": True})  # fast: no registry imports
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise SriError(validation_message(e)) from None
    except SriError as e:  # a registry's did-you-mean raised inside a validator
        raise SriError(f"config: {e}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[RunConfig, str]:
    """Read and validate a YAML config file; ``overrides`` (dotted keys) replace values first. Returns the config
    and the exact text that is saved in the run folder."""
    from ..io import read_text

    path = Path(path)
    if path.is_dir():
        raise SriError(f"config {path} is a directory; give a YAML file (see configs/)")
    if not path.is_file():
        from ..io import missing_file

        raise SriError(missing_file(path, "config file", "see configs/ for examples"))
    text = read_text(path)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SriError(f"{path} is not valid YAML{where}; fix the syntax") from None
    except SriError as e:
        raise SriError(f"{path}: {e}") from None
    if overrides:
        data = apply_overrides(data, overrides)
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return parse_config(data), text


def apply_overrides(data: Any, overrides: dict[str, Any]) -> Any:
    """``data`` with each dotted key (``prompts.harmless.n``) set to its value."""
    if not isinstance(data, dict):
        return data
    out = yaml.safe_load(yaml.safe_dump(data))
    for dotted, value in overrides.items():
        node = out
        *parents, last = dotted.split(".")
        for depth, p in enumerate(parents):
            if node.get(p) is None:  # absent or null (e.g. `guard: null`): the override starts the section
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                where = ".".join(parents[:depth + 1])
                raise SriError(f"--set {dotted}: {where} is {clip(node)}, not a section with keys; set {where} "
                               "itself or a key of a section")
        node[last] = value
    return out


def config_text(cfg: RunConfig) -> str:
    """YAML of a config built in Python (what the run folder keeps)."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=False), sort_keys=False, allow_unicode=True)


#: what may change between runs of one folder: cheap stages are redone (judge, analysis); how traces are computed
#: (execution); a permission, not a setting (trust_remote_code: adding it after a refusal must not block the folder)
RERUNNABLE = frozenset({"judge", "analysis", "execution", "trust_remote_code", "max_prompt_tokens"})


def identity(cfg: RunConfig) -> dict[str, Any]:
    """What a run folder is bound to: the config without the :data:`RERUNNABLE` keys."""
    return cfg.model_dump(mode="json", exclude=set(RERUNNABLE))


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths at which two config dumps differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old != new and not (isinstance(old, float) and isinstance(new, float) and math.isclose(old, new)):
        return [prefix.rstrip(".")]
    return []
