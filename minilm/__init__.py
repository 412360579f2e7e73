"""minilm: pretrain GPT- and BERT-style Transformers, fine-tune them, and sample from the command line."""

__version__ = "0.1.0"
