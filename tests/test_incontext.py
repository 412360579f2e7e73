"""Zero/few-shot evaluation (`minilm eval RUN --task`): option log-probabilities against transformers' GPT-2,
the shared-prompt cache against scoring each option alone, demonstrations, left truncation, the cloze's passages,
a recurrent LM through the same code, and a task file naming a missing column."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import randomize, write_run

from minilm import cli, hf
from minilm.config import config_from_dict
from minilm.errors import DataError
from minilm.incontext import load_language_model, load_task, run_tasks
from minilm.incontext.cloze import cloze_passages
from minilm.incontext.evaluate import TaskRun, evaluate_task, metrics
from minilm.incontext.prompts import fit, render
from minilm.incontext.scoring import Request, Scored, score
from minilm.models import task_model
from minilm.tokenizer import train_bpe, train_char

POSITIVE = ["a warm , funny film", "great acting and a clever plot", "i loved every minute", "a joy to watch",
            "sharp and moving", "the best film of the year", "wonderful music", "a delight"]
NEGATIVE = ["dull and far too long", "the plot makes no sense", "i was bored", "a waste of time", "flat acting",
            "an ugly mess", "tedious", "nothing works here"]
TEMPLATE = "Review: {text}\nSentiment:"


def _task(tmp_path: Path, template: str = TEMPLATE, same_split: bool = False, **extra) -> Path:
    """A small sentiment task of our own: a YAML file beside its two tables (relative paths)."""
    rows = [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]
    random.Random(0).shuffle(rows)
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows[4:]))
    (tmp_path / "test.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows[:6]))
    spec = {"kind": "choice", "test_files": ["test.tsv"], "train_files": ["test.tsv" if same_split else "train.tsv"],
            "template": template, "options": {"pos": "positive", "neg": "negative"},
            "content_free": ["N/A", ""], **extra}
    path = tmp_path / "mine.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def _tokenizer():
    return train_char(POSITIVE + NEGATIVE + [TEMPLATE, " positive negative N/A Is the review?"])


def _run(tmp_path: Path, name: str = "run", **model) -> Path:
    tok = _tokenizer()
    base = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 48}  # prompts longer than 48 get cut
    cfg = config_from_dict({"model": {**base, **model, "vocab_size": tok.get_vocab_size()},
                            "data": {"train_files": ["unused.txt"]}})
    torch.manual_seed(0)
    net = task_model(cfg.model, "causal_lm")
    randomize(net)
    return write_run(tmp_path / name, cfg, net, tok)


def test_option_logprobs_equal_transformers_gpt2(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf.export_hf(_run(tmp_path), tmp_path / "hf")
    model, tok = load_language_model(tmp_path / "hf")  # the Hugging Face folder in place of a run
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    run = TaskRun(load_task(str(_task(tmp_path))), tok, 48, None)
    for shots in (0, 2):
        items = run.items(shots, seed=3)
        ours = evaluate_task(model, run, shots, seed=3, batch_size=4)
        requests = [it.request for it in items]
        ref = []
        for r in requests + [c for it in items for c in it.calibration]:
            row = []
            for cont in r.continuations:
                ids = torch.tensor([r.prompt + cont[:-1]])
                with torch.no_grad():
                    logp = torch.log_softmax(theirs(ids).logits[0, len(r.prompt) - 1:].double(), -1)
                row.append(Scored(float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum()), False))
            ref.append(row)
        got = score(model, requests, batch_size=4)
        for a, b in zip(got, ref[: len(items)]):
            for x, y in zip(a, b):
                assert abs(x.logprob - y.logprob) < 1e-4
        calibration = [ref[len(items) + 2 * i: len(items) + 2 * i + 2] for i in range(len(items))]
        expected = metrics("choice", items, ref[: len(items)], calibration)
        assert {k: ours[k] for k in expected} == expected  # acc, acc_norm and calibrated identical


@pytest.mark.parametrize("arch", ["transformer", "lstm", "sru"])
def test_the_shared_prompt_cache_equals_scoring_each_option_alone(arch: str) -> None:
    extra = {"n_head": 2, "block_size": 24} if arch == "transformer" else {}
    cfg = config_from_dict({"model": {"arch": arch, "vocab_size": 19, "n_layer": 2, "n_embd": 16, **extra},
                            "data": {"train_files": ["unused.txt"]}}).model
    torch.manual_seed(0)
    model = task_model(cfg, "causal_lm").eval()
    rng = random.Random(0)
    requests = []
    for _ in range(11):  # prompts of every length up to the window, options of one to five tokens
        conts = tuple(tuple(rng.randrange(19) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(2, 4)))
        longest = 24 - max(map(len, conts)) + 1
        requests.append(Request(tuple(rng.randrange(19) for _ in range(rng.randint(1, longest))), conts))
    cached, alone = score(model, requests, batch_size=4), score(model, requests, use_cache=False)
    for a, b in zip(cached, alone):
        assert [s.greedy for s in a] == [s.greedy for s in b]
        for x, y in zip(a, b):
            assert abs(x.logprob - y.logprob) < 1e-5
    # and one prompt at a time, each option from scratch
    single = [score(model, [Request(r.prompt, (c,))], use_cache=False)[0][0] for r in requests for c in r.continuations]
    flat = [s for row in cached for s in row]
    assert max(abs(x.logprob - y.logprob) for x, y in zip(flat, single)) < 1e-5


def test_demonstrations_never_include_the_example_and_repeat_with_the_seed(tmp_path: Path) -> None:
    spec = load_task(str(_task(tmp_path, same_split=True)))  # demonstrations from the very rows scored
    run = TaskRun(spec, _tokenizer(), None, None)
    first, again, other = (run.items(3, seed) for seed in (1, 1, 2))
    assert [it.request for it in first] == [it.request for it in again]
    assert [it.request for it in first] != [it.request for it in other]
    tok = _tokenizer()
    for row, it in zip(run.test, first):
        text = tok.decode(list(it.request.prompt))
        blocks = text.split(spec.example_delimiter)
        assert len(blocks) == 4 and blocks[-1] == render(spec, row)
        assert all(not b.startswith(render(spec, row) + " ") for b in blocks[:-1])  # never the example itself


def test_zero_shot_prompts_hold_no_demonstration(tmp_path: Path) -> None:
    spec = load_task(str(_task(tmp_path, description="Is the review positive or negative?")))
    run = TaskRun(spec, _tokenizer(), None, None)
    tok = _tokenizer()
    for row, it in zip(run.test, run.items(0, seed=0)):
        assert it.demonstrations == 0
        assert tok.decode(list(it.request.prompt)) == f"{spec.description}\n\n{render(spec, row)}"


def test_long_prompts_lose_their_earliest_demonstrations_first(tmp_path: Path) -> None:
    spec = load_task(str(_task(tmp_path)))
    tok = _tokenizer()
    demos = ["Review: a joy to watch\nSentiment: positive", "Review: tedious\nSentiment: negative"]
    query = "Review: i was bored\nSentiment:"
    whole = fit(spec, tok, demos, query, None)
    assert whole.demonstrations == 2
    one = fit(spec, tok, demos, query, len(whole.ids) - 1)
    assert one.demonstrations == 1 and tok.decode(one.ids) == demos[1] + "\n\n" + query  # the earliest went first
    cut = fit(spec, tok, demos, query, 10)
    assert cut.cut and cut.demonstrations == 0 and tok.decode(cut.ids) == query[-10:]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_fitting_keeps_the_most_demonstrations_that_fit(tmp_path: Path, kind: str) -> None:
    """The quick fit (parts counted alone, then checked whole) keeps exactly what dropping the earliest
    demonstration one at a time would."""
    spec = load_task(str(_task(tmp_path, description="Is the review positive or negative?")))
    texts = POSITIVE + NEGATIVE + [TEMPLATE, spec.description]
    tok = _tokenizer() if kind == "char" else train_bpe(texts, 300)
    demos = [f"Review: {t}\nSentiment: {'positive' if t in POSITIVE else 'negative'}" for t in texts[3:9]]
    query = "Review: i was bored\nSentiment:"

    def naive(budget: int):
        kept, description = list(demos), spec.description
        while True:
            ids = tok.encode("\n\n".join(([description] if description else []) + kept + [query])).ids
            if len(ids) <= budget:
                return ids, len(kept)
            if kept:
                kept.pop(0)
            elif description:
                description = ""
            else:
                return ids[-budget:], 0

    for budget in range(4, 200, 7):
        got = fit(spec, tok, demos, query, budget)
        assert (got.ids, got.demonstrations) == naive(budget) and len(got.ids) <= budget


def test_a_recurrent_lm_scores_through_the_same_code(tmp_path: Path, capsys) -> None:
    tok = _tokenizer()
    cfg = config_from_dict({"model": {"arch": "lstm", "n_layer": 1, "n_embd": 16, "vocab_size": tok.get_vocab_size()},
                            "data": {"train_files": ["unused.txt"]}})
    torch.manual_seed(0)
    run = write_run(tmp_path / "lstm", cfg, task_model(cfg.model, "causal_lm"), tok)
    written = run_tasks(run, [load_task(str(_task(tmp_path)))], [0, 2], seed=0, progress=False)
    record = json.loads((run / "incontext-mine.json").read_text())
    assert set(record["shots"]) == {"0", "2"} and written[-1] == run / "incontext.png" and written[-1].is_file()
    for r in record["shots"].values():
        assert r["examples"] == 6 and 0 <= r["acc"] <= 1 and 0 <= r["calibrated"] <= 1 and r["shortened"] == 0
    assert "mine (choice, 6 examples, seed 0)" in capsys.readouterr().out


def test_the_command_writes_a_table_per_shot_count(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path)
    assert cli.main(["eval", str(run), "--task", str(_task(tmp_path)), "--shots", "0,3", "--limit", "4"]) == 0
    out = capsys.readouterr()
    assert "shots" in out.out and "calibrated" in out.out and "prompts were longer than" in out.err
    record = json.loads((run / "incontext-mine.json").read_text())
    assert record["limit"] == 4 and record["shots"]["3"]["examples"] == 4 and (run / "incontext.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["--shots", "1,x"], "--shots '1,x' must be counts"),
    (["--data", "x.tsv"], "--data does not apply"),
    (["--task", "no-such-task"], "no task 'no-such-task'"),
])
def test_bad_arguments_are_refused_in_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    task = ["--task", str(_task(tmp_path))] if "--task" not in args else []
    assert cli.main(["eval", str(tmp_path), *task, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_template_naming_a_missing_column_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path)
    task = _task(tmp_path, template="Review: {review}\nSentiment:")
    assert cli.main(["eval", str(run), "--task", str(task)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "template names column 'review'" in err and "columns: text, label" in err


def test_cloze_passages_end_with_a_word_the_passage_already_named() -> None:
    text = ("The dog ran home. " * 3 + "Then it slept by the fire until morning came. It woke, and ran to the dog.\n\n"
            "Short one. No match here at all today friends.")
    rows = cloze_passages([text], context_words=20)  # whole sentences back to 20 words; "came" is not named before
    assert rows == [{"passage": "The dog ran home. The dog ran home. Then it slept by the fire until morning came. "
                                "It woke, and ran to the", "answer": "dog"}]


def test_the_shipped_tasks_name_columns_their_files_have() -> None:
    from minilm.incontext.spec import shipped_tasks

    assert shipped_tasks() == ["cloze", "mrpc", "rt_polarity", "sst2", "trec"]
    for name in shipped_tasks():
        spec = load_task(name)
        for path in spec.test_files + spec.train_files:
            if spec.kind == "cloze":
                assert Path(path).is_dir()
                continue
            header = Path(path).read_text(encoding="utf-8-sig").split("\n", 1)[0].split("\t")
            assert set(spec.columns()) | {spec.label_column} <= set(header), (name, path)


def test_a_cloze_cut_from_text_files_names_only_its_passage(tmp_path: Path) -> None:
    (tmp_path / "novel.txt").write_text("The dog ran home. " * 20 + "It came back to the dog.\n", encoding="utf-8")
    spec = {"kind": "cloze", "test_files": ["novel.txt"], "template": "{text}", "context_words": 10}
    (tmp_path / "c.yaml").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="template names column 'text', but passages cut from text files"):
        TaskRun(load_task(str(tmp_path / "c.yaml")), _tokenizer(), None, None)
    (tmp_path / "c.yaml").write_text(json.dumps({**spec, "template": "{passage}", "answer_column": "word"}))
    run = TaskRun(load_task(str(tmp_path / "c.yaml")), _tokenizer(), None, None)
    assert {r["word"] for r in run.test} == {"home", "dog"}
