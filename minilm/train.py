"""The training loop on Hugging Face Accelerate, the same on a CPU, a GPU or many machines.

`train` reads top to bottom: set up (run directory, accelerator, the task's data and model, optimizer,
loaders), then per batch one `train_step` (gradient accumulation, clipping, the non-finite guard), a log line
every log.log_interval steps, and `evaluate_and_save` every train.eval_interval steps.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration, send_to_device,
                               set_seed)
from tqdm.auto import tqdm

from minilm.config import Config, TrainConfig
from minilm.data.streaming import StreamedBlocks, with_positions
from minilm.errors import ConfigError, Stopped, TrainingError
from minilm.data.lm import ContiguousLanes
from minilm.data.seq2seq import References
from minilm.evaluation import Evaluation, decoded_metrics, evaluate
from minilm.hf import load_pretrained
from minilm.metrics import format_labels
from minilm.models import build_model, count_params, family_of
from minilm.models.outputs import CarriedState
from minilm.optim import lr_at, make_optimizer, skip_step_if
from minilm.precision import choose as choose_precision
from minilm.precision import resumed as resumed_precision
from minilm.report import device_peak_flops, flat_config, peak_memory_mb, plot_losses, trackers, training_flops
from minilm.run import Progress, RunDir
from minilm.stopping import StopSignals
from minilm.runfiles import CONFIG_FILE, TOKENIZER_FILE, check_state
from minilm.tasks import Task, TaskData, get_task
from minilm.tokenizer import load_tokenizer


def train(cfg: Config) -> dict[str, float]:
    """Train `cfg`, writing the run directory train.out_dir; returns the final evaluation metrics."""
    task = get_task(cfg.train.task)
    task.check(cfg)  # an impossible task or best_metric is refused before any work
    run = RunDir(cfg.train.out_dir)
    run.check(cfg.train.resume)  # never touch another run's directory
    precision = choose_precision(cfg)
    if cfg.train.resume:
        cfg = run.resumed_config(cfg)
        precision = resumed_precision(cfg, Progress.read(run.state_dir()).precision, precision)
    accelerator = make_accelerator(cfg, precision[0])
    session, bar = None, None
    try:
        session = set_up(cfg, task, run, accelerator)
        accelerator.print(f"precision: {precision[1]}")  # once the data and model are known to be good
        signals = StopSignals()
        tc, progress = session.cfg.train, session.progress
        bar = tqdm(total=tc.max_steps, initial=progress.step, disable=not accelerator.is_main_process,
                   dynamic_ncols=True, desc="train")
        evaluation = None
        # a finished run resumed has nothing left to train
        for batch in batches(session) if progress.step < tc.max_steps else ():
            if not train_step(session, batch):
                continue  # gradients accumulated, no optimizer step yet
            bar.update(1)
            log_due = progress.step % session.cfg.log.log_interval == 0 or progress.step == tc.max_steps
            eval_due = progress.step % tc.eval_interval == 0 or progress.step == tc.max_steps
            if log_due or eval_due:
                skipped = int(session.meter.skipped.item())  # the only host sync between log lines
                if log_due:
                    log_train(session, bar, skipped)
                check_skipped(session, skipped)  # before any evaluation or save
            save_due = not eval_due and tc.save_interval and progress.step % tc.save_interval == 0
            if eval_due:
                evaluation, stop = evaluate_and_save(session)
                if stop:
                    break
            elif save_due:
                checkpoint(session, weights=tc.best_metric is None)  # the latest weights, unless the best are kept
            if progress.step >= tc.max_steps:
                break
            if signals.agreed(accelerator, log_due or eval_due):
                stop_on_signal(session, signals, saved=eval_due or save_due)
    except BaseException:
        if accelerator.is_main_process:
            run.discard_if_new()  # a new run that failed before its first checkpoint leaves nothing behind
        raise
    finally:
        if bar is not None:
            bar.close()
        if session is not None:
            signals.restore()
    return finish(session, evaluation)


# ---------------------------------------------------------------------------------------------
# set-up


@dataclass
class Meter:
    """Training statistics summed on the device between log lines, so that a step needs no host sync."""

    loss_sum: torch.Tensor
    loss_count: torch.Tensor
    tokens: torch.Tensor  # real (non-padding) tokens
    flops: torch.Tensor  # model FLOPs, for MFU (GPUs only)
    skipped: torch.Tensor  # steps skipped for a non-finite loss or gradient, in all
    started: float = 0.0

    @classmethod
    def on(cls, device: torch.device, skipped: int) -> Meter:
        zeros = [torch.zeros((), device=device) for _ in range(3)]
        return cls(*zeros, torch.zeros((), device=device, dtype=torch.float64),
                   torch.full((), float(skipped), device=device), time.perf_counter())

    def restart(self, losses: bool) -> None:
        """A new throughput window (and loss average) from now: evaluation and saving are not training."""
        for t in (self.loss_sum, self.loss_count) if losses else ():
            t.zero_()
        self.tokens.zero_()
        self.flops.zero_()
        self.started = time.perf_counter()


@dataclass
class Session:
    """Everything the loop works with, built once by set_up."""

    cfg: Config  # resolved: vocabulary, labels, and max_steps from train.epochs
    task: Task
    run: RunDir
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    progress: Progress
    meter: Meter
    n_params: int
    peak_flops: float | None  # the GPU's peak (MFU is reported only then)
    guard: bool  # skip steps with a non-finite loss or gradient here (fp16's GradScaler does it itself)
    streamed: bool  # the training text is streamed (data.streaming): batches carry their stream position
    references: References | None  # seq2seq: validation sources and targets, for the decoded metrics
    tbptt: bool = False  # train.tbptt: each batch continues the lanes of the last, from its final state
    carry: CarriedState | None = None  # that state (detached), None at the start of an epoch
    position: dict | None = None  # where this process's stream stands after the last batch trained on
    started: float = dataclasses.field(default_factory=time.perf_counter)  # this session's start


def check_fits(cfg: Config, accelerator: Accelerator) -> None:
    """The model's weights, gradients and AdamW's two moments (16 bytes a parameter in fp32) fit in the memory
    free on the device: a size given in the config is refused in one line, not killed by the kernel later."""
    with torch.device("meta"):  # count without allocating
        n = count_params(build_model(cfg))
    if accelerator.device.type == "cuda":
        free = torch.cuda.mem_get_info(accelerator.device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if 16 * n > free:
        raise ConfigError(f"the model has {n / 1e6:,.0f}M parameters, which need about {16 * n / 2**30:,.1f} GiB to "
                          f"train (weights, gradients, optimizer), more than the {free / 2**30:,.1f} GiB free on "
                          f"{accelerator.device}: make model.n_embd, n_layer, block_size or the vocabulary smaller")


def make_accelerator(cfg: Config, mixed: str) -> Accelerator:
    tc = cfg.train
    cpus = os.cpu_count() or 1
    if tc.threads > cpus:  # more threads than CPUs only slow torch down (and a huge number cannot be started)
        raise ConfigError(f"train.threads={tc.threads} is more than the {cpus} CPUs here: give at most {cpus} (0: "
                          "torch's default)")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=tc.grad_accum, sync_with_dataloader=False),
        log_with=trackers(cfg) or None,
        project_config=ProjectConfiguration(project_dir=tc.out_dir, logging_dir=str(Path(tc.out_dir) / "tensorboard")),
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        dynamo_backend="inductor" if tc.compile else None,
    )
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return accelerator


def set_up(cfg: Config, task: Task, run: RunDir, accelerator: Accelerator) -> Session:
    tc, main = cfg.train, accelerator.is_main_process
    set_seed(tc.seed)
    # The main process goes first: it trains the tokenizer (saved for the others: tokenizer training need
    # not be deterministic across processes) and prepares the token shards that the others then map.
    with accelerator.main_process_first():
        tok = load_tokenizer(run.path / TOKENIZER_FILE) if tc.resume or not main else None
        source = load_pretrained(cfg.model.init_from) if cfg.model.init_from and not tc.resume else None
        if source is not None:
            task.check_source(cfg, source)
        data = task.prepare(cfg, tok, source)
        if main and not tc.resume:
            run.create(data.cfg, data.tokenizer)
    task.check_model(data.cfg, data.cfg.model)  # with init_from, the architecture is known only now
    check_fits(data.cfg, accelerator)
    family = family_of(data.cfg.model)
    set_seed(tc.seed)  # the same initial weights whatever data preparation consumed
    model = build_model(data.cfg)
    if tc.gradient_checkpointing:
        family.checkpointing(model)
    if data.init_state is not None:
        load_init(model, data.init_state, cfg.model.init_from, family.backbone)
    train_loader, val_loader = make_loaders(data)
    optimizer = make_optimizer(model, tc)
    streamed, lanes = isinstance(data.train, StreamedBlocks), isinstance(data.train, ContiguousLanes)
    model, optimizer, val_loader = accelerator.prepare(model, optimizer, val_loader)
    if not (streamed or lanes):  # a stream or the TBPTT lanes are split between the processes already
        train_loader = accelerator.prepare(train_loader)
    if not streamed:
        # this process's share of the data: with N processes an epoch is 1/N of the batches per process
        cfg = dataclasses.replace(data.cfg, train=with_epochs(tc, len(train_loader)))
    run.metrics.enabled = main
    progress = run.load_state(accelerator) if tc.resume else Progress()
    progress.precision = accelerator.mixed_precision  # kept by a resume
    if streamed and tc.resume:
        data.train.position = run.stream_position(accelerator)
    carry = family.state_from_tensors(run.carried_state(accelerator), accelerator.device) if lanes and tc.resume \
        else None
    if trackers(cfg):
        accelerator.init_trackers(cfg.log.project, config=flat_config(cfg), init_kwargs={
            "wandb": {"mode": cfg.log.wandb, "name": cfg.log.run_name, "dir": str(run.path)}})
    n_params = count_params(accelerator.unwrap_model(model))
    examples = "streamed training text" if streamed else f"{len(data.train)} training examples"
    accelerator.print(f"model: {n_params / 1e6:.2f}M parameters | {examples} | "
                      f"{tc.batch_size * tc.grad_accum * accelerator.num_processes} per step | "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}")
    return Session(cfg, task, run, accelerator, model, optimizer, train_loader, val_loader, progress,
                   Meter.on(accelerator.device, progress.skipped), n_params, device_peak_flops(),
                   guard=accelerator.scaler is None, streamed=streamed, references=data.references, tbptt=lanes,
                   carry=carry)


def load_init(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | None,
              backbone: tuple[str, ...]) -> None:
    """Pretrained weights into a (possibly different) task model: the stack (the state-dict names under `backbone`)
    must match; new heads start fresh."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state(own, state, f"model.init_from={source!r}", "give a run or folder of the same architecture",
                ignore_missing=lambda name: not name.startswith(backbone))
    model.load_state_dict(state, strict=False)


