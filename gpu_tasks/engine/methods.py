"""Training methods, in a module of their own so forms and the API can name them without
importing torch and TRL (gpu_tasks/engine/training.py does)."""

METHODS = ("dpo", "sft", "grpo")
