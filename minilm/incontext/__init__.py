"""Zero- and few-shot evaluation of causal language models (GPT-3's in-context learning): `minilm eval RUN --task`.

    spec.py      a task as data: the YAML file (configs/incontext/), TaskSpec, load_task
    cloze.py     the LAMBADA-style cloze cut from novels, and how its passages are chosen
    prompts.py   rows -> prompts: templates, demonstrations drawn with the seed, left truncation to the context
    scoring.py   continuations' log-probabilities through any family's Decoder, the prompt read once (the cache)
    evaluate.py  the metrics (acc, acc_norm, calibrated; cloze accuracy and perplexity), the table, JSON, plot
"""

from minilm.incontext.evaluate import load_language_model, run_tasks
from minilm.incontext.spec import TaskSpec, load_task

__all__ = ["TaskSpec", "load_language_model", "load_task", "run_tasks"]
