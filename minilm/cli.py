"""The `minilm` command: each subcommand parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path

from minilm.decoding_args import add_decoding_options, check_beams, check_decoding, check_rows, finite
from minilm.errors import MinilmError, Stopped, UsageError


def cmd_train(args: argparse.Namespace) -> int:
    from minilm.train import train

    datasets_quiet()
    train(_train_config(args.config, args.overrides))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from minilm.train import train

    datasets_quiet()
    train(_train_config(args.config, ["train.task=classify", *args.overrides]))
    return 0


def _train_config(path: str, overrides: list[str]):
    """The config to train. Resuming from a run's own config.json continues the run directory that file sits in:
    a copied run directory's config.json still names the original's out_dir, which must never be written to."""
    import dataclasses

    from minilm.config import load_config
    from minilm.runfiles import CONFIG_FILE

    cfg = load_config(path, overrides)
    here, out = Path(path).parent, Path(cfg.train.out_dir)
    if Path(path).name != CONFIG_FILE or out.resolve() == here.resolve():
        return cfg
    if not cfg.train.resume:
        if (here / "state").is_dir() and out.is_dir() and any(out.iterdir()):  # else a new run from a run's config
            raise UsageError(f"{path} belongs to the run in {str(here)!r}, but its train.out_dir names {str(out)!r}, "
                             f"which holds a run: pass train.resume=true to continue {str(here)!r}, or give "
                             "train.out_dir=NEW for a new run")
        return cfg
    if any(o.split("=", 1)[0].strip() == "train.out_dir" for o in overrides):
        raise UsageError(f"{path} is the config.json of the run in {str(here)!r}, but train.out_dir={cfg.train.out_dir} "
                         f"was given: resume {str(here)!r} without train.out_dir, or copy the config elsewhere first")
    print(f"minilm: note: resuming the run in {str(here)!r}, where {CONFIG_FILE} is (its train.out_dir names "
          f"{cfg.train.out_dir!r}, the run it was copied from)", file=sys.stderr)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(here)))


def cmd_prepare(args: argparse.Namespace) -> int:
    from minilm.config import load_config
    from minilm.tasks import get_task

    cfg = load_config(args.config, args.overrides)
    task = get_task(cfg.train.task)
    task.check(cfg)
    if not task.prepared:
        raise UsageError(f"train.task={task.name} reads its data directly (there is nothing to prepare): "
                         "run `minilm train` on this config")
    if cfg.data.streaming:
        raise UsageError("data.streaming=true reads the text while training (there is nothing to prepare): run "
                         "`minilm train` on this config, or set data.streaming=false to prepare it")
    datasets_quiet()
    source = None
    if cfg.model.init_from:  # its tokenizer makes the ids
        from minilm.hf import load_pretrained

        source = load_pretrained(cfg.model.init_from)
        task.check_source(cfg, source)
    task.prepare(cfg, None, source)  # exactly what training does before its first step
    return 0


def datasets_quiet() -> None:
    import datasets

    datasets.disable_progress_bars()


# the command that serves each task's runs
_SERVES = {"causal_lm": "sample", "masked_lm": "fill-mask", "classify": "classify", "seq2seq": "translate",
           "tag": "tag"}


def _load(run_dir: str, device: str, task: str, what: str, fix: str = ""):
    """A run's config, model and tokenizer, refused (naming the command that serves it, and `fix`) unless it was
    trained for `task` (`what`)."""
    from minilm.run import load_run

    cfg, model, tok = load_run(run_dir, device)
    if cfg.train.task != task:
        hint = f"use `minilm {_SERVES[cfg.train.task]}` for it" if cfg.train.task in _SERVES else "train one"
        raise UsageError(f"{run_dir!r} is a train.task={cfg.train.task} run, not {what}: {hint}{fix}")
    return cfg, model, tok


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    import torch
    from accelerate import Accelerator

    from minilm.data.batch import ByLength
    from minilm.data.seq2seq import References, end_id
    from minilm.evaluation import decoded_metrics, evaluate
    from minilm.metrics import format_labels
    from minilm.run import load_run
    from minilm.tasks import get_task

    if args.task is not None:
        return _eval_incontext(args)
    if args.data is None:
        raise UsageError("give --data FILE to score a run on a file, or --task NAME for zero/few-shot evaluation")
    given = [f for f, v in (("--shots", args.shots), ("--seed", args.seed), ("--limit", args.limit),
                            ("--no-cache", args.no_cache or None)) if v is not None]
    if given:
        raise UsageError(f"{given[0]} applies to zero/few-shot evaluation (--task NAME): drop it or give --task")
    cfg, model, tok = load_run(args.run_dir, args.device)
    task = get_task(cfg.train.task)
    if not task.encoder_decoder and (args.beams is not None or args.length_penalty is not None):
        raise UsageError(f"--beams and --length-penalty apply to seq2seq runs (scored on what they decode); "
                         f"{args.run_dir!r} is a train.task={cfg.train.task} run: drop them")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be at least 1")
    if task.encoder_decoder:
        check_beams(args, cfg)
    datasets_quiet()
    data = dataclasses.replace(cfg.data, text_column=args.text_column or cfg.data.text_column)
    cl = dataclasses.replace(cfg.classify, text_pair_column=args.pair_column or cfg.classify.text_pair_column,
                             label_column=args.label_column or cfg.classify.label_column)
    cfg = dataclasses.replace(cfg, data=data, classify=cl)
    examples, collate = task.eval_data(cfg, tok, [args.data])
    check_rows("--batch-size", max(1, min(args.batch_size, len(examples))), cfg, args.device)
    # examples of varying length longest first: each batch pads to lengths close to its own (no metric depends
    # on the order); a language model's blocks are all of one length
    ordered = examples if task.prepared else ByLength(examples)
    loader = torch.utils.data.DataLoader(ordered, batch_size=args.batch_size, collate_fn=collate)
    accelerator = Accelerator(cpu=args.device == "cpu")
    result = evaluate(model, loader, accelerator, perplexity=task.perplexity, spans=task.spans(cfg))
    if task.encoder_decoder:  # scored on what it decodes, against all the targets of each source
        refs = References.of(examples, end_id(tok))
        beams = args.beams or 1
        args.length_penalty = 1.0 if args.length_penalty is None else args.length_penalty
        result.metrics.update(decoded_metrics(model, refs, accelerator, beams=beams,
                                              length_penalty=args.length_penalty, batch_size=args.batch_size,
                                              progress=True))
        print(f"{len(refs.sources)} distinct sources decoded ({'greedy' if beams == 1 else f'beam {beams}'})")
    print(f"{len(examples)} examples from {args.data}")
    for k, v in result.metrics.items():
        print(f"{k.removeprefix('val_'):>10}: {v:.4f}")
    if result.confusion is not None:
        print(format_labels(result.confusion, task.labels(cfg)))
    return 0


def _eval_incontext(args: argparse.Namespace) -> int:
    """`minilm eval RUN --task NAME[,NAME] [--shots K[,K]] [--seed S] [--limit N]`: zero/few-shot evaluation."""
    from minilm.incontext import load_task, run_tasks

    given = [f for f, v in (("--data", args.data), ("--text-column", args.text_column), ("--pair-column",
             args.pair_column), ("--label-column", args.label_column), ("--beams", args.beams),
             ("--length-penalty", args.length_penalty)) if v is not None]
    if given:
        raise UsageError(f"{given[0]} does not apply to zero/few-shot evaluation: a task file names its data and "
                         "columns; drop it")
    shots = _counts(args.shots or "0", "--shots")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit} must be at least 1 (or left out: every example)")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be at least 1")
    datasets_quiet()
    specs = [load_task(name) for name in args.task.split(",")]  # every task file checked before any model is read
    run_tasks(args.run_dir, specs, shots, 1234 if args.seed is None else args.seed, args.limit, args.device,
              args.batch_size, not args.no_cache)
    return 0


def _counts(text: str, flag: str) -> list[int]:
    """K[,K...] as distinct counts >= 0, in the order given."""
    try:
        counts = [int(k) for k in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} {text!r} must be counts separated by commas, such as 0,1,4,16") from None
    if any(k < 0 for k in counts) or len(set(counts)) != len(counts):
        raise UsageError(f"{flag} {text!r} must be distinct counts of at least 0, such as 0,1,4,16")
    return counts


def cmd_classify(args: argparse.Namespace) -> int:
    import torch

    from minilm.tasks.classify import collator, encode_texts

    cfg, model, tok = _load(args.run_dir, args.device, "classify", "a classifier",
                            ", or fine-tune a classifier from it with `minilm finetune`")
    datasets_quiet()
    # every line of standard input gets its line of output (a blank one for a blank line), so the two align
    lines = [args.text] if args.text is not None else [line.rstrip("\r\n") for line in sys.stdin]
    texts = [t for t in lines if t.strip()]
    if not texts:
        raise UsageError("no text to classify: pass TEXT or lines on standard input")
    pair_col = cfg.classify.text_pair_column
    if args.pair is not None and not pair_col:
        raise UsageError("this classifier reads single texts, not pairs: drop --pair")
    if args.pair is not None:
        rows = [(t, args.pair) for t in texts]
    elif pair_col:  # stdin lines hold both texts separated by a tab
        rows = [tuple(t.split("\t", 1)) for t in texts]
        if any(len(r) != 2 for r in rows):
            raise UsageError("this classifier reads sentence pairs: give --pair TEXT2 or tab-separated lines")
    else:
        rows = [(t,) for t in texts]
    encoded, collate, probs = list(encode_texts(cfg, tok, rows)), collator(cfg, tok), []
    with torch.no_grad():  # 64 texts at a time: memory stays bounded however many lines come in
        for first in range(0, len(encoded), 64):
            batch = collate(encoded[first:first + 64])
            probs += torch.softmax(model(**{k: v.to(args.device) for k, v in batch.items()}).logits.float(), -1)
    found = iter(zip(texts, probs))
    for line in lines:
        if not line.strip():
            print(flush=True)
            continue
        text, p = next(found)
        best = int(p.argmax())
        shown = "  ".join(f"{name} {float(q):.3f}" for name, q in zip(cfg.classify.labels, p))
        print(f"{cfg.classify.labels[best]}\t{shown}\t{text}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from minilm.tasks.tag import tag_words

    cfg, model, tok = _load(args.run_dir, args.device, "tag", "a tagger")
    # one sentence per line (words separated by spaces); every line gets its line of output, so the two align
    lines = [args.text] if args.text is not None else [line.rstrip("\r\n") for line in sys.stdin]
    sentences = [line.split() for line in lines if line.strip()]
    if not sentences:
        raise UsageError("no text to tag: pass TEXT or sentences on standard input, one per line")
    found = iter(zip(sentences, tag_words(model, cfg, tok, sentences, args.device)))
    for line in lines:
        if not line.strip():
            if not args.columns:  # columns already end each sentence with a blank line
                print(flush=True)
            continue
        words, labels = next(found)
        if args.columns:  # word<TAB>label lines, a blank line after the sentence: the format tagging files use
            print("\n".join(f"{w}\t{t}" for w, t in zip(words, labels)) + "\n", flush=True)
        else:
            print(" ".join(f"{w}/{t}" for w, t in zip(words, labels)), flush=True)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from minilm.generate import beam_search, generate
    from minilm.tokenizer import EOT, eot_id, unknown_chars

    cfg, model, tok = _load(args.run_dir, args.device, "causal_lm", "a GPT language model")
    check_decoding(args, cfg)
    bad = unknown_chars(tok, args.prompt)
    if bad:
        raise UsageError(f"the prompt has characters the tokenizer never saw ({''.join(bad)!r}): remove them")
    eot = eot_id(tok)
    ids = tok.encode(args.prompt, add_special_tokens=False).ids if args.prompt else []
    if not ids:
        if eot is None:
            raise UsageError("an empty prompt needs an end-of-text token, which this tokenizer lacks: give --prompt")
        ids = [eot]  # a fresh document starts after an end-of-text token
    if args.beams is not None:
        found = beam_search(model, ids, args.beams, args.max_new_tokens, eot, args.length_penalty, args.n_best,
                            use_cache=not args.no_cache)
        for h in found:  # best first, each with its length-normalized log-probability
            text = args.prompt + tok.decode(h.tokens)
            print(f"[{h.score:.4f}] {text}" if args.n_best > 1 else text, flush=True)
        return 0
    temperature = args.temperature  # 0 with --greedy
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    for s in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {s + 1} ---", flush=True)
        sys.stdout.write(args.prompt)
        idx = torch.tensor([ids], device=args.device)
        new: list[int] = []
        shown = ""
        for nxt in generate(model, idx, args.max_new_tokens, temperature, args.top_k, args.top_p, eot,
                            use_cache=not args.no_cache, generator=gen):
            if eot is not None and int(nxt[0]) == eot:  # said on stderr: stdout holds only the text
                print(f"minilm: note: the model ended the text ({EOT}) after {len(new)} of --max-new-tokens "
                      f"{args.max_new_tokens} tokens", file=sys.stderr, flush=True)
                break
            new.append(int(nxt[0]))
            text = tok.decode(new)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
                shown = text
        sys.stdout.write(tok.decode(new)[len(shown):] + "\n")
        sys.stdout.flush()
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    import torch

    from minilm.data.seq2seq import end_id, source_text
    from minilm.generate import beam_search, translate
    from minilm.tokenizer import UNK, unknown_chars

    cfg, model, tok = _load(args.run_dir, args.device, "seq2seq", "a seq2seq (encoder-decoder) run")
    check_decoding(args, cfg)
    # every line of standard input gets its line of output (a blank one for a blank line), so the two align
    lines = [args.text] if args.text is not None else [line.rstrip("\r\n") for line in sys.stdin]
    texts = [t for t in lines if t.strip()]
    if args.text is not None and not args.text.strip():
        raise UsageError("an empty source has nothing to translate: give some text")
    if not texts:
        raise UsageError("no source text: pass TEXT or one source per line on standard input")
    sources = [source_text(t, cfg.seq2seq.source_chars) for t in texts]
    bad = unknown_chars(tok, "".join(sources))
    if bad:
        raise UsageError(f"the source has characters the tokenizer never saw ({''.join(bad)!r}): remove them")
    unseen = sorted({c for t in sources for c in t.split() if tok.token_to_id(c) is None}) if cfg.seq2seq.source_chars \
        else []
    if unseen:  # said, not refused: the model was trained to read them as the unknown token
        print(f"minilm: note: the training data had no {''.join(unseen[:20])!r}: read as {UNK}", file=sys.stderr)
    ids = [tok.encode(t, add_special_tokens=False).ids for t in sources]
    block = cfg.model.block_size
    for text, x in zip(texts, ids):
        if not x:
            raise UsageError("an empty source has nothing to translate: give some text")
        if len(x) > block:
            raise UsageError(f"the source {text[:40]!r} is {len(x)} tokens, more than the {block} the encoder reads "
                             "(model.block_size): shorten or split it")
    check_rows("--batch-size", min(args.batch_size, len(ids)), cfg, args.device)
    end, steps = end_id(tok), min(args.max_new_tokens, block - 1)
    if args.beams is not None:
        found = (beam_search(model, [end], args.beams, steps, end, args.length_penalty, args.n_best,
                             use_cache=not args.no_cache, source=x) for x in ids)
        outputs = ([(h.score, tok.decode(h.tokens)) for h in hyps] for hyps in found)  # best first
    else:
        gen = torch.Generator(device=args.device).manual_seed(args.seed)
        decoded = translate(model, ids, end, batch_size=args.batch_size, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, generator=gen, use_cache=not args.no_cache,
                            max_new_tokens=steps)
        outputs = ([(None, tok.decode(out))] for out in decoded)
    for text in lines:
        if not text.strip():
            print(flush=True)
            continue
        for score, out in next(outputs):  # n-best lines: source, length-normalized log-probability, output
            print(f"{text}\t{score:.4f}\t{out}" if args.n_best > 1 else out, flush=True)
    return 0


def cmd_fill_mask(args: argparse.Namespace) -> int:
    import torch

    from minilm.tokenizer import MASK

    cfg, model, tok = _load(args.run_dir, args.device, "masked_lm", "a BERT pretraining run")
    if args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k} must be at least 1")
    enc = tok.encode(args.text)
    ids = torch.tensor([enc.ids[: cfg.model.block_size]], device=args.device)
    where = (ids[0] == tok.token_to_id(MASK)).nonzero()[:, 0].tolist()
    if not where:
        raise UsageError(f"the text has no {MASK} token: write {MASK} where a word should be predicted")
    with torch.no_grad():
        logits = model(ids, torch.tensor([enc.type_ids[: ids.size(1)]], device=args.device)).logits[0]  # (T, vocab)
    for n, pos in enumerate(where, 1):
        probs = torch.softmax(logits[pos].float(), -1)
        top = torch.topk(probs, min(args.top_k, probs.numel()))
        fillers = "  ".join(f"{tok.id_to_token(int(i))} {float(p):.3f}" for p, i in zip(top.values, top.indices))
        print(f"{MASK} {n}: {fillers}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from minilm.hf import export_hf

    export_hf(Path(args.run_dir), Path(args.out_dir))
    print(f"wrote a Hugging Face model folder to {args.out_dir}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from minilm.run import run_info

    for label, text in run_info(args.run_dir).items():
        print(f"{label + ':':<17} {text}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from minilm.config import model_config_class, presets
    from minilm.models import count_params, task_model

    if args.vocab < 0:
        raise UsageError(f"--vocab {args.vocab} is negative: give a vocabulary size (0: each family's own)")
    print(f"{'preset':<18} {'layers':>6} {'heads':>5} {'width':>5} {'block':>5} {'params':>10}  {'vocab':>6}")
    for name, values in presets().items():
        cfg = model_config_class(values["arch"])(**values)
        # GPT at GPT-2's BPE vocabulary, BERT at BERT's WordPiece one, unless --vocab says otherwise
        cfg = dataclasses.replace(cfg, vocab_size=args.vocab or (30522 if cfg.default_task() == "masked_lm" else 50257))
        with torch.device("meta"):  # count without allocating
            n = count_params(task_model(cfg, cfg.default_task()))
        print(f"{name:<18} {cfg.n_layer:>6} {getattr(cfg, 'n_head', '-'):>5} {cfg.n_embd:>5} {cfg.block_size:>5} "
              f"{n / 1e6:>9.2f}M  {cfg.vocab_size:>6,}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other error (the usage stays in --help)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"minilm: error: {message}: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="minilm", description="Pretrain, fine-tune and sample small GPT/BERT models.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    for name, func, what, example in (
            ("train", cmd_train, "train a config's train.task", "model.n_layer=4 train.max_steps=200"),
            ("prepare", cmd_prepare, "tokenize a config's pretraining text into token shards (train does it too, "
                                     "on first use)", "data.train_files=[corpus/]"),
            ("finetune", cmd_finetune, "fine-tune a classifier from a YAML config",
             "model.init_from=runs/bert-mini-gutenberg train.epochs=2")):
        c = sub.add_parser(name, help=what)
        c.add_argument("config", help="YAML config (see configs/)")
        c.add_argument("overrides", nargs="*", help=f"dotted overrides such as {example}")
        c.set_defaults(func=func)
    _add_run_commands(sub)

    pr = sub.add_parser("presets", help="list the named model presets with parameter counts")
    pr.add_argument("--vocab", type=int, default=0,
                    help="count every preset at this vocabulary (default: 50,257 for GPT, 30,522 for BERT)")
    pr.set_defaults(func=cmd_presets)
    return p


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that read a run directory."""
    ev = sub.add_parser("eval", help="score a run on a file: a classifier on labelled rows, a language model on text, "
                                     "a seq2seq run on source/target rows; or a language model (a run or a Hugging "
                                     "Face GPT-2 folder) zero/few-shot on a task (--task)")
    ev.add_argument("run_dir")
    ev.add_argument("--data", default=None, help="a labelled (or source/target) TSV/CSV/JSON(L)/parquet file, or "
                                                  "text for LM runs")
    ev.add_argument("--task", default=None, help="zero/few-shot: a task of configs/incontext/ (sst2, rt_polarity, "
                                                 "trec, mrpc, cloze) or a task YAML file; several separated by commas")
    ev.add_argument("--shots", default=None, help="with --task: demonstrations per prompt, K[,K...] (default 0)")
    ev.add_argument("--seed", type=int, default=None, help="with --task: draws the demonstrations (default 1234)")
    ev.add_argument("--limit", type=int, default=None, help="with --task: score the first N examples only")
    ev.add_argument("--no-cache", action="store_true", help="with --task: read each option's whole prompt again "
                                                            "instead of continuing from the prompt's cache (slower)")
    ev.add_argument("--text-column", default=None)
    ev.add_argument("--pair-column", default=None)
    ev.add_argument("--label-column", default=None)
    ev.add_argument("--batch-size", type=int, default=64, help="rows (with --task: prompts) scored together")
    ev.add_argument("--beams", type=int, default=None, help="seq2seq runs: decode by beam search with this many "
                                                            "beams (default 1: greedy)")
    ev.add_argument("--length-penalty", type=finite, default=None, help="seq2seq runs, with --beams (default 1)")
    ev.add_argument("--device", default="cpu")
    ev.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="what a run is and where it stands: model, tokenizer, step, metrics, resumable")
    i.add_argument("run_dir")
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("classify", help="label a text (or lines from standard input) with a classifier run")
    c.add_argument("run_dir")
    c.add_argument("text", nargs="?", default=None)
    c.add_argument("--pair", default=None, help="the second text of a sentence pair")
    c.add_argument("--device", default="cpu")
    c.set_defaults(func=cmd_classify)

    t = sub.add_parser("tag", help="label every word of a sentence (or of each line of standard input) with a "
                                   "tagger run")
    t.add_argument("run_dir")
    t.add_argument("text", nargs="?", default=None, help='words separated by spaces, e.g. "the old man the boats"')
    t.add_argument("--columns", action="store_true", help="print word<TAB>label lines, a blank line after each "
                                                          "sentence (instead of word/label pairs)")
    t.add_argument("--device", default="cpu")
    t.set_defaults(func=cmd_tag)

    _add_decoding_commands(sub)

    f = sub.add_parser("fill-mask", help="predict the [MASK] tokens of a text with a BERT run")
    f.add_argument("run_dir")
    f.add_argument("text", help='e.g. "the old man walked to the [MASK] ."')
    f.add_argument("--top-k", type=int, default=5)
    f.add_argument("--device", default="cpu")
    f.set_defaults(func=cmd_fill_mask)

    e = sub.add_parser("export", help="write a run as a Hugging Face transformers folder")
    e.add_argument("run_dir")
    e.add_argument("out_dir")
    e.set_defaults(func=cmd_export)