def make_loaders(data: TaskData) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    tc = data.cfg.train
    # an own generator: creating an iterator never draws from the global RNG (which dropout and masking use)
    kw = dict(batch_size=tc.batch_size, pin_memory=torch.cuda.is_available(), generator=torch.Generator())
    val = torch.utils.data.DataLoader(data.val, collate_fn=data.val_collate, **kw)
    if isinstance(data.train, StreamedBlocks):  # read in this process (masking draws from the saved global RNG)
        return torch.utils.data.DataLoader(data.train, collate_fn=with_positions(data.collate), **kw), val
    train = torch.utils.data.DataLoader(data.train, collate_fn=data.collate, drop_last=True, **kw)
    if len(train) < tc.grad_accum:
        raise ConfigError(f"train.batch_size={tc.batch_size} x train.grad_accum={tc.grad_accum} is more than the "
                          f"{len(data.train)} training examples: lower them")
    return train, val


def with_epochs(tc: TrainConfig, batches: int) -> TrainConfig:
    """train.epochs > 0: that many whole passes over the data (sets max_steps), evaluated after each."""
    if not tc.epochs:
        return tc
    per_epoch = batches // tc.grad_accum
    return dataclasses.replace(tc, max_steps=tc.epochs * per_epoch, eval_interval=per_epoch)


