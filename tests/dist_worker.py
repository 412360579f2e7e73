"""Run by test_distributed.py under `accelerate launch`: train(), recording what each process did.

    python dist_worker.py RECORD_DIR [--exit-after-save STEP] key=value ...

Each process writes RECORD_DIR/rank{R}.json: the (epoch, index) of every training example it loaded, which
run-directory writers it called, whether its progress bar was shown, and the checksums of its parameters at each
checkpoint; and RECORD_DIR/rank{R}_step{S}.safetensors with its parameters there. With --exit-after-save,
every process exits abruptly (os._exit) right after the checkpoint of that step, like a killed job.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

from safetensors.torch import save_file  # noqa: E402

import minilm.run as run_mod  # noqa: E402
import minilm.runfiles as runfiles  # noqa: E402
import minilm.report as report  # noqa: E402
import minilm.train as train_mod  # noqa: E402
from minilm.config import load_config  # noqa: E402
from minilm.data.lm import PackedBlocks  # noqa: E402


def main() -> None:
    record_dir, args = Path(sys.argv[1]), sys.argv[2:]
    exit_after = None
    if args and args[0] == "--exit-after-save":
        exit_after, args = int(args[1]), args[2:]
    rank = int(os.environ.get("RANK", "0"))  # set by accelerate launch (a PartialState made here would be too early)
    seen: list[tuple[int, int]] = []
    writes: list[str] = []
    bars: list[bool] = []

    def dump() -> None:
        path = record_dir / f"rank{rank}.json"
        path.write_text(json.dumps({"seen": seen, "writes": writes, "bar_shown": bars}))

    real_getitem = PackedBlocks.__getitem__

    def getitem(self, i):
        if self.shuffle:  # the training set (validation is not shuffled)
            seen.append((self.epoch, int(i)))
        return real_getitem(self, i)

    PackedBlocks.__getitem__ = getitem

    def recording(name, fn):
        def wrapper(*a, **k):
            writes.append(name)
            return fn(*a, **k)
        return wrapper

    runfiles.save_weights = recording("save_weights", runfiles.save_weights)
    run_mod.swap_in_state = recording("swap_in_state", run_mod.swap_in_state)
    runfiles.write_text = recording("write_text", runfiles.write_text)
    report.MetricsLog.write = _only_if_enabled(report.MetricsLog.write, writes)
    real_tqdm = train_mod.tqdm

    def tqdm(*a, **k):
        bars.append(not k.get("disable", False))
        return real_tqdm(*a, **k)

    tqdm.write = real_tqdm.write
    train_mod.tqdm = tqdm
    real_save = run_mod.RunDir.save

    def save(self, accelerator, model, progress, *a, **k):
        real_save(self, accelerator, model, progress, *a, **k)
        state = {n: p.detach().cpu().contiguous() for n, p in accelerator.unwrap_model(model).named_parameters()}
        save_file(state, str(record_dir / f"rank{rank}_step{progress.step}.safetensors"))
        if progress.step == exit_after:
            dump()
            accelerator.wait_for_everyone()
            os._exit(0)

    run_mod.RunDir.save = save
    train_mod.train(load_config(None, args))
    dump()


def _only_if_enabled(write, writes):
    def wrapper(self, record):
        if self.enabled:
            writes.append("metrics")
        return write(self, record)
    return wrapper


if __name__ == "__main__":
    main()
