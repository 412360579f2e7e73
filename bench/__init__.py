"""minilm vs Hugging Face transformers: tokens per second on the same machine, config, batches and weights.

Run `python -m bench` (see bench/README.md). Workloads: gpt-train, gpt-sample, bert-train.
"""
