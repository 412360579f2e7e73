"""The training loop on Hugging Face Accelerate: one function, the same on a CPU, a GPU or many machines."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, set_seed
from accelerate.utils import load as accelerate_load
from tqdm.auto import tqdm

from minilm import checkpoint as ckpt
from minilm.config import Config
from minilm.errors import CheckpointError, ConfigError, TrainingError
from minilm.metrics import classification_metrics, confusion, format_confusion
from minilm.model import count_params
from minilm.optim import lr_at, make_optimizer
from minilm.report import MetricsLog, device_peak_flops, flops_per_token, peak_memory_mb, plot_losses
from minilm.heads import build_model
from minilm.tasks import prepare_task


def _mixed_precision(choice: str) -> str:
    if choice == "auto":  # bf16 autocast is far slower than fp32 on most CPUs
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return choice


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, accelerator: Accelerator,
             max_batches: int = 0) -> tuple[dict[str, float], np.ndarray | None]:
    """Validation metrics, and a confusion matrix for classifiers.

    Each head reports per-example sums `k` with counts `k_n` (averaged here), or, for classifiers,
    per-example `preds` and `targets` (turned into accuracy, F1, macro-F1 and MCC).
    """
    model.eval()
    totals: dict[str, float] = {}
    labelled: dict[str, list[torch.Tensor]] = {"preds": [], "targets": []}
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        for k, v in model(**batch).metrics.items():
            v = accelerator.gather_for_metrics(v.detach())  # drops the samples repeated to even out processes
            if k in labelled:
                labelled[k].append(v.cpu())
            else:
                totals[k] = totals.get(k, 0.0) + v.float().sum().item()
    model.train()
    result = {k: totals[k] / max(totals[k + "_n"], 1.0) for k in totals if not k.endswith("_n")}
    matrix = None
    if labelled["preds"]:
        preds, targets = torch.cat(labelled["preds"]).numpy(), torch.cat(labelled["targets"]).numpy()
        n = accelerator.unwrap_model(model).cfg.num_labels
        result.update(classification_metrics(preds, targets, n))
        matrix = confusion(preds, targets, n)
    elif "loss" in result:
        result["ppl"] = math.exp(min(result["loss"], 50.0))
    return {f"val_{k}": v for k, v in result.items()}, matrix


def tqdm_write(accelerator: Accelerator, text: str) -> None:
    """Print above the progress bar, on the main process only."""
    if accelerator.is_main_process:
        tqdm.write(text)


def _improved(metric: str | None, result: dict[str, float], best: float | None) -> bool:
    """Without a best_metric every evaluation counts as an improvement (the latest weights are kept)."""
    if metric is None:
        return True
    if metric not in result:
        raise ConfigError(f"train.best_metric={metric!r} is not reported; this run reports {', '.join(result)}")
    lower_is_better = metric.endswith(("loss", "ppl"))
    return best is None or (result[metric] < best if lower_is_better else result[metric] > best)


def _load_state(accelerator: Accelerator, state: Path) -> None:
    """accelerate.load_state reads weights from safetensors and everything else with torch.load(weights_only=True),
    which refuses to run pickled code. Each file is checked that way first: accelerate itself would silently
    skip an unreadable RNG state, and the resumed run would no longer be exact."""
    try:
        for path in sorted(state.iterdir()):
            if path.suffix in (".bin", ".pkl", ".pt"):
                accelerate_load(path, map_location="cpu")  # weights_only=True, plus accelerate's numpy allowances
        accelerator.load_state(str(state))
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{str(state)!r} holds a file that is not plain tensor data (a pickled object that would "
                              "run code); it was not loaded: resume only from run directories you trust and restore "
                              "the state from the run that wrote it") from e
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"the training state in {str(state)!r} is unreadable ({str(e).splitlines()[0]}): "
                              "resume from an intact run or start a new one") from e


def _check_skipped(accelerator: Accelerator, total: int, before: int, step: int, limit: int) -> None:
    """Stop once more than `limit` steps were skipped for a non-finite loss or gradient (weights stay as they were)."""
    if total > before:
        tqdm_write(accelerator, f"step {step}: {total - before} step(s) skipped for a non-finite loss or gradient ({total} in all)")
    if total > limit:
        raise TrainingError(
            f"{total} steps had a non-finite loss or gradient (limit train.max_skipped_steps={limit}); the run stopped "
            f"at step {step} and its last checkpoint is intact: lower train.lr, raise train.warmup_steps or check the data"
        )


def _load_init(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | None) -> None:
    """Pretrained weights into a (possibly different) task model: the stack must match; new heads start fresh."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    stack_missing = [k for k in missing if k.startswith("transformer.")]
    if stack_missing or unexpected:
        raise CheckpointError(f"model.init_from={source!r} does not fit this model (missing {stack_missing[:3]}, "
                              f"unexpected {unexpected[:3]}): give a run or folder of the same architecture")


