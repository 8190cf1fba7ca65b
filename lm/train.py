"""Training: the AWD-LSTM recipe (SGD switching to averaged SGD) and an AdamW recipe, with exact resume.

One run lives in one folder (owned by :class:`RunFolder`)::

    RUN_DIR/config.yaml      the resolved config
    RUN_DIR/metrics.jsonl    one JSON line per log step, per validation and per subset evaluation
    RUN_DIR/last.pt          resumable state (and last.pt.prev, the one before it)
    RUN_DIR/best.pt          weights with the best validation loss
    RUN_DIR/result.json      written once, at the end

The loop (:meth:`Trainer.train_to_end`) reads top to bottom: epochs of optimizer steps on BPTT windows,
a metrics line every ``log_every`` steps, an evaluation on a fixed validation subset every ``eval_every``
steps, a checkpoint every ``checkpoint_every`` steps, and a validation, best checkpoint and epoch-end
checkpoint after each epoch. Everything that must survive a kill is in one typed :class:`TrainState`.

AWD-LSTM recipe (Merity et al. 2017): SGD with gradient-norm clipping and weight decay; the learning
rate of a step is scaled by ``window length / bptt``; when validation loss is worse than the best of all
but the last ``nonmono`` evaluations, switch to averaged SGD (iterate averaging from that step on, with
the averaged weights used for evaluation and the best checkpoint). AdamW recipe: linear warm-up, then
cosine decay to zero over the run.

The average is kept explicitly (``avg += (w - avg) / n`` per parameter) rather than with
``torch.optim.swa_utils.AveragedModel``: that class's update (a tensor step count on the device) rounds
differently from this formula (after 200 updates of a 50 x 50 layer a third of the entries differ in the
last bits), so runs finished before would not be reproducible bit for bit; it would also hold a second
deep copy of the model where the average needs only the parameters.

Fine-tuning (``train.finetune_epochs``) is a second stage in the same folder: averaged SGD restarted from
``best.pt`` and stopped by the same non-monotone trigger. Dynamic evaluation (``train.dynamic_eval``,
:mod:`lm.dynamic_eval`) adds its perplexities to the result. Under ``torchrun`` the batch's columns are
split across processes (:mod:`lm.distributed`); ``train.precision`` runs the body under autocast.

Exact resume: the checkpoint holds the model, optimizer, average, every generator (torch, numpy,
python, CUDA, the BPTT-length sampler), the position within the epoch, the carried hidden state and the
length of ``metrics.jsonl`` (lines written after the checkpoint are dropped and written again), so a run
killed at any step (SIGKILL included, even during a checkpoint write) and resumed ends with the same
numbers as one never interrupted (on CPU). If ``last.pt`` is missing or damaged, ``last.pt.prev`` is used.
A run folder is locked while a process trains in it.

Numerical guards: a non-finite loss or gradient stops the run at the step where it occurs, with a sentence
naming the step, and nothing is written after it (the last good checkpoint stays intact). With
``train.on_nonfinite: rollback`` the run instead goes back to the last good checkpoint, multiplies the
learning rate by ``train.rollback_lr_factor`` and goes on, at most :data:`MAX_ROLLBACKS` times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from lm import io
from lm.build import build_model
from lm.checkpoint import (
    STORAGE_ERRNOS,
    checkpoint_exists,
    load_checkpoint,
    load_latest,
    load_state,
    remove_temporaries,
    run_lock,
    save_checkpoint,
    storage_problem,
)
from lm.config import ExperimentConfig, run_name, save_config, to_dict
from lm.data import load_configured_corpus
from lm.data.batching import batchify, sample_window_length, window
from lm.distributed import (
    World,
    barrier,
    batch_dims,
    broadcast_object,
    device_for,
    gather_objects,
    gather_state,
    mean_over_processes,
    process_group,
    split_state,
    world_from_environment,
)
from lm.errors import UserError
from lm.evaluate import evaluate
from lm.models import detach_state
from lm.provenance import provenance
from lm.seed import seed_everything

RESULT_SCHEMA_VERSION = 1
MAX_ROLLBACKS = 3  # train.on_nonfinite=rollback: give up after this many rollbacks in one run
RESUME_KEYS = ("model", "optimizer", "trainer", "average", "hidden", "rng", "vocab")
RUN_FILES = ("last.pt", "last.pt.prev", "best.pt", "result.json", "config.yaml")  # what the trainer writes


class NonFiniteError(UserError):
    """The loss or the gradient became NaN or infinite."""


class _NonFinite(Exception):
    """Internal: a non-finite value was found; the trainer stops or rolls back."""


# --- the state that survives a kill ----------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run is. Stored in checkpoints as the plain dict :meth:`as_dict` (the ``trainer`` entry)."""

    epoch: int = 1  # current epoch (1-based)
    position: int = 0  # column position within the epoch
    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens processed
    train_time: float = 0.0  # seconds spent in training steps
    wall_time: float = 0.0  # seconds of the run, all sessions, up to the last checkpoint
    val_history: list[float] = field(default_factory=list)  # validation loss after each epoch
    best_val: float | None = None  # best validation loss
    averaging: bool = False  # switched to averaged SGD
    n_averaged: int = 0  # steps in the average
    epoch_loss: float = 0.0  # sum of token-mean losses this epoch (for logs)
    epoch_windows: int = 0  # windows trained this epoch
    lr_scale: float = 1.0  # learning-rate factor, rollback_lr_factor ** rollbacks
    rollbacks: int = 0  # rollbacks after non-finite values (train.on_nonfinite=rollback)
    metrics_bytes: int | None = None  # length of metrics.jsonl at the checkpoint (None: unknown, keep all)
    stage: str = "train"  # train, then finetune (train.finetune_epochs: averaged SGD restarted from best.pt)
    stage_start_step: int = 0  # optimizer steps done when the current stage began
    stage_stopped: bool = False  # the fine-tuning stage's non-monotone trigger fired
    train_epochs: int = 0  # the epoch counter at the end of the training stage (set when fine-tuning starts)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: Path) -> TrainState:
        """The state saved in a checkpoint; fields it lacks (older checkpoints) keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names) if isinstance(values, dict) else ["(not a mapping)"]
        if unknown:
            raise UserError(f"checkpoint {source} holds a training state this version does not know ({unknown[0]}).")
        return cls(**values)


# --- small helpers ---------------------------------------------------------------------------------


def _to_device(value, device: torch.device):
    """Tensors inside lists, tuples and dicts moved to ``device`` (checkpoints load on the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value


def _all_finite(tensors) -> bool:
    tensors = [t for t in tensors if t.is_floating_point()]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _truncate(path: Path, size: int | None) -> None:
    """Cut ``path`` back to ``size`` bytes (lines written after the checkpoint being resumed)."""
    if size is None or not path.exists() or path.stat().st_size <= size:
        return
    with open(path, "r+b") as handle:
        handle.truncate(size)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"run.device is {name} but no CUDA device is available; use run.device=cpu.")
    return torch.device(name)


