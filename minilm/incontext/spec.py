"""A zero- or few-shot task as data: one small YAML file, read into a TaskSpec and checked before any work.

configs/incontext/ ships SST-2, RT-polarity, TREC-6, MRPC and a cloze cut from the held-out novels; `--task NAME`
reads configs/incontext/NAME.yaml, `--task PATH.yaml` a file of one's own, in the same way. Relative paths in a
task file are read from the folder the file is in, so a task works from any directory.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

from minilm.config import build_section, check_field, read_yaml
from minilm.errors import ConfigError, UsageError

TASKS_DIR = Path(__file__).resolve().parents[2] / "configs" / "incontext"
KINDS = ("choice", "cloze")


@dataclass
class TaskSpec:
    """One task: where its examples are, how one example becomes a prompt, and what continues it."""

    name: str = ""  # in the table and the output file names (default: the YAML file's name)
    kind: str = "choice"  # choice: options scored by likelihood; cloze: a passage's last word predicted
    description: str = ""  # before the demonstrations (GPT-3's natural-language task description)
    test_files: list[str] = field(default_factory=list)  # the examples scored
    train_files: list[str] = field(default_factory=list)  # demonstrations are drawn from these
    template: str = ""  # one example's prompt; {column} names a column: "Review: {sentence}\nSentiment:"
    label_column: str = "label"  # choice: the column whose value names the right option
    options: dict[str, str] = field(default_factory=dict)  # choice: label value -> its option ("0": Negative)
    answer_column: str = "answer"  # cloze from a table: the column holding the word to predict
    target_delimiter: str = " "  # between a prompt and its answer
    example_delimiter: str = "\n\n"  # between the description, each demonstration and the example
    # choice: inputs with no content, each put in every column of the template; the options' probabilities after
    # them are the bias calibration divides out (Zhao et al. 2021 average N/A, [MASK] and the empty string)
    content_free: list[str] = field(default_factory=list)
    context_words: int = 50  # cloze from text files: at least this many words before the word to predict

    def validate(self) -> None:
        check_field(self.kind in KINDS, "kind", f"one of {', '.join(KINDS)}", self.kind)
        check_field(bool(self.test_files), "test_files", "the files of the examples to score", self.test_files)
        check_field(bool(self.template.strip()), "template", "one example's prompt with its {column} fields",
                    self.template)
        check_field(self.context_words >= 1, "context_words", "at least 1", self.context_words)
        for name in self.columns():
            check_field(bool(name) and not any(c in name for c in ".[]!:"), "template",
                        "plain {column} fields (no attributes, indices or format specs)", self.template)
        if self.kind == "choice":
            check_field(bool(self.options), "options", "label value -> option text for a choice task",
                        self.options)
            check_field(all(o.strip() for o in self.options.values()), "options", "non-empty option texts",
                        self.options)
        elif self.content_free:
            raise ConfigError("content_free calibrates the options of a choice task; a cloze has none: drop it")

    def columns(self) -> list[str]:
        """The columns the template names, in order."""
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as e:  # an unmatched brace
            raise ConfigError(f"template={self.template!r} is not a valid template ({e}): write {{column}} for a "
                              "column and {{ or }} for a brace") from e
        return list(dict.fromkeys(names))


def shipped_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task(name: str) -> TaskSpec:
    """The task `name` (a shipped one) or the task file `name` (.yaml/.yml), its paths made absolute."""
    path = Path(name)
    if path.suffix.lower() not in (".yaml", ".yml"):
        path = TASKS_DIR / f"{name}.yaml"
        if not path.is_file():
            raise UsageError(f"no task {name!r}: give one of {', '.join(shipped_tasks()) or '(none shipped)'}, or "
                             "the path of a task YAML file")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"task file {str(path)!r} must hold a mapping (kind:, template:, test_files:, ...)")
    spec = build_section(path.stem, TaskSpec, raw)
    try:
        spec.validate()
    except ConfigError as e:
        raise ConfigError(f"task file {str(path)!r}: {e}") from e
    here = path.resolve().parent
    spec.name = spec.name or path.stem
    spec.test_files = [str(here / Path(f).expanduser()) for f in spec.test_files]
    spec.train_files = [str(here / Path(f).expanduser()) for f in spec.train_files]
    return spec
