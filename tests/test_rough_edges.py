"""What a user meets with files minilm did not write, and the traps around a run: a tokenizer.json that pads
and truncates, a sentence-transformers folder (mean pooling), max_steps against epochs, checkpoints without an
evaluation, SIGTERM, `minilm info`, presets, experiment trackers."""

from __future__ import annotations

import glob
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_YAML, _env, read_metrics, run_cli, tiny_overrides
from minilm import hf
from minilm.config import load_config
from minilm.errors import CheckpointError
from minilm.models import HeadConfig
from minilm.models.transformer.heads import Classifier
from minilm.run import RunDir, run_info
from minilm.tasks import prepare
from minilm.tokenizer import PAD, load_tokenizer, train_wordpiece
from minilm.train import load_init, train

transformers = pytest.importorskip("transformers")
TREC = ROOT / "data" / "trec" / "train.tsv"


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory) -> Path:
    """A sentence-transformers folder: a small random BERT, a tokenizer.json padded and truncated to 48 ids,
    modules.json and a mean-pooling 1_Pooling/config.json, as all-MiniLM-L6-v2 ships."""
    folder = tmp_path_factory.mktemp("st") / "model"
    rows = TREC.read_text(encoding="utf-8").splitlines()[1:400]
    tok = train_wordpiece([r.split("\t")[-1] for r in rows], 300, lowercase=True)
    theirs = transformers.BertModel(transformers.BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.token_to_id(PAD)))
    theirs.save_pretrained(folder)
    tok.enable_padding(pad_id=tok.token_to_id(PAD), pad_token=PAD, length=48)
    tok.enable_truncation(48)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    return folder


def test_a_tokenizer_json_that_pads_and_truncates_is_overridden_with_a_note(st_folder, capsys):
    tok = load_tokenizer(st_folder / "tokenizer.json")
    assert "sets padding and truncation; ignored" in capsys.readouterr().err
    assert tok.padding is None and tok.truncation is None
    assert len(tok.encode("what is a fish ?").ids) < 10  # not 48 ids, most of them [PAD]


def test_sentence_transformers_folder_fine_tunes_with_mean_pooling_like_transformers(st_folder, tmp_path, capsys):
    source = hf.load_pretrained(st_folder)
    assert source.pooling == "mean"
    table = tmp_path / "trec.tsv"
    table.write_text("\n".join(TREC.read_text(encoding="utf-8").splitlines()[:300]) + "\n", encoding="utf-8")
    cfg = load_config(None, ["train.task=classify", f"model.init_from={st_folder}", f"data.train_files=[{table}]",
                             "data.text_column=question", "model.block_size=64", f"train.out_dir={tmp_path / 'run'}"])
    data = prepare(cfg, None, source)
    assert "pools by mean" in capsys.readouterr().err
    assert data.cfg.classify.pooling == "mean"
    lengths = {len(data.train[i]["input_ids"]) for i in range(50)}
    assert len(lengths) > 3 and max(lengths) < 48  # each example its own length: no fixed padding to 48
    model = Classifier(data.cfg.model, HeadConfig.of(data.cfg)).eval()
    assert model.pooler is None  # mean pooling has no [CLS] pooler (DDP would find it unused)
    load_init(model, data.init_state, str(st_folder), ("transformer.",))
    batch = data.collate([data.val[i] for i in range(6)])
    theirs = transformers.BertModel.from_pretrained(st_folder).eval()
    with torch.no_grad():
        h = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state  # (B, T, C)
        mask = batch["attention_mask"][..., None].float()
        expected = model.head((h * mask).sum(1) / mask.sum(1))  # sentence-transformers' mean, then our head
        ours = model(batch["input_ids"], batch["attention_mask"]).logits
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_a_command_line_max_steps_wins_over_the_files_epochs(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text("train: {epochs: 3, max_steps: 1000}\ndata: {train_files: [x.tsv]}\n")
    assert load_config(path, ["train.max_steps=30"]).train.epochs == 0
    assert load_config(path, ["train.max_steps=30"]).train.max_steps == 30
    assert load_config(path, []).train.epochs == 3  # no override: the file's epochs decide
    assert load_config(path, ["train.max_steps=30", "train.epochs=2"]).train.epochs == 2  # both given: epochs


def test_save_interval_checkpoints_between_evaluations(make_cfg, tmp_path, monkeypatch):
    saved = []
    real = RunDir.save
    monkeypatch.setattr(RunDir, "save", lambda self, acc, model, p, **kw: (saved.append(p.step), real(self, acc, model, p, **kw)))
    train(make_cfg("train.max_steps=8", "train.eval_interval=100", "train.save_interval=3"))
    assert saved == [3, 6, 8]  # two checkpoints without an evaluation, then the final evaluation


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(shakespeare_file, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "minilm.cli", "train", str(TINY_YAML),
           *tiny_overrides(shakespeare_file, out, "train.max_steps=100000", "train.eval_interval=100000",
                           "log.log_interval=1")]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ((out / "metrics.jsonl").exists() and len(read_metrics(out)) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step" in err and f"minilm train {out / 'config.json'} train.resume=true" in err
    info = run_info(out)
    assert info["resumable"].startswith("yes") and int(info["step"].split()[0]) >= 3
    step = int(info["step"].split()[0])
    done = run_cli("train", str(out / "config.json"), "train.resume=true", f"train.max_steps={step + 2}")
    assert done.returncode == 0, done.stderr
    assert max(r["step"] for r in read_metrics(out)) == step + 2


def test_info_says_what_a_run_is_and_where_it_stands(trained_run, tmp_path):
    info = run_info(trained_run.run_dir)
    assert info["task"].startswith("causal_lm on a GPT") and info["parameters"].endswith("M")
    assert info["step"].split()[0] == info["step"].split()[-1]  # finished
    assert "val_loss" in info["last evaluation"] and info["resumable"].startswith("finished")
    proc = run_cli("info", str(trained_run.run_dir))
    assert proc.returncode == 0 and "tokenizer:" in proc.stdout and "wall time:" in proc.stdout
    with pytest.raises(CheckpointError, match="does not exist"):
        run_info(tmp_path / "nothing")


def test_presets_count_each_family_at_its_own_vocabulary():
    proc = run_cli("presets")
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert rows["bert-mini"][-2:] == ["11.27M", "30,522"] and rows["gpt2-small"][-2:] == ["124.44M", "50,257"]


def test_wandb_offline_and_tensorboard_hold_the_metrics_and_config(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "tracked"
    train(make_cfg("log.wandb=offline", "log.tensorboard=true", "train.max_steps=10", out_dir=out))
    records = read_metrics(out)
    val_loss = [r for r in records if r["split"] == "val"][-1]["val_loss"]
    first_loss = [r for r in records if r["split"] == "train"][0]["loss"]
    # the offline wandb run: its records (protobuf) hold the logged values and the config keys as text
    runs = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    raw = Path(runs[0]).read_bytes()
    assert json.dumps(val_loss).encode() in raw and json.dumps(first_loss).encode() in raw
    assert b"train.lr" in raw and b"model.n_layer" in raw
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / "minilm"))
    events.Reload()
    assert events.Scalars("val_loss")[-1].value == pytest.approx(val_loss, rel=1e-6)
    assert [e.step for e in events.Scalars("loss")] == [r["step"] for r in records if r["split"] == "train"]