def _save(accelerator: Accelerator, model: torch.nn.Module, out_dir: Path, progress: dict, weights: bool = True) -> None:
    """Weights for sample/export (the latest, or the best so far) plus the full training state, each swapped in atomically."""
    accelerator.wait_for_everyone()
    tmp = out_dir / f"{ckpt.STATE_DIR}.tmp"
    try:
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        # every process takes part: under FSDP this gathers the shards into one full state dict
        full = accelerator.get_state_dict(model) if weights else None
        if accelerator.is_main_process:
            if weights:
                ckpt.save_weights(full, out_dir / ckpt.MODEL_FILE)
            ckpt.swap_in_state(out_dir, tmp, progress)
    except OSError as e:  # a full disk or a directory made read-only: the previous checkpoint is still whole
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write a checkpoint in {str(out_dir)!r} ({e.strerror or e}): free disk space "
                              "or make the directory writable, then resume; the previous checkpoint is intact") from e
    accelerator.wait_for_everyone()


def train(cfg: Config) -> dict[str, float]:
    """Train `cfg`, writing the run directory train.out_dir; returns the final evaluation metrics."""
    tc = cfg.train
    out_dir = Path(tc.out_dir)
    ckpt.check_run_dir(out_dir, tc.resume)  # before any work: never touch another run's directory
    if tc.resume:
        saved = ckpt.read_config(out_dir)
        if cfg.model.init_from:  # the architecture came from init_from, not from the model section
            same = saved.model.init_from == cfg.model.init_from
        else:
            same = saved.model == dataclasses.replace(cfg.model, vocab_size=saved.model.vocab_size,
                                                      num_labels=saved.model.num_labels)
        if not same:
            raise ConfigError(f"the model section differs from the one saved in {str(out_dir)!r}: resume with the same config")
        cfg = dataclasses.replace(cfg, classify=saved.classify)  # the same label ids
    if tc.threads:
        torch.set_num_threads(tc.threads)
    accum = GradientAccumulationPlugin(num_steps=tc.grad_accum, sync_with_dataloader=False)
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(tc.mixed_precision), gradient_accumulation_plugin=accum,
        log_with="wandb" if cfg.log.wandb != "disabled" else None, project_dir=str(out_dir),
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        dynamo_backend="inductor" if tc.compile else None,
    )
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    set_seed(tc.seed)
    main = accelerator.is_main_process

    # The main process goes first: it trains the tokenizer (saved for the others: tokenizer training need
    # not be deterministic across processes) and fills the datasets cache that the others then read.
    created, bar = False, None
    try:
        with accelerator.main_process_first():
            saved_tok = out_dir / ckpt.TOKENIZER_FILE if tc.resume or not main else None
            task = prepare_task(cfg, saved_tok, init_weights=not tc.resume)
            if main and not tc.resume:
                _create_run_dir(out_dir)
                created = True
                ckpt.write_text(out_dir / ckpt.CONFIG_FILE, _config_json(task.cfg))
                task.tokenizer.save(str(out_dir / ckpt.TOKENIZER_FILE))
        cfg = task.cfg
        set_seed(tc.seed)  # same initial weights whatever data preparation consumed
        model = build_model(cfg.model)
        if task.init_state is not None:
            _load_init(model, task.init_state, cfg.model.init_from)

        # an own generator: creating an iterator never draws from the global RNG (which dropout and masking use)
        loader_kw = dict(batch_size=tc.batch_size, pin_memory=torch.cuda.is_available(), generator=torch.Generator())
        train_loader = torch.utils.data.DataLoader(task.train, collate_fn=task.collate, drop_last=True, **loader_kw)
        val_loader = torch.utils.data.DataLoader(task.val, collate_fn=task.val_collate, **loader_kw)
        if len(train_loader) < tc.grad_accum:
            raise ConfigError(f"train.batch_size={tc.batch_size} x train.grad_accum={tc.grad_accum} is more than the "
                              f"{len(task.train)} training examples: lower them")
        if tc.epochs:  # whole passes over the data, evaluated after each
            per_epoch = len(train_loader) // tc.grad_accum
            tc = dataclasses.replace(tc, max_steps=tc.epochs * per_epoch, eval_interval=per_epoch)
        optimizer = make_optimizer(model, tc)
        model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)

        progress = {"step": 0, "epoch": 0, "micro_batches": 0, "best": None, "since_best": 0, "skipped": 0}
        if tc.resume:
            state = ckpt.state_dir(out_dir)
            progress = ckpt.read_progress(state)
            _load_state(accelerator, state)
        n_params = count_params(accelerator.unwrap_model(model))
        peak, fpt = device_peak_flops(), flops_per_token(cfg.model, n_params)
        log = MetricsLog(out_dir / "metrics.jsonl", main)
        if tc.resume:
            log.rewind(progress["step"])
        if cfg.log.wandb != "disabled":
            accelerator.init_trackers(cfg.log.project, config=cfg.to_dict(), init_kwargs={
                "wandb": {"mode": cfg.log.wandb, "name": cfg.log.run_name, "dir": str(out_dir)}})
        accelerator.print(f"model: {n_params / 1e6:.2f}M parameters | {len(task.train)} training examples | "
                          f"{tc.batch_size * tc.grad_accum * accelerator.num_processes} per step | "
                          f"{accelerator.num_processes} process(es) on {accelerator.device}")

        step, micro = progress["step"], progress["micro_batches"]
        epoch, skip = divmod(micro, len(train_loader))
        bar = tqdm(total=tc.max_steps, initial=step, disable=not main, dynamic_ncols=True, desc="train")
        model.train()
        # summed on the device: no host sync per step; tokens are real (non-padding) tokens
        loss_sum, loss_count, tokens = (torch.zeros((), device=accelerator.device) for _ in range(3))
        t_last, stop = time.perf_counter(), False
        # steps skipped for a non-finite loss or gradient, counted on the device (read when logging)
        skipped = torch.full((), float(progress.get("skipped", 0)), device=accelerator.device)
        guard = accelerator.scaler is None  # fp16's GradScaler skips such steps itself
        result: dict[str, float] = {}
        matrix = None
        while step < tc.max_steps and not stop:
            train_loader.set_epoch(epoch)  # accelerate passes it on to the dataset (and to skip loaders)
            batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            for batch in batches:
                with accelerator.accumulate(model):
                    out = model(**batch)
                    accelerator.backward(out.loss)
                    if accelerator.sync_gradients:
                        for group in optimizer.param_groups:
                            group["lr"] = lr_at(step, tc)
                        norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip or math.inf)
                        if guard:  # the fused AdamW skips the update when found_inf is nonzero
                            found_inf = (~(torch.isfinite(norm) & torch.isfinite(out.loss.detach()))).float()
                            if accelerator.num_processes > 1:  # every rank skips the same steps
                                found_inf = accelerator.reduce(found_inf, "max")
                            optimizer.optimizer.found_inf = found_inf
                            skipped += found_inf
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                micro += 1
                finite = torch.isfinite(out.loss.detach())  # the logged loss averages the finite ones
                loss_sum += torch.where(finite, out.loss.detach(), 0.0)
                loss_count += finite
                tokens += batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
                if not accelerator.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                checking = step % cfg.log.log_interval == 0 or step % tc.eval_interval == 0 or step == tc.max_steps
                if checking:
                    n_skipped = int(skipped.item())
                if step % cfg.log.log_interval == 0 or step == tc.max_steps:
                    loss = accelerator.reduce(loss_sum / loss_count.clamp(min=1), "mean").item()
                    tok_s = accelerator.reduce(tokens, "sum").item() / (time.perf_counter() - t_last)
                    record = {"split": "train", "step": step, "loss": loss, "lr": lr_at(step - 1, tc), "tokens_per_s": tok_s,
                              "skipped_steps": n_skipped}
                    if peak:
                        record["mfu"] = fpt * tok_s / (peak * accelerator.num_processes)
                    log.write(record)
                    accelerator.log({k: v for k, v in record.items() if k != "split"}, step=step)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", **({"mfu": f"{record['mfu']:.1%}"} if peak else {}))
                    for t in (loss_sum, loss_count, tokens):
                        t.zero_()
                    t_last = time.perf_counter()
                if checking:  # before any evaluation or save
                    _check_skipped(accelerator, n_skipped, progress.get("skipped", 0), step, tc.max_skipped_steps)
                    progress["skipped"] = n_skipped
                if step % tc.eval_interval == 0 or step == tc.max_steps:
                    last = step == tc.max_steps
                    result, matrix = evaluate(model, val_loader, accelerator, 0 if last else tc.eval_batches)
                    log.write({"split": "val", "step": step, **result})
                    accelerator.log(result, step=step)
                    tqdm_write(accelerator, f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
                    improved = _improved(tc.best_metric, result, progress["best"])
                    progress = {"step": step, "epoch": micro // len(train_loader), "micro_batches": micro,
                                "best": result[tc.best_metric] if improved and tc.best_metric else progress["best"],
                                "since_best": 0 if improved else progress["since_best"] + 1,
                                "skipped": n_skipped}
                    _save(accelerator, model, out_dir, progress, weights=improved)
                    created = False  # the run directory now holds a checkpoint worth keeping
                    t_last = time.perf_counter()  # evaluation and saving are not training throughput
                    tokens.zero_()
                    if tc.early_stopping and progress["since_best"] >= tc.early_stopping:
                        accelerator.print(f"early stop: {tc.best_metric} has not improved in {tc.early_stopping} evaluations")
                        stop = True
                if step >= tc.max_steps or stop:
                    break
            epoch, skip = epoch + 1, 0
    except BaseException:
        if created and main:  # a new run that failed before its first checkpoint leaves nothing behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    if main:
        plot_losses(log.read(), out_dir / "loss.png")
        if matrix is not None:
            tqdm_write(accelerator, "confusion matrix (last evaluation):\n" + format_confusion(matrix, cfg.classify.labels))
    mem = peak_memory_mb()
    accelerator.print(f"done: {step} steps | peak memory {mem:,.0f} MiB | run directory {out_dir}")
    accelerator.end_training()
    return result


def _create_run_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"cannot write to train.out_dir={str(out_dir)!r} ({e.strerror or e}): "
                              "choose a writable directory") from e


def _config_json(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2) + "\n"
