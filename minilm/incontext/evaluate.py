"""Zero- and few-shot evaluation of a causal language model (GPT-3's in-context learning), task by task and
shot count by shot count: each example's prompt (description, K demonstrations, the example) and continuations
scored by likelihood, the metrics lm-evaluation-harness defines, a table, a JSON file per task in the model's
folder and, with several shot counts, a plot of accuracy against shots."""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from minilm import runfiles
from minilm.errors import CheckpointError, UsageError
from minilm.hf import load_pretrained
from minilm.hf_files import read_json
from minilm.incontext import prompts
from minilm.incontext.scoring import Request, Scored, score, window
from minilm.incontext.spec import TaskSpec
from minilm.models import task_model
from minilm.run import load_run
from minilm.runfiles import CONFIG_FILE

RESULTS_PREFIX = "incontext-"  # RESULTS_PREFIX + task + .json in the model's folder
PLOT_FILE = "incontext.png"


def load_language_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Tokenizer]:
    """The causal language model (eval mode) and tokenizer of a minilm run or a local Hugging Face GPT-2 folder."""
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{str(folder)!r} is not a model folder (no {CONFIG_FILE}): give a minilm run "
                              "directory or a local Hugging Face GPT-2 folder")
    if isinstance(read_json(folder / CONFIG_FILE).get("model"), dict):  # a minilm run: its config has sections
        cfg, model, tok = load_run(folder, device)
        task = cfg.train.task
    else:
        source = load_pretrained(folder)
        task, tok = source.task, source.tokenizer
        model = task_model(source.model, source.task)
        model.load_state_dict(source.state)
        model = model.to(device).eval()
    if task != "causal_lm":
        raise UsageError(f"{str(folder)!r} holds a {task} model, not a language model: zero- and few-shot scoring "
                         "reads a causal LM (a GPT or recurrent train.task=causal_lm run, or a GPT-2 folder)")
    return model, tok


@dataclass
class Item:
    """One example at one shot count: its request, the right continuation, and calibration's requests."""

    request: Request
    right: int  # index of the right continuation
    chars: list[int]  # characters of each option (acc_norm divides by them)
    calibration: list[Request]
    demonstrations: int  # kept after fitting the context
    cut: bool  # the example itself was cut from the left


class TaskRun:
    """A task's rows read once for a model, then prompts built and scored for any number of shots."""

    def __init__(self, spec: TaskSpec, tok: Tokenizer, window: int | None, limit: int | None):
        self.spec, self.tok, self.window = spec, tok, window
        cleaner = prompts.Cleaner(spec, tok)
        read = spec.columns() + ([spec.answer_column] if spec.kind == "cloze" else [])
        test = prompts.read_rows(spec, spec.test_files, "test_files")
        self.test = cleaner.rows(test[:limit] if limit is not None else test, read)
        if not self.test:
            raise UsageError(f"task {spec.name}: no examples to score in {spec.test_files[0]!r}")
        self.train = cleaner.rows(prompts.read_rows(spec, spec.train_files, "train_files"), read) \
            if spec.train_files else []
        prompts.check_labels(spec, self.test, "test_files")
        prompts.check_labels(spec, self.train, "train_files")
        self.content_free = cleaner.texts(spec.content_free)
        self.dropped = cleaner.dropped
        self.count = functools.lru_cache(maxsize=1 << 16)(lambda text: len(prompts.encode(tok, text)))
        self.options = list(spec.options.items())  # (label, text) in the task's order
        self.option_ids = [self._continuation(text) for _, text in self.options]

    def _continuation(self, text: str) -> tuple[int, ...]:
        ids = tuple(prompts.encode(self.tok, self.spec.target_delimiter + text))
        if not ids:
            raise UsageError(f"task {self.spec.name}: the answer {text!r} encodes to no tokens: give a visible one")
        return ids

    def items(self, shots: int, seed: int) -> list[Item]:
        spec = self.spec
        if shots and not self.train:
            raise UsageError(f"task {spec.name} has no train_files to draw demonstrations from: use --shots 0")
        out = []
        for i, row in enumerate(self.test):
            query = prompts.render(spec, row)
            demos = [prompts.demonstration(spec, d)
                     for d in prompts.draw_demonstrations(spec, self.train, query, shots, seed, i)]
            if spec.kind == "choice":
                conts, right = tuple(self.option_ids), [k for k, _ in self.options].index(row[spec.label_column])
                chars = [len(text) for _, text in self.options]
            else:
                conts, right, chars = (self._continuation(row[spec.answer_column]),), 0, [0]
            budget = None
            if self.window is not None:  # the last token of a continuation is predicted, never read
                budget = self.window - max(len(c) for c in conts) + 1
                if budget < 1:
                    raise UsageError(f"task {spec.name}: an answer is longer than the model's {self.window}-token "
                                     "context: use shorter options")
            fitted = prompts.fit(spec, self.tok, demos, query, budget, self.count)
            calibration = [Request(tuple(prompts.fit(spec, self.tok, demos, prompts.content_free(spec, cf), budget,
                                                     self.count).ids), conts) for cf in self.content_free]
            out.append(Item(Request(tuple(fitted.ids), conts), right, chars, calibration, fitted.demonstrations,
                            fitted.cut))
        return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equals, as numpy's argmax


