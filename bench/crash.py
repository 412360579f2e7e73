"""`python -m bench.crash`: kill training with SIGKILL at random moments, resume, and compare with a run never killed.

Each trial starts `minilm train` (a tiny character GPT with dropout, warmup and cosine decay, a checkpoint
every few steps), waits a random time, and kills it with SIGKILL: no handler runs, so this is what a
preempted job or an out-of-memory kill does. After each kill the run directory must still load (weights and
training state), and the next `train.resume=true` goes on from the last checkpoint. When the run finishes,
the loss logged at every step and the final weights must equal, bit for bit, those of a run never killed.
Kills often land inside a checkpoint save (one every `--save-every` steps); the report counts them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "tinyshakespeare.txt"


def train_command(data: Path, out_dir: Path, steps: int, save_every: int, *extra: str) -> list[str]:
    """A tiny, fast, fully seeded character GPT (dropout on, so the RNG state matters for resume); `extra` may make
    it another model.arch (then without the Transformer's n_head)."""
    heads = [] if any(e.startswith("model.arch=") for e in extra) else ["model.n_head=2"]
    return [
        sys.executable, "-m", "minilm.cli", "train", str(ROOT / "configs" / "gpt-char-tiny.yaml"),
        f"data.train_files={data}", f"train.out_dir={out_dir}", "model.n_layer=2", *heads,
        "model.n_embd=64", "model.block_size=32", "model.dropout=0.1", "train.batch_size=16",
        f"train.max_steps={steps}", "train.warmup_steps=5", "train.lr=5e-3", "train.min_lr=5e-4",
        f"train.eval_interval={save_every}", "train.eval_batches=2", "log.log_interval=1", *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def run(cmd: list[str], timeout: float = 300) -> None:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[3:6])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def step_losses(run_dir: Path) -> dict[int, float]:
    """The training loss logged at each step (the last record of a step wins)."""
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if r.get("split") == "train":
            losses[r["step"]] = r["loss"]
    return losses


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return max(step_losses(run_dir), default=0) if path.is_file() else 0


def mid_save(run_dir: Path) -> bool:
    """Did the kill interrupt a checkpoint? (its temporary files are still there)"""
    return any((run_dir / name).exists() for name in ("state.tmp", "state.old", ".model.safetensors.tmp"))


def check_loadable(run_dir: Path) -> int:
    """The weights and the newest complete training state load; returns that state's step."""
    from safetensors.torch import load_file

    from minilm.run import Progress, RunDir, load_run

    load_run(run_dir)
    state = RunDir(run_dir).state_dir()
    load_file(str(state / "model.safetensors"))
    return Progress.read(state).step


@dataclass
class Report:
    kills: list[int] = field(default_factory=list)  # the last step logged before each kill
    mid_save: int = 0
    steps_equal: bool = False
    weights_equal: bool = False

    def ok(self) -> bool:
        return self.steps_equal and self.weights_equal


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def kill_and_resume(workdir: Path, trials: int, steps: int = 60, save_every: int = 3, seed: int = 0,
                    data: Path = DATA, reference: Path | None = None, extra: tuple[str, ...] = ()) -> Report:
    """Kill one run `trials` times at random moments, resuming after each, then compare with `reference`
    (trained here without interruption if not given). `extra`: more config overrides for every run."""
    rng = random.Random(seed)
    if reference is None:
        reference = workdir / "reference"
        run(train_command(data, reference, steps, save_every, *extra))
    target, report = workdir / "killed", Report()
    for trial in range(trials):
        resume = ["train.resume=true"] if trial else []
        proc = subprocess.Popen(train_command(data, target, steps, save_every, *extra, *resume), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = last_step(target)
        kill_at = rng.randint(start + save_every + 1, start + save_every + 8)  # past a checkpoint, so resume has one
        deadline = time.monotonic() + 120
        while proc.poll() is None and last_step(target) < kill_at and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))  # land anywhere in the step: forward, backward, or a save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        report.kills.append(last_step(target))
        report.mid_save += mid_save(target)
        check_loadable(target)
    run(train_command(data, target, steps, save_every, *extra, "train.resume=true"))
    ref, got = step_losses(reference), step_losses(target)
    report.steps_equal = sorted(got) == sorted(ref) == list(range(1, steps + 1)) and all(got[s] == ref[s] for s in ref)
    report.weights_equal = same_weights(reference, target)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.crash", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10, help="kills per run (default 10)")
    p.add_argument("--runs", type=int, default=3, help="independent killed runs, each with its own random kills")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--save-every", type=int, default=3, help="steps between checkpoints")
    p.add_argument("--streaming", action="store_true", help="stream the text (data.streaming=true) instead of "
                   "reading prepared shards")
    args = p.parse_args(argv)
    extra = ("data.streaming=true", "data.val_tokens=20000") if args.streaming else ()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        reference = workdir / "reference"
        run(train_command(DATA, reference, args.steps, args.save_every, *extra))
        ok = True
        for r in range(args.runs):
            (workdir / f"run{r}").mkdir()
            report = kill_and_resume(workdir / f"run{r}", args.trials, args.steps, args.save_every, seed=r,
                                     reference=reference, extra=extra)
            ok &= report.ok()
            print(f"run {r}: {len(report.kills)} SIGKILLs after steps {report.kills} ({report.mid_save} inside a "
                  f"checkpoint save); every step's loss equal: {report.steps_equal}; final weights equal: "
                  f"{report.weights_equal}", flush=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
