"""Fine-tuning guard models on datasets in the LlavaGuard format (`moderator train`).

config.py reads the YAML run configuration; data.py turns samples into token ids, image tensors
and the loss mask; collate.py batches them; model.py loads the base checkpoint and sets up LoRA
or full fine-tuning; trainer.py runs transformers' Trainer and writes the run directory
(rundir.py names its files); progress.py logs each step.
"""
