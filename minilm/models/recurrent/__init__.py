"""The recurrent family: RNN / LSTM / GRU / SRU stacks (model.arch), one or two directions, deep, with residuals;
language models carried across blocks (truncated BPTT), classifiers, taggers, and encoder-decoders with attention."""

from __future__ import annotations

from minilm.errors import ConfigError
from minilm.models.family import Family
from minilm.models.recurrent.config import ARCHS, RecurrentConfig
from minilm.models.recurrent.decode import RecurrentDecoder
from minilm.models.recurrent.heads import RecurrentClassifier, RecurrentLM, RecurrentSeq2Seq, RecurrentTagger
from minilm.models.recurrent.model import RecurrentState


def _check_task(model: RecurrentConfig, task: str, causal: bool | None) -> None:
    if causal and model.bidirectional and not model.encoder_layers:
        raise ConfigError(f"train.task={task} predicts each token from the ones before it, which a bidirectional "
                          "stack would see: set model.bidirectional=false")


FAMILY = Family(
    "recurrent", RecurrentConfig, ARCHS,
    tasks={"causal_lm": RecurrentLM, "classify": RecurrentClassifier, "seq2seq": RecurrentSeq2Seq,
           "tag": RecurrentTagger},
    backbone=("rnn.",), decoder=RecurrentDecoder, check_task=_check_task,
    state_from_tensors=RecurrentState.from_tensors,
)