def _add_decoding_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="generate text from a GPT run")
    s.add_argument("run_dir")
    s.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    s.add_argument("--greedy", action="store_true", help="always take the most likely token")
    s.add_argument("--num-samples", type=int, default=1)
    add_decoding_options(s, temperature=0.8, max_new_tokens=200, what="texts")
    s.set_defaults(func=cmd_sample)

    t = sub.add_parser("translate", help="decode each source text (or line of standard input) with a seq2seq run "
                                         "(greedy unless --temperature or --beams)")
    t.add_argument("run_dir")
    t.add_argument("text", nargs="?", default=None, help="the source (default: one per line of standard input)")
    t.add_argument("--batch-size", type=int, default=64, help="sources decoded together (greedy and sampling)")
    # n-best lines are source, score, output (tab-separated); by default as many tokens as the decoder holds
    add_decoding_options(t, temperature=0.0, max_new_tokens=1 << 30, what="outputs per source")
    t.set_defaults(func=cmd_translate)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # quiet fork warnings from datasets.map
    try:
        return args.func(args)
    except Stopped as e:  # not a mistake: the run saved where it stopped
        print(f"minilm: {e}", file=sys.stderr)
        return e.code
    except MinilmError as e:
        if args.debug:
            raise
        print(f"minilm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minilm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