# ---------------------------------------------------------------------------------------------
# the loop's parts


def batches(session: Session) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches from where the run stands, epoch after epoch: a dataset in its seeded order for the
    epoch (a resumed run skips what it already trained on), or a stream from its saved position."""
    if session.streamed:
        for batch in session.train_loader:  # the stream starts its next epoch by itself
            session.position = batch.pop("position")
            yield send_to_device(batch, session.accelerator.device)
        return
    epoch, skip = divmod(session.progress.micro_batches, len(session.train_loader))
    while True:
        if hasattr(session.train_loader, "set_epoch"):  # accelerate's: passes it on to the dataset and skip loaders
            session.train_loader.set_epoch(epoch)
        else:  # the TBPTT lanes' own loader
            session.train_loader.dataset.set_epoch(epoch)
        if session.tbptt and not skip:
            session.carry = None  # the lanes start again: so does the state
        loader = session.accelerator.skip_first_batches(session.train_loader, skip) if skip else session.train_loader
        for batch in loader:
            # the TBPTT lanes' loader is not prepared by accelerate: its batches are moved here
            yield send_to_device(batch, session.accelerator.device) if session.tbptt else batch
        epoch, skip = epoch + 1, 0


def train_step(session: Session, batch: dict[str, torch.Tensor]) -> bool:
    """Forward and backward on one micro-batch; every grad_accum-th one also clips and steps the optimizer
    (unless the loss or gradient is not finite). True when an optimizer step was taken."""
    acc, tc = session.accelerator, session.cfg.train
    with acc.accumulate(session.model):
        out = session.model(**batch, state=session.carry) if session.tbptt else session.model(**batch)
        if session.tbptt:
            session.carry = out.state.detach()  # the next batch continues from here; gradients stop here
        acc.backward(out.loss)
        if acc.sync_gradients:
            for group in session.optimizer.param_groups:
                group["lr"] = lr_at(session.progress.step, tc)
            norm = acc.clip_grad_norm_(session.model.parameters(), tc.grad_clip or math.inf)
            if session.guard:
                bad = (~(torch.isfinite(norm) & torch.isfinite(out.loss.detach()))).float()
                if acc.num_processes > 1:  # every rank skips the same steps
                    bad = acc.reduce(bad, "max")
                skip_step_if(session.optimizer, bad)
                session.meter.skipped += bad
        session.optimizer.step()
        session.optimizer.zero_grad(set_to_none=True)
    session.progress.micro_batches += 1
    meter, loss = session.meter, out.loss.detach()
    finite = torch.isfinite(loss)  # the logged loss averages the finite ones
    meter.loss_sum += torch.where(finite, loss, 0.0)
    meter.loss_count += finite
    mask = batch.get("attention_mask")
    meter.tokens += mask.sum() if mask is not None else batch["input_ids"].numel()
    if session.peak_flops:  # per-sequence lengths only where MFU is reported
        ids = batch["input_ids"]
        lengths = mask.sum(-1) if mask is not None else torch.full((ids.size(0),), ids.size(1), device=ids.device)
        meter.flops += training_flops(session.cfg.model, session.n_params, lengths)  # (B,) real tokens per sequence
    if not acc.sync_gradients:
        return False
    session.progress.step += 1
    return True


def log_train(session: Session, bar: tqdm, skipped: int) -> None:
    """The mean training loss, tokens/s and (on GPUs) MFU since the last line: metrics.jsonl, trackers, the bar."""
    acc, meter, step = session.accelerator, session.meter, session.progress.step
    seconds = time.perf_counter() - meter.started
    loss = acc.reduce(meter.loss_sum / meter.loss_count.clamp(min=1), "mean").item()
    tok_s = acc.reduce(meter.tokens, "sum").item() / seconds
    record = {"split": "train", "step": step, "loss": loss, "lr": lr_at(step - 1, session.cfg.train),
              "tokens_per_s": tok_s, "skipped_steps": skipped, "seconds": run_seconds(session)}
    shown = {"loss": f"{loss:.4f}", "tok_s": f"{tok_s:,.0f}"}
    if session.peak_flops:
        record["mfu"] = acc.reduce(meter.flops, "sum").item() / seconds / (session.peak_flops * acc.num_processes)
        shown["mfu"] = f"{record['mfu']:.1%}"
    session.run.metrics.write(record)
    acc.log({k: v for k, v in record.items() if k != "split"}, step=step)
    bar.set_postfix(**shown)
    meter.restart(losses=True)


def run_seconds(session: Session) -> float:
    """The run's wall time so far, its sessions before a resume included: learning curves against time."""
    return round(session.progress.seconds + time.perf_counter() - session.started, 2)