def run_dir_for(config: ExperimentConfig) -> Path:
    return Path(config.run.output_dir) / run_name(config)


def _warmup_cosine_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _make_optimizer(model: torch.nn.Module, t, stage: str = "train") -> torch.optim.Optimizer:
    """The optimizer of a stage: train.optimizer for training, SGD for fine-tuning (as finetune.py)."""
    if stage == "finetune":
        return torch.optim.SGD(model.parameters(), lr=t.finetune_lr or t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.adam_betas))


class _LossOf(torch.nn.Module):
    """``model.loss`` as a module's forward, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs, targets, hidden):
        return self.model.loss(inputs, targets, hidden)


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def _cpu_autocast(dtype: torch.dtype) -> Iterator[None]:
    """CPU autocast, with oneDNN off: its LSTM primitive fails under autocast on CPUs without native
    bf16 ("could not create a primitive descriptor"); the native kernel runs the LSTM in float32."""
    with warnings.catch_warnings():  # the flags switch warns about Intel-GPU TF32, irrelevant here
        warnings.simplefilter("ignore")
        flags = torch.backends.mkldnn.flags(enabled=False)
        flags.__enter__()
    try:
        with torch.autocast("cpu", dtype=dtype):
            yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flags.__exit__(None, None, None)


# --- generator states (stored as tensors and plain lists so checkpoints load with weights_only) ---


def _rng_state(bptt_generator: torch.Generator) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "bptt": bptt_generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, bptt_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    bptt_generator.set_state(state["bptt"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


# --- averaged SGD ----------------------------------------------------------------------------------


def _start_average(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The average of one iterate: a copy of the parameters, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@torch.no_grad()
def _update_average(average: dict[str, torch.Tensor], model: torch.nn.Module, n_averaged: int) -> None:
    """Fold the current parameters into the average of ``n_averaged - 1`` earlier iterates."""
    for name, p in model.named_parameters():
        average[name].add_(p.detach() - average[name], alpha=1.0 / n_averaged)


@contextlib.contextmanager
def averaged_weights(model: torch.nn.Module, average: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Inside the block the model holds the averaged weights (if averaging has started); after it, its own."""
    if average is None:
        yield
        return
    backup = _start_average(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(average[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(backup[name])


# --- the run folder --------------------------------------------------------------------------------


class RunFolder:
    """The files of one run: lock, config check, checkpoints (with the ``.prev`` fallback), metrics, result."""

    def __init__(self, path: Path, config: ExperimentConfig, say: Callable[[str], None], writer: bool = True):
        self.path = path
        self.config = config
        self.say = say
        self.writer = writer  # False in processes other than 0 of a multi-process run: they read, never write
        self.last = path / "last.pt"
        self.best = path / "best.pt"
        self.metrics = path / "metrics.jsonl"
        self.result = path / "result.json"
        self.keep_previous = True  # False once after falling back to last.pt.prev: never rotate a bad file over it

    # set-up and refusal

    def finished_result(self) -> dict | None:
        """Refuse a folder that holds another run; return the finished result if there is one."""
        self._check_config()
        if not self.result.exists():
            return None
        try:
            result = json.loads(self.result.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{self.result} is damaged; delete it to finish the run again from its checkpoint.") from None
        if not isinstance(result, dict) or not isinstance(result.get("test_ppl", 0), (int, float)):
            raise UserError(f"{self.result} is not a result file; delete it to finish the run again from its checkpoint.")
        if result.get("schema_version") != RESULT_SCHEMA_VERSION:
            raise UserError(
                f"{self.result} has result schema version {result.get('schema_version')}, this version writes "
                f"{RESULT_SCHEMA_VERSION}; use another run.output_dir."
            )
        return result

    def _check_config(self) -> None:
        saved = self.path / "config.yaml"
        if not saved.exists():
            return
        from lm.config import load_config

        try:
            previous = to_dict(load_config(saved))
        except UserError:
            raise UserError(f"run folder {self.path} has an unreadable config.yaml; choose another run.name.") from None
        current = to_dict(self.config)
        if previous != current:
            changed = [f"{section}.{key}" for section, values in current.items() for key, value in values.items()
                       if previous[section].get(key) != value]
            raise UserError(
                f"run folder {self.path} holds a run with a different config ({', '.join(changed)} differ); "
                "set run.name or run.output_dir to start a new run."
            )

    def check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as error:
            raise UserError(f"cannot write to run folder {self.path} ({error.strerror or error}).") from None

    def check_disk(self, model: torch.nn.Module) -> None:
        # last.pt + last.pt.prev + best.pt + a temporary copy, each about params + optimizer state.
        n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        needed = 4 * 3 * n_bytes + (1 << 20)
        free = shutil.disk_usage(self.path).free
        if free < needed:
            raise UserError(
                f"only {free / 2**20:.0f} MiB free under {self.path}, checkpoints need about {needed / 2**20:.0f} MiB."
            )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock (the writer does); storage errors inside become one sentence."""
        with run_lock(self.path) if self.writer else contextlib.nullcontext():
            try:
                yield
            except OSError as error:
                if error.errno not in STORAGE_ERRNOS:
                    raise
                raise UserError(
                    f"cannot write under {self.path} ({storage_problem(error)}); the checkpoints already there are "
                    "intact, so fix this and run the same command to resume."
                ) from None

    def remove_temporaries(self) -> None:
        if self.writer:
            remove_temporaries(self.path, RUN_FILES)  # left by writers that were killed

    def begin(self) -> None:
        """A fresh run: save its config, drop lines of a session killed before its first checkpoint."""
        if not self.writer:
            return
        save_config(self.config, self.path / "config.yaml")
        _truncate(self.metrics, 0)

    # checkpoints

    def has_checkpoint(self) -> bool:
        return checkpoint_exists(self.last)

    def load_last(self) -> tuple[dict, Path]:
        """``last.pt``, or ``last.pt.prev`` when it is missing or damaged; and the file it came from."""
        checkpoint, source, warning = load_latest(self.last, required=RESUME_KEYS)
        if warning:
            self.say(warning)
            self.keep_previous = False
        return checkpoint, source

    def save_last(self, checkpoint: dict) -> None:
        if self.writer:
            save_checkpoint(self.last, checkpoint, keep_previous=self.keep_previous)
        self.keep_previous = True

    def save_best(self, checkpoint: dict) -> None:
        if self.writer:
            save_checkpoint(self.best, checkpoint, keep_previous=False)

    def load_best(self) -> dict:
        return load_checkpoint(self.best, required=("model", "epoch"))

    # metrics and result

    def metrics_size(self) -> int:
        return self.metrics.stat().st_size if self.metrics.exists() else 0

    def truncate_metrics(self, size: int | None) -> None:
        if self.writer:
            _truncate(self.metrics, size)

    def log(self, record: dict) -> None:
        if self.writer:
            io.append_jsonl(self.metrics, record)

    def write_result(self, result: dict) -> None:
        if self.writer:
            io.atomic_write_json(self.result, result)


# --- the trainer -----------------------------------------------------------------------------------


class Trainer:
    """Trains one run folder; create it with a config, call :meth:`run`.

    While training it holds: ``model``, ``optimizer``, ``train_data`` ``(B / N, L)`` (this process's
    columns), ``valid_subset`` (the first ``eval_subset_tokens`` validation tokens), ``bptt_generator``
    (window lengths, the same in every process), ``state`` (:class:`TrainState`), ``average``
    (averaged-SGD weights by name, or None), ``hidden`` (the state carried across windows), ``scaler``
    (fp16 only), ``loss_module`` (the DistributedDataParallel wrapper with several processes, else None)
    and ``session_mark`` (when wall time was last added).
    """

    def __init__(self, config: ExperimentConfig, progress: bool = False, say: Callable[[str], None] | None = None):
        self.config = config
        self.t = config.train
        self.world: World = world_from_environment()
        if config.train.batch_size % self.world.size:
            raise UserError(f"train.batch_size={config.train.batch_size} must be divisible by the {self.world.size} processes of torchrun.")
        self.progress = progress and self.world.is_main
        self.say = (say or (lambda message: None)) if self.world.is_main else (lambda message: None)
        self.run_dir = run_dir_for(config)
        self.folder = RunFolder(self.run_dir, config, self.say, writer=self.world.is_main)
        self.device = device_for(self.world, resolve_device(config.run.device))
        self.bar = None

    def run(self) -> dict:
        with process_group(self.world, self.device), self.reducer_released_before_teardown():
            finished = self.folder.finished_result()
            if finished is None:
                corpus = load_configured_corpus(self.config.data)
                if self.world.is_main:
                    self.folder.check_writable()
                barrier(self.world)
                with self.folder.locked():
                    finished = self.folder.finished_result() if self.world.is_main else None  # finished meanwhile?
                    finished = broadcast_object(self.world, finished)
                    if finished is None:
                        self.folder.remove_temporaries()
                        return self.train(corpus)
        self.say(f"run {self.run_dir} already finished (test ppl {finished.get('test_ppl', float('nan')):.2f}); nothing to do.")
        return finished

    @contextlib.contextmanager
    def reducer_released_before_teardown(self) -> Iterator[None]:
        """Drop the DistributedDataParallel wrapper while the process group is still registered.

        Its C++ Reducer holds a reference to the gloo process group and is destroyed with the GIL held; if it
        is the group's last holder (after ``destroy_process_group``), the group's destructor joins gloo's
        worker threads while one of them waits for the GIL to free a finished broadcast's tensors: a
        deadlock that hung 2 of 23 2-process runs at their very end. Dropped here, the group's last
        reference goes with ``destroy_process_group``, which releases the GIL first."""
        try:
            yield
        finally:
            if getattr(self, "loss_module", None) is not None:
                self.loss_module = None
                gc.collect()  # now, even if a reference cycle holds the wrapper

    def train(self, corpus) -> dict:
        """Set up, resume or start, train each stage to its end (rolling back on non-finite values if
        asked), finish."""
        self.corpus = corpus
        self.build()
        resuming = self.folder.has_checkpoint()
        barrier(self.world)  # every process has decided before process 0 writes the first checkpoint
        if resuming:
            source = self.load_last()
            self.say(f"resuming {self.run_dir} at epoch {self.state.epoch}, step {self.state.step} (from {source.name})")
        else:
            self.folder.begin()
            self.state.metrics_bytes = 0
        self.session_mark = time.perf_counter()
        self.open_progress_bar()
        if self.t.on_nonfinite == "rollback" and not resuming:
            self.save_last()  # a good state to go back to even if the first steps fail
        while True:
            try:
                self.train_to_end()
                if self.state.stage == "train" and self.t.finetune_epochs:
                    self.start_finetuning()
                    continue
                break
            except _NonFinite as event:
                self.roll_back(str(event))
        if self.bar is not None:
            self.bar.close()
        return self.finish()

    def build(self) -> None:
        """Model, data, optimizer and generators, seeded (in this order) as every run always was."""
        t, corpus = self.t, self.corpus
        seed_everything(t.seed)
        self.model = build_model(self.config, len(corpus.vocab)).to(self.device)
        self.folder.check_disk(self.model)
        train_data = batchify(corpus.train, t.batch_size).to(self.device)  # (B, L)
        if t.bptt >= train_data.size(1):
            raise UserError(
                f"train.bptt={t.bptt} is longer than the training data per column ({train_data.size(1)} tokens "
                f"at batch size {t.batch_size}); lower train.bptt or train.batch_size."
            )
        for split, size in (("valid", t.eval_batch_size), ("test", t.test_batch_size)):
            batchify(corpus.split(split), size)  # fails early with one sentence when too short
        self.valid_subset = corpus.valid[: t.eval_subset_tokens]
        if t.eval_every:
            batchify(self.valid_subset, t.eval_batch_size)
        self.steps_per_epoch = max(1, math.ceil((train_data.size(1) - 1) / t.bptt))
        self.train_data = self.build_parallel(train_data)  # (B / N, L)
        self.optimizer = _make_optimizer(self.model, t)
        self.bptt_generator = torch.Generator().manual_seed(t.seed)
        self.state = TrainState()
        self.average: dict[str, torch.Tensor] | None = None
        self.hidden = self.model.init_state(self.train_data.size(0))
        self.scaler = torch.amp.GradScaler(self.device.type) if t.precision == "fp16" else None

    def build_parallel(self, train_data: torch.Tensor) -> torch.Tensor:
        """With several processes: this process's block of columns, its own dropout generator, the
        DistributedDataParallel wrapper. With one: the data as it is."""
        world, t = self.world, self.t
        self.loss_module = None
        if not world.enabled:
            return train_data
        self.state_dims = batch_dims(self.model.init_state)
        torch.manual_seed(t.seed + world.rank)  # dropout masks differ between the processes' columns
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.loss_module = torch.nn.parallel.DistributedDataParallel(_LossOf(self.model), device_ids=device_ids)
        return train_data.chunk(world.size, 0)[world.rank].contiguous()

    # --- the loop ---------------------------------------------------------------------------------

    def train_to_end(self) -> None:
        """Train the current stage from ``self.state`` to its end; raises :class:`_NonFinite`."""
        t, state = self.t, self.state
        done = state.step >= self.total_steps()
        while not done and state.epoch <= self.stage_epochs() and not state.stage_stopped:
            self.model.train()
            while state.position < self.train_data.size(1) - 1:
                loss = self.step()
                self.update_progress_bar(loss)
                if state.step % t.log_every == 0:
                    self.log_step(loss)
                if t.eval_every and state.step % t.eval_every == 0:
                    self.evaluate_subset()
                if state.step >= self.total_steps():
                    done = True
                    break
                if t.checkpoint_every and state.step % t.checkpoint_every == 0:
                    self.save_last()
            self.validate()
            if not done:
                self.start_next_epoch()
                self.save_last()
        self.save_last()

    def step(self) -> float:
        """One optimizer step on the next window; returns its mean training NLL per token (over all
        processes)."""
        t, state = self.t, self.state
        length = sample_window_length(t.bptt, t.variable_bptt, t.max_seq_len_delta, self.bptt_generator)
        inputs, targets = window(self.train_data, state.position, length)  # (B, T)
        length = inputs.size(1)
        self.set_learning_rate(length)
        started = time.perf_counter()
        self.hidden = detach_state(self.hidden)
        with self.autocast():
            nll, self.hidden, penalty = self.forward_loss(inputs, targets, self.hidden)  # (B, T), state, scalar
        raw_loss = nll.mean()
        loss = raw_loss + penalty
        logged, checked = raw_loss, loss
        if self.world.enabled:  # the loss of the whole batch, the same in every process
            logged, checked = mean_over_processes(self.world, torch.stack([raw_loss.detach(), loss.detach().float()]))
        if not torch.isfinite(checked):
            raise _NonFinite(f"the training loss became {checked.item()} at step {state.step + 1} (epoch {state.epoch})")
        self.backward_and_update(loss)
        if self.average is not None:
            state.n_averaged += 1
            _update_average(self.average, self.model, state.n_averaged)
        state.train_time += time.perf_counter() - started
        state.position += length
        state.step += 1
        state.tokens += targets.numel() * self.world.size
        state.epoch_loss += logged.item()
        state.epoch_windows += 1
        return logged.item()

    def forward_loss(self, inputs, targets, hidden):
        if self.loss_module is not None:
            return self.loss_module(inputs, targets, hidden)
        return self.model.loss(inputs, targets, hidden)

    def autocast(self):
        """``torch.autocast`` for train.precision bf16 / fp16 (the head leaves it, see LanguageModel.loss)."""
        if self.t.precision == "fp32":
            return contextlib.nullcontext()
        if self.device.type == "cpu":
            return _cpu_autocast(_AUTOCAST_DTYPES[self.t.precision])
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.t.precision])

    def backward_and_update(self, loss: torch.Tensor) -> None:
        """Gradients (averaged over processes by DDP), clipping, the optimizer step (through the gradient
        scaler for fp16, which skips steps whose gradients overflowed)."""
        t, state = self.t, self.state
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip if t.clip > 0 else float("inf"))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        if not torch.isfinite(norm):
            raise _NonFinite(f"the gradient became non-finite at step {state.step + 1} (epoch {state.epoch})")
        self.optimizer.step()

    def set_learning_rate(self, length: int) -> None:
        """SGD: scaled by window length / bptt (AWD-LSTM), times the cosine decay with ``lr_schedule: cosine``;
        AdamW: warm-up and cosine; after rollbacks, lower."""
        t, state = self.t, self.state
        if state.stage == "finetune":
            lr, scale = t.finetune_lr or t.lr, length / t.bptt
        else:
            lr = t.lr
            if t.optimizer == "adamw":
                scale = _warmup_cosine_factor(state.step, t.warmup_steps, self.total_steps())
            else:
                scale = length / t.bptt
                if t.lr_schedule == "cosine":
                    scale *= _warmup_cosine_factor(state.step, 0, self.total_steps())
        for group in self.optimizer.param_groups:
            group["lr"] = lr * scale * state.lr_scale

    def total_steps(self) -> int:
        """The step at which the current stage ends (at the latest)."""
        t, state = self.t, self.state
        if state.stage == "finetune":
            end = state.stage_start_step + t.finetune_epochs * self.steps_per_epoch
            return min(end, t.max_steps) if t.max_steps else end  # max_steps bounds the whole run
        return t.max_steps or t.epochs * self.steps_per_epoch

    def stage_epochs(self) -> int:
        return self.t.finetune_epochs if self.state.stage == "finetune" else self.t.epochs

    def start_next_epoch(self) -> None:
        state = self.state
        state.epoch += 1
        state.position = 0
        state.epoch_loss, state.epoch_windows = 0.0, 0
        self.hidden = self.model.init_state(self.train_data.size(0))

    def start_finetuning(self) -> None:
        """The second stage of the AWD-LSTM / MoS recipe: from the best weights, a fresh SGD whose iterates
        are averaged from the first step, validated with the average after each epoch (best.pt is replaced
        only by a better validation loss), stopped by the non-monotone trigger."""
        barrier(self.world)  # process 0 has finished writing best.pt
        state = self.state
        best = self.folder.load_best()
        load_state(self.model, best["model"], self.folder.best)
        self.optimizer = _make_optimizer(self.model, self.t, "finetune")
        state.stage, state.stage_start_step, state.train_epochs = "finetune", state.step, state.epoch
        state.epoch, state.position, state.epoch_loss, state.epoch_windows = 1, 0, 0.0, 0
        state.val_history, state.averaging, state.n_averaged, state.stage_stopped = [], True, 0, False
        self.average = _start_average(self.model)
        self.hidden = self.model.init_state(self.train_data.size(0))
        self.folder.log({"event": "finetune", "step": state.step, "from_epoch": best["epoch"], "best_val_loss": state.best_val})
        self.say(f"fine-tuning from the best weights (epoch {best['epoch']}, valid loss {state.best_val:.4f})")
        self.save_last()

    # --- evaluation during training -----------------------------------------------------------

    def shared_evaluation(self, tokens: torch.Tensor, batch_size: int) -> dict:
        """:func:`evaluate` in process 0, its result in every process (so that all decide alike)."""
        t = self.t
        val = evaluate(self.model, tokens, batch_size, t.eval_bptt or t.bptt) if self.world.is_main else None
        return broadcast_object(self.world, val)

    def validate(self) -> None:
        """End of an epoch: validation loss, best checkpoint, the non-monotone trigger, a metrics line."""
        t, state = self.t, self.state
        with averaged_weights(self.model, self.average):
            if not _all_finite(self.model.parameters()):
                raise _NonFinite(f"the weights became non-finite by step {state.step} (epoch {state.epoch})")
            val = self.shared_evaluation(self.corpus.valid, t.eval_batch_size)
            if state.best_val is None or val["loss"] < state.best_val:
                state.best_val = val["loss"]
                self.folder.save_best({
                    "model": self.model.state_dict(), "vocab": self.corpus.vocab.state_dict(),
                    "config": to_dict(self.config), "epoch": state.epoch, "step": state.step, "val_loss": val["loss"],
                    **({"stage": "finetune"} if state.stage == "finetune" else {})})
        if self.non_monotone(val["loss"]):
            self.on_non_monotone()
        state.val_history.append(val["loss"])
        record = {"event": "valid", "epoch": state.epoch, "step": state.step, **self.progress_fields(),
                  "val_loss": val["loss"], "val_ppl": val["ppl"], "averaging": state.averaging, **self.stage_field()}
        record.update({k: val[k] for k in ("zero_fraction", "zero_target_fraction") if k in val})
        self.folder.log(record)
        self.say(f"epoch {state.epoch:3d} | step {state.step} | valid ppl {val['ppl']:.2f}{' (fine-tuning)' if self.stage_field() else ''}")

    def non_monotone(self, val_loss: float) -> bool:
        """AWD-LSTM's trigger: worse than the best of all but the last ``nonmono`` validations."""
        history = self.state.val_history
        return len(history) > self.t.nonmono and val_loss > min(history[: -self.t.nonmono])

    def on_non_monotone(self) -> None:
        """Training stage: switch to averaged SGD (SGD only, once). Fine-tuning stage: stop it."""
        t, state = self.t, self.state
        if state.stage == "finetune":
            state.stage_stopped = True
            self.say(f"fine-tuning stops after epoch {state.epoch}: validation stopped improving")
        elif t.optimizer == "sgd" and t.averaged_sgd and not state.averaging:
            state.averaging = True
            self.average = _start_average(self.model)
            state.n_averaged = 1
            self.say(f"switching to averaged SGD at epoch {state.epoch}")

    def evaluate_subset(self) -> None:
        """Loss on the fixed validation subset; the training trajectory (weights, hidden state, every
        generator) is left exactly as it was."""
        t, state = self.t, self.state
        generators = _rng_state(self.bptt_generator)
        with averaged_weights(self.model, self.average):
            val = self.shared_evaluation(self.valid_subset, t.eval_batch_size)
        _set_rng_state(generators, self.bptt_generator)
        self.folder.log({"event": "valid_subset", "epoch": state.epoch, "step": state.step, **self.progress_fields(),
                         "val_loss": val["loss"], "val_ppl": val["ppl"], "subset_tokens": self.valid_subset.numel(),
                         **self.stage_field()})

    def progress_fields(self) -> dict:
        """Training tokens so far, seconds in training steps, wall-clock seconds of the run (all sessions)."""
        wall = self.state.wall_time + (time.perf_counter() - self.session_mark)
        return {"tokens": self.state.tokens, "train_time_s": self.state.train_time, "wall_time_s": wall}

    def stage_field(self) -> dict:
        """``{"stage": "finetune"}`` in lines of the fine-tuning stage (lines of training stay as they were)."""
        return {"stage": "finetune"} if self.state.stage == "finetune" else {}

    # --- checkpoints, resume, rollback ------------------------------------------------------------

    def save_last(self) -> None:
        state, world = self.state, self.world
        if not _all_finite([*self.model.parameters(), *(self.average or {}).values()]):
            raise _NonFinite(f"the weights became non-finite by step {state.step} (epoch {state.epoch})")
        now = time.perf_counter()
        state.wall_time += now - self.session_mark
        self.session_mark = now
        state.metrics_bytes = self.folder.metrics_size()
        generators = gather_objects(world, _rng_state(self.bptt_generator))  # every process's, in rank order
        checkpoint = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": state.as_dict(),
            "average": self.average,
            "hidden": gather_state(world, self.hidden, getattr(self, "state_dims", None)),  # all B columns
            "rng": generators[0],
            "vocab": self.corpus.vocab.state_dict(),
            "config": to_dict(self.config),
        }
        if world.enabled:
            checkpoint.update(world_size=world.size, rng_by_process=generators)
        if self.scaler is not None:
            checkpoint["scaler"] = self.scaler.state_dict()
        self.folder.save_last(checkpoint)

    def load_last(self) -> Path:
        """Restore everything from ``last.pt`` (or ``.prev``) and drop metric lines written after it."""
        checkpoint, source = self.folder.load_last()
        self.check_vocab(checkpoint, source)
        saved_world = checkpoint.get("world_size", 1)
        if saved_world != self.world.size:
            raise UserError(
                f"checkpoint {source} was written by a run of {saved_world} process(es), this one has {self.world.size}; "
                f"resume it with the same number (torchrun --nproc_per_node={saved_world}, or no torchrun for 1)."
            )
        load_state(self.model, checkpoint["model"], source)
        self.state = TrainState.from_dict(checkpoint["trainer"], source)
        self.optimizer = _make_optimizer(self.model, self.t, self.state.stage)
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError) as error:
            raise UserError(f"checkpoint {source} holds another optimizer's state ({error}).") from None
        self.average = _to_device(checkpoint["average"], self.device)
        hidden = _to_device(checkpoint["hidden"], self.device)
        self.hidden = split_state(self.world, hidden, getattr(self, "state_dims", None))
        generators = checkpoint["rng_by_process"][self.world.rank] if self.world.enabled else checkpoint["rng"]
        _set_rng_state(generators, self.bptt_generator)
        if self.scaler is not None and "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.folder.truncate_metrics(self.state.metrics_bytes)
        return source

    def check_vocab(self, checkpoint: dict, source: Path) -> None:
        from lm.data import Vocabulary

        saved = Vocabulary.from_state_dict(checkpoint["vocab"])
        if saved.fingerprint() != self.corpus.vocab.fingerprint():
            raise UserError(
                f"checkpoint {source} was trained with another vocabulary ({len(saved)} entries) than this corpus "
                f"({len(self.corpus.vocab)} entries); point data.path at the corpus of the run."
            )

    def roll_back(self, where: str) -> None:
        """Stop with one sentence, or (train.on_nonfinite=rollback) go back to the last checkpoint with a
        lower learning rate."""
        last = self.folder.last
        if self.t.on_nonfinite != "rollback":
            raise NonFiniteError(
                f"{where}; the run stopped and its last good checkpoint {last} is intact "
                "(lower train.lr in a new run.name, or set train.on_nonfinite=rollback)."
            ) from None
        if self.state.rollbacks >= MAX_ROLLBACKS:
            raise NonFiniteError(
                f"{where} after {MAX_ROLLBACKS} rollbacks with a lower learning rate; the run stopped and its "
                f"last good checkpoint {last} is intact (lower train.lr in a new run.name)."
            ) from None
        rollbacks, lr_scale = self.state.rollbacks + 1, self.state.lr_scale * self.t.rollback_lr_factor
        barrier(self.world)
        source = self.load_last()
        self.state.rollbacks, self.state.lr_scale = rollbacks, lr_scale
        self.folder.log({"event": "rollback", "reason": where, "to_step": self.state.step, "epoch": self.state.epoch,
                         "rollbacks": rollbacks, "lr_scale": lr_scale})
        self.say(f"{where}; rolled back to step {self.state.step} ({source.name}) with the learning rate times {lr_scale:g}.")
        if self.bar is not None:
            self.bar.n = self.state.step
            self.bar.refresh()

    # --- logging ------------------------------------------------------------------------------

    def tokens_per_second(self) -> float:
        return self.state.tokens / max(self.state.train_time, 1e-9)

    def log_step(self, loss: float) -> None:
        self.folder.log({"event": "train", "epoch": self.state.epoch, "step": self.state.step, "loss": loss,
                         "ppl": math.exp(min(loss, 50)), "lr": self.optimizer.param_groups[0]["lr"],
                         "tokens_per_second": self.tokens_per_second(), **self.stage_field()})

    def open_progress_bar(self) -> None:
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total_steps(), initial=self.state.step, unit="step", dynamic_ncols=True, leave=False)

    def update_progress_bar(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=self.state.epoch, loss=f"{loss:.3f}", ppl=f"{math.exp(min(loss, 50)):.1f}",
                                 tok_s=f"{self.tokens_per_second():.0f}")

    # --- the end ------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Evaluate the best checkpoint on validation and test (and dynamically if asked), write
        ``result.json`` (process 0; the others get its result)."""
        barrier(self.world)  # process 0 has finished writing best.pt
        result = self.final_result() if self.world.is_main else None
        return broadcast_object(self.world, result)

    def final_result(self) -> dict:
        t, state, model, corpus = self.t, self.state, self.model, self.corpus
        best = self.folder.load_best()
        load_state(model, best["model"], self.folder.best)
        val = evaluate(model, corpus.valid, t.eval_batch_size, t.eval_bptt or t.bptt)
        test = evaluate(model, corpus.test, t.test_batch_size, t.eval_bptt or t.bptt)
        finetuned = state.stage == "finetune"
        result = {
            "schema_version": RESULT_SCHEMA_VERSION,
            "run": self.run_dir.name,
            "body": self.config.model.body,
            "head": self.config.head.name,
            "dataset": Path(str(self.config.data.path or self.config.data.name)).name,
            "seed": t.seed,
            "val_ppl": val["ppl"],
            "test_ppl": test["ppl"],
            "val_loss": val["loss"],
            "test_loss": test["loss"],
            "val_tokens": val["n_tokens"],
            "test_tokens": test["n_tokens"],
            "eval_batch_size": t.eval_batch_size,
            "test_batch_size": t.test_batch_size,
            "eval_bptt": t.eval_bptt or t.bptt,
            "best_epoch": best["epoch"],
            "epochs_completed": state.train_epochs if finetuned else state.epoch,
            "steps": state.step,
            "training_tokens": state.tokens,
            "tokens_per_second": self.tokens_per_second(),
            "train_time_s": state.train_time,
            "wall_time_s": state.wall_time,
            "n_params": model.n_params(),
            "head_input_size": model.body.d_output,
            "output_embedding_size": model.head.decoder.weight.shape[1],  # d of the rank bound
            "vocab_size": len(corpus.vocab),
            "corpus": corpus.record(),  # folder, and per split: file, bytes, SHA-256, tokens
            "averaged_sgd": state.averaging,
            **{f"test_{k}": test[k] for k in ("smoothing", "zero_fraction", "zero_target_fraction") if k in test},
            **self.stage_results(best),
            **self.dynamic_results(),
            **provenance(self.device),
            "config": to_dict(self.config),
        }
        self.folder.write_result(result)
        return result

    def stage_results(self, best: dict) -> dict:
        """Fine-tuning and processes: recorded only when used, so results of plain runs keep their keys."""
        state, extra = self.state, {}
        if state.stage == "finetune":
            extra.update(finetune_epochs_completed=len(state.val_history), finetune_steps=state.step - state.stage_start_step,
                         best_stage=best.get("stage", "train"))
        if self.world.enabled:
            extra["processes"] = self.world.size
        if self.t.precision != "fp32":
            extra["precision"] = self.t.precision
        return extra

    def dynamic_results(self) -> dict:
        """train.dynamic_eval: validation and test perplexity under dynamic evaluation of the best weights."""
        t = self.t
        if not t.dynamic_eval:
            return {}
        from lm.dynamic_eval import DynamicEvaluation

        dynamic = DynamicEvaluation.from_config(t)
        dynamic.collect_statistics(self.model, self.corpus.train)
        val = dynamic.evaluate(self.model, self.corpus.valid)
        test = dynamic.evaluate(self.model, self.corpus.test)
        return {"val_ppl_dynamic": val["ppl"], "test_ppl_dynamic": test["ppl"], "val_loss_dynamic": val["loss"],
                "test_loss_dynamic": test["loss"], "dynamic_eval": dynamic.settings()}


def train(config: ExperimentConfig, progress: bool = False, say: Callable[[str], None] | None = None) -> dict:
    """Train (or resume, or return the finished result of) the run that ``config`` describes."""
    return Trainer(config, progress=progress, say=say).run()
