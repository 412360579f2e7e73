"""minilm: pretrain GPT- and BERT-style Transformers and recurrent networks, fine-tune them, and sample from the
command line."""

__version__ = "0.1.0"
