"""The training loop: LLaDA's SFT objective on prompt/response pairs, seeded, resumable from checkpoints.

Everything random is a function of ``(seed, step)`` — which examples form batch k (a fresh permutation per
epoch) and which slots are masked at step k — so a run stopped at step k and resumed from its checkpoint takes
exactly the steps an uninterrupted run takes. The learning rate follows a fixed schedule over the planned
``steps`` (linear warm-up, then cosine decay to ``min_lr_ratio``), also a function of the step alone.

A checkpoint is a folder written atomically: ``model.safetensors`` (weights; tied tensors stored once),
``optimizer.safetensors`` (AdamW moments and step counts) and ``state.json`` (step, losses, hyper-parameters,
wall time) — no pickle anywhere.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SriError
from ..io import read_json, write_json
from ..models.masked import DiffusionAdapter
from ..progress import metric_bar
from .objective import EPS, Batch, diffusion_loss, sample_masks


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (``steps`` also sets the learning-rate schedule)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    gen_length: int = 48
    seed: int = 0
    checkpoint_every: int = 50
    eps: float = EPS

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0 or self.gen_length <= 0 or self.checkpoint_every <= 0:
            raise SriError("steps, batch size, gen length and checkpoint interval must be positive")
        if not self.lr > 0:
            raise SriError(f"learning rate must be positive (got {self.lr})")

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): warm-up to ``lr``, then cosine to ``lr · min_lr_ratio``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.steps - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class Example:
    """One training pair in token ids: the rendered prompt and the response slots (answer, end of turn, padding)."""

    prompt_ids: list[int]
    target: list[int]
    id: str = ""


def encode_pairs(adapter: DiffusionAdapter, pairs: list[dict[str, Any]], gen_length: int
                 ) -> tuple[list[Example], list[str]]:
    """Token ids of each ``{prompt, response}`` pair; a response that does not fit ``gen_length`` slots with its
    end-of-turn token is left out (its id is returned second)."""
    tok = adapter.tokenizer
    if tok.eos_token_id is None and not adapter.eos_token_ids:
        raise SriError(f"'{adapter.name}' has no end-of-sequence token to end its training responses with; set "
                       "eos_token in its tokenizer_config.json")
    end = tok.eos_token_id if tok.eos_token_id is not None else adapter.eos_token_ids[0]
    special = not adapter.uses_chat_template
    examples, too_long = [], []
    rendered = [adapter.render(p["prompt"]) for p in pairs]
    prompt_ids = tok(rendered, add_special_tokens=special)["input_ids"]
    response_ids = tok([p["response"] for p in pairs], add_special_tokens=False)["input_ids"]
    for pair, p_ids, r_ids in zip(pairs, prompt_ids, response_ids, strict=True):
        if len(r_ids) + 1 > gen_length:
            too_long.append(str(pair.get("id", "")))
            continue
        examples.append(Example(list(p_ids), list(r_ids) + [end] * (gen_length - len(r_ids)), str(pair.get("id", ""))))
    return examples, too_long


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Left-pad the prompts of ``examples`` into one :class:`Batch`."""
    width = max(len(e.prompt_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, width - len(e.prompt_ids):] = torch.tensor(e.prompt_ids)
        mask[i, width - len(e.prompt_ids):] = 1
    return Batch(ids, mask, torch.tensor([e.target for e in examples], dtype=torch.long))


class BatchOrder:
    """Which examples form batch k: positions k·B … k·B + B − 1 of an endless stream made of one seeded
    permutation of the data per epoch.

    With ``lengths`` (prompt lengths) the permutation is cut into groups of ``bucket`` batches, each group is
    sorted by length and its batches are shuffled again: batches then hold prompts of similar length, so less
    padding is computed (the order is still a function of seed and epoch).
    """

    def __init__(self, n: int, batch_size: int, seed: int, lengths: list[int] | None = None,
                 bucket: int = 16) -> None:
        if n == 0:
            raise SriError("no training examples; check the distillation set and --gen-length")
        self.n, self.batch_size, self.seed, self.lengths, self.bucket = n, batch_size, seed, lengths, bucket
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            if self.lengths is not None:
                size = self.batch_size * self.bucket
                grouped = []
                for start in range(0, self.n, size):
                    group = sorted(perm[start:start + size], key=lambda i: self.lengths[i])  # type: ignore[index]
                    batches = [group[k:k + self.batch_size] for k in range(0, len(group), self.batch_size)]
                    grouped += [i for b in torch.randperm(len(batches), generator=g).tolist() for i in batches[b]]
                perm = grouped
            self._perms = {epoch: perm}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return [self._perm(p // self.n)[p % self.n] for p in positions]


def mask_generator(seed: int, step: int) -> torch.Generator:
    """The generator that draws step ``step``'s masking ratios and masks."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + 1)


@dataclass
class TrainState:
    """Progress of a run: steps done, the loss of every step, wall time spent."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    sessions: int = 0
    last_session_steps: int = 0

    def recent_loss(self, k: int = 50) -> float | None:
        tail = self.losses[-k:]
        return sum(tail) / len(tail) if tail else None


# --------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                    config: TrainConfig) -> None:
    """Write the checkpoint folder atomically (a sibling ``.tmp`` folder renamed into place)."""
    from safetensors.torch import save_file, save_model

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    tensors, groups = optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    write_json(tmp / "state.json", {"state": asdict(state), "config": asdict(config), "param_groups": groups})
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """AdamW's state as flat tensors ``state.<param>.<name>`` plus its JSON-able parameter groups."""
    sd = optimizer.state_dict()
    tensors = {f"state.{i}.{k}": v.detach().clone().contiguous() for i, s in sd["state"].items()
               for k, v in s.items() if torch.is_tensor(v)}
    groups = json.loads(json.dumps(sd["param_groups"], default=lambda o: list(o) if isinstance(o, tuple) else None))
    return tensors, groups


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    config: TrainConfig) -> TrainState:
    """Restore weights, optimizer and progress from ``folder``; refuse a checkpoint of other hyper-parameters."""
    from safetensors.torch import load_file, load_model

    saved = read_json(folder / "state.json")
    if saved["config"] != json.loads(json.dumps(asdict(config))):
        diff = sorted(k for k, v in asdict(config).items() if saved["config"].get(k) != v)
        raise SriError(f"checkpoint {folder} was made with other training settings ({', '.join(diff)}); "
                       "use the same settings to resume, or delete the checkpoint to start over")
    load_model(model, str(folder / "model.safetensors"))
    flat = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    groups = saved["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return TrainState(**saved["state"])


# --------------------------------------------------------------------------------------------- the loop
def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                             weight_decay=config.weight_decay)


def train_step(adapter: DiffusionAdapter, optimizer: torch.optim.Optimizer, examples: list[Example],
               order: BatchOrder, config: TrainConfig, step: int) -> float:
    """One optimiser step (step ``step``, 0-based); returns the loss."""
    batch = collate([examples[i] for i in order.indices(step)], adapter.pad_token_id).to(adapter.device)
    t, masked = sample_masks(batch.target, mask_generator(config.seed, step), config.eps)
    for group in optimizer.param_groups:
        group["lr"] = config.lr_at(step)
    loss = diffusion_loss(adapter, batch, t, masked)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(adapter.model.parameters(), config.grad_clip)
    optimizer.step()
    return float(loss.detach())


def train(adapter: DiffusionAdapter, examples: list[Example], config: TrainConfig, checkpoint: Path, *,
          minutes: float | None = None, progress: bool = True, log: Callable[[str], None] = lambda s: None,
          stop_after: int | None = None) -> TrainState:
    """Train ``adapter.model`` in place until ``config.steps`` (or ``minutes`` of wall time in this call, or
    ``stop_after`` steps in this call), resuming from ``checkpoint`` if it exists; checkpoints every
    ``config.checkpoint_every`` steps, at the end and on Ctrl-C."""
    model = adapter.model
    optimizer = make_optimizer(model, config)
    state = TrainState()
    if (checkpoint / "state.json").is_file():
        state = load_checkpoint(checkpoint, model, optimizer, config)
        log(f"resumed from {checkpoint} at step {state.step}/{config.steps}")
    order = BatchOrder(len(examples), config.batch_size, config.seed, [len(e.prompt_ids) for e in examples])
    state.sessions += 1
    model.train()
    t0, last = time.perf_counter(), time.perf_counter()
    done_here = 0
    try:
        with metric_bar("training", config.steps, metric="loss", done=state.step, enabled=progress) as update:
            while state.step < config.steps:
                if minutes is not None and time.perf_counter() - t0 >= minutes * 60:
                    log(f"time budget of {minutes:g} min reached at step {state.step}/{config.steps}")
                    break
                if stop_after is not None and done_here >= stop_after:
                    break
                loss = train_step(adapter, optimizer, examples, order, config, state.step)
                if not math.isfinite(loss):
                    raise SriError(f"the loss became {loss} at step {state.step}; lower --lr and start over")
                state.losses.append(round(loss, 5))
                state.step += 1
                done_here += 1
                state.last_session_steps = done_here
                now = time.perf_counter()
                state.wall_s += now - last
                last = now
                update(state.step, state.recent_loss(20))
                if state.step % config.checkpoint_every == 0:
                    save_checkpoint(checkpoint, model, optimizer, state, config)
    except KeyboardInterrupt:
        save_checkpoint(checkpoint, model, optimizer, state, config)
        raise
    save_checkpoint(checkpoint, model, optimizer, state, config)
    model.eval()
    return state