def check_skipped(session: Session, total: int) -> None:
    """Stop once more than train.max_skipped_steps steps were skipped (the weights stayed as they were)."""
    progress, limit = session.progress, session.cfg.train.max_skipped_steps
    if total > progress.skipped:
        tqdm_write(session.accelerator, f"step {progress.step}: {total - progress.skipped} step(s) skipped for a "
                                        f"non-finite loss or gradient ({total} in all)")
    progress.skipped = total
    if total > limit:
        raise TrainingError(
            f"{total} steps had a non-finite loss or gradient (limit train.max_skipped_steps={limit}); the run stopped "
            f"at step {progress.step} and its last checkpoint is intact: lower train.lr, raise train.warmup_steps or "
            "check the data")


def evaluate_and_save(session: Session) -> tuple[Evaluation, bool]:
    """Evaluate, checkpoint (new weights only if they improved train.best_metric); True when early stopping."""
    acc, tc, progress = session.accelerator, session.cfg.train, session.progress
    last = progress.step == tc.max_steps
    references = session.references
    limits = [key for key, on in (
        ("train.eval_batches", 0 < tc.eval_batches < _batches(session.val_loader)),
        ("seq2seq.decode_examples",
         references is not None and 0 < session.cfg.seq2seq.decode_examples < len(references.sources))) if on]
    if last and limits:
        tqdm_write(acc, f"final evaluation: scoring the whole validation set ({' and '.join(limits)} only "
                        f"limit{'s' if len(limits) == 1 else ''} the evaluations before it)")
    ev = evaluate(session.model, session.val_loader, acc, 0 if last else tc.eval_batches, session.task.perplexity,
                  session.task.spans(session.cfg))
    limit = 0 if last else session.cfg.seq2seq.decode_examples
    if references is not None and (last or limit):  # what the model decodes, greedily: all sources at the end
        ev.metrics.update(decoded_metrics(session.model, references, acc, limit))
    session.run.metrics.write({"split": "val", "step": progress.step, **ev.metrics, "seconds": run_seconds(session)})
    acc.log(ev.metrics, step=progress.step)
    tqdm_write(acc, f"step {progress.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.metrics.items()))
    better = improved(tc.best_metric, ev.metrics, progress.best)
    if better and tc.best_metric:
        progress.best = ev.metrics[tc.best_metric]
    progress.since_best = 0 if better else progress.since_best + 1
    checkpoint(session, weights=better)
    session.meter.restart(losses=False)
    stop = bool(tc.early_stopping) and progress.since_best >= tc.early_stopping
    if stop:
        acc.print(f"early stop: {tc.best_metric} has not improved in {tc.early_stopping} evaluations")
    return ev, stop


def checkpoint(session: Session, weights: bool) -> None:
    """Save the training state (and, with `weights`, model.safetensors) where the run stands now."""
    progress = session.progress
    progress.epoch = session.position["epoch"] if session.streamed else \
        progress.micro_batches // len(session.train_loader)
    now = time.perf_counter()
    progress.seconds, session.started = progress.seconds + now - session.started, now
    session.run.save(session.accelerator, session.model, progress, weights=weights, position=session.position,
               carry=(session.carry.tensors() if session.carry is not None else {}) if session.tbptt else None)


def stop_on_signal(session: Session, signals: StopSignals, saved: bool) -> None:
    """Checkpoint (unless this step just did) and stop, saying how to continue."""
    if not saved:
        checkpoint(session, weights=session.cfg.train.best_metric is None)
    name = signal.Signals(signals.signum).name
    raise Stopped(f"stopped by {name} at step {session.progress.step}; the checkpoint is saved. Continue with: "
                  f"minilm train {session.run.path / CONFIG_FILE} train.resume=true", 128 + signals.signum)


def improved(metric: str | None, result: dict[str, float], best: float | None) -> bool:
    """Without a best_metric every evaluation counts as an improvement (the latest weights are kept)."""
    if metric is None:
        return True
    if metric not in result:  # e.g. val_f1, which only two-label classifiers report
        raise ConfigError(f"train.best_metric={metric!r} is not reported; this run reports {', '.join(result)}")
    lower_is_better = metric.endswith(("loss", "ppl", "error"))
    return best is None or (result[metric] < best if lower_is_better else result[metric] > best)


def finish(session: Session, evaluation: Evaluation | None) -> dict[str, float]:
    acc = session.accelerator
    if acc.is_main_process:
        plot_losses(session.run.metrics.read(), session.run.path / "loss.png")
        if evaluation is not None and evaluation.confusion is not None:
            tqdm_write(acc, "the last evaluation, by label:\n"
                       + format_labels(evaluation.confusion, session.task.labels(session.cfg)))
    acc.print(f"done: {session.progress.step} steps | peak memory {peak_memory_mb():,.0f} MiB | "
              f"run directory {session.run.path}")
    acc.end_training()
    return evaluation.metrics if evaluation is not None else {}


def _batches(loader) -> int:
    try:
        return len(loader)
    except TypeError:  # a stream's validation loader has no length: it may be longer than any limit
        return 1 << 62


def tqdm_write(accelerator: Accelerator, text: str) -> None:
    """Print above the progress bar, on the main process only."""
    if accelerator.is_main_process:
        tqdm.write(text)