def _log_softmax(values: list[float]) -> list[float]:
    top = max(values)
    norm = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - norm for v in values]


def metrics(kind: str, items: list[Item], scored: list[list[Scored]], calibration: list[list[list[Scored]]]
            ) -> dict[str, float]:
    """choice: acc (argmax of the log-probability), acc_norm (argmax of log-probability per character of the
    option, as lm-evaluation-harness defines both) and, with content-free inputs, calibrated (Zhao et al. 2021:
    each option's probability divided by its mean probability after the content-free inputs). cloze: acc (greedy
    decoding writes exactly the word) and the word's perplexity (exp of its mean negative log-probability)."""
    n = len(items)
    if kind == "cloze":
        return {"acc": sum(s[0].greedy for s in scored) / n,
                "perplexity": math.exp(-sum(s[0].logprob for s in scored) / n)}
    ll = [[s.logprob for s in row] for row in scored]
    out = {"acc": sum(_argmax(v) == it.right for v, it in zip(ll, items)) / n,
           "acc_norm": sum(_argmax([x / c for x, c in zip(v, it.chars)]) == it.right for v, it in zip(ll, items)) / n}
    if calibration and calibration[0]:
        right = 0
        for v, it, cf in zip(ll, items, calibration):
            probs = [[math.exp(x) for x in _log_softmax([s.logprob for s in row])] for row in cf]
            bias = [sum(p[j] for p in probs) / len(probs) for j in range(len(v))]  # the mean over inputs
            right += _argmax([x - math.log(max(b, 1e-30)) for x, b in zip(_log_softmax(v), bias)]) == it.right
        out["calibrated"] = right / n
    return out


def evaluate_task(model: torch.nn.Module, run: TaskRun, shots: int, seed: int, batch_size: int = 32,
                  use_cache: bool = True, progress: bool = False) -> dict[str, Any]:
    """The metrics of one task at one shot count, with what fitting the context cost and the time taken."""
    items = run.items(shots, seed)
    cal = [r for it in items for r in it.calibration]
    start = time.perf_counter()
    found = score(model, [it.request for it in items] + cal, batch_size, use_cache,
                  desc=f"{run.spec.name} {shots}-shot" if progress else None)
    seconds = time.perf_counter() - start
    per = len(run.spec.content_free)
    calibration = [found[len(items) + i * per: len(items) + (i + 1) * per] for i in range(len(items))]
    result = metrics(run.spec.kind, items, found[: len(items)], calibration)
    result.update(examples=len(items), demonstrations=sum(it.demonstrations for it in items) / len(items),
                  shortened=sum(it.demonstrations < shots or it.cut for it in items), cut=sum(it.cut for it in items),
                  seconds=seconds, seconds_per_1000=1000 * seconds / len(items))
    return result


def _note(text: str) -> None:
    print(f"minilm: note: {text}", file=sys.stderr, flush=True)


def run_tasks(path: str | Path, specs: list[TaskSpec], shots: list[int], seed: int = 1234, limit: int | None = None,
              device: str = "cpu", batch_size: int = 32, use_cache: bool = True, progress: bool = True) -> list[Path]:
    """Every task at every shot count: a table on stdout, RESULTS_PREFIX + task + .json in the model's folder
    and, with several shot counts, the plot of accuracy against shots. Returns the files written."""
    model, tok = load_language_model(path, device)
    folder, context, written = Path(path), window(model), []
    runs = [TaskRun(spec, tok, context, limit) for spec in specs]  # every task read and checked before any scoring
    for spec, run in zip(specs, runs):
        if run.dropped:
            _note(f"task {spec.name}: dropped {sum(run.dropped.values())} characters this model's vocabulary lacks "
                  f"({''.join(sorted(run.dropped))!r})")
        results = {}
        for k in shots:
            results[k] = r = evaluate_task(model, run, k, seed, batch_size, use_cache, progress)
            if r["shortened"]:
                lost = f"lost their earliest demonstrations ({r['demonstrations']:.1f} of {k} kept on average)" \
                    if k else "were cut from the left"
                _note(f"task {spec.name}, {k}-shot: {r['shortened']} of {r['examples']} prompts were longer than the "
                      f"model's {context}-token context and {lost}"
                      + (f"; {r['cut']} examples were themselves cut from the left" if r["cut"] and k else ""))
        print(table(spec, results, seed, use_cache), flush=True)
        record = {"task": spec.name, "kind": spec.kind, "model": str(path), "seed": seed, "limit": limit,
                  "cache": use_cache, "shots": {str(k): v for k, v in results.items()}}
        written.append(_write(folder / f"{RESULTS_PREFIX}{spec.name}.json", record))
    if len(shots) > 1:
        written.append(plot(folder))
    return written


def table(spec: TaskSpec, results: dict[int, dict[str, Any]], seed: int, use_cache: bool) -> str:
    names = [m for m in ("acc", "acc_norm", "calibrated", "perplexity") if m in next(iter(results.values()))]
    n = next(iter(results.values()))["examples"]
    lines = [f"{spec.name} ({spec.kind}, {n} examples, seed {seed}{'' if use_cache else ', no cache'})",
             f"{'shots':>5}" + "".join(f"{m:>12}" for m in names) + f"{'s/1000':>10}"]
    for k, r in results.items():
        lines.append(f"{k:>5}" + "".join(f"{r[m]:>12.4f}" if r[m] < 1e5 else f"{r[m]:>12.3g}" for m in names)
                     + f"{r['seconds_per_1000']:>10.1f}")
    return "\n".join(lines)


def _write(path: Path, record: dict) -> Path:
    try:
        runfiles.write_json(path, record)
    except OSError as e:
        raise CheckpointError(f"cannot write {str(path)!r} ({e.strerror or e}): make the model's folder writable")
    return path


def plot(folder: Path) -> Path:
    """Accuracy against the number of demonstrations (like GPT-3's figures): one line per task whose results in
    `folder` hold several shot counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ticks: set[int] = set()
    for path in sorted(folder.glob(f"{RESULTS_PREFIX}*.json")):
        record = read_json(path)
        shots = record.get("shots", {})
        points = sorted((int(k), v["acc"]) for k, v in shots.items())
        if len(points) > 1:
            n = next(iter(shots.values())).get("examples")
            ax.plot([k for k, _ in points], [100 * a for _, a in points], "o-",
                    label=f"{record.get('task', path.stem)} ({n} examples)")
            ticks.update(k for k, _ in points)
    ax.set_xscale("symlog", linthresh=1)  # 0 shots on the same axis as 1, 4, 16
    ax.set_xticks(sorted(ticks), [str(k) for k in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("demonstrations in the prompt (K)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"in-context learning: {folder.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _out = folder / PLOT_FILE
    try:
        fig.savefig(_out)
    except OSError as e:
        raise CheckpointError(f"cannot write {str(_out)!r} ({e.strerror or e}): make the model's folder writable")
    finally:
        plt.close(fig)
    return _out
