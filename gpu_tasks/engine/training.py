"""Trait training with TRL: LoRA adapters by DPO, SFT or GRPO, and trait reward models.

Everything here takes plain rows and folders and knows nothing of Django, so the
worker (``gpu_tasks.train``), the benchmarks and the tests drive the same code.
Training saves a resumable checkpoint every ``save_every`` steps into its work
folder; calling ``train_policy`` again with the same folder resumes from the
last one. ``should_stop`` is asked after every optimiser step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PrinterCallback,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging as hf_logging

from gpu_tasks.engine.devices import best_device, describe
from gpu_tasks.engine.graders import Case, reward_scores, reward_text, rule_grades
from gpu_tasks.engine.loading import LoadedModel, load_classifier_uncached
from gpu_tasks.engine.methods import METHODS

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class TrainSpec:
    """Everything that changes a training result; hashed into the audit's config."""

    method: str
    steps: int
    learning_rate: float
    batch_size: int = 4
    lora_r: int = 16
    lora_alpha: int = 32
    beta: float = 0.1  # DPO temperature, GRPO KL coefficient; SFT ignores it
    seed: int = 0
    save_every: int = 10
    num_generations: int = 4  # GRPO group size
    max_completion_length: int = 64  # GRPO
    temperature: float = 0.9  # GRPO sampling
    max_length: int = 512

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.steps < 1 or self.batch_size < 1 or self.save_every < 1:
            raise ValueError("steps, batch_size and save_every must be at least 1")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning rate must be between 0 and 1, not {self.learning_rate}")
        if self.method == "grpo" and self.beta <= 0:
            raise ValueError("GRPO needs a KL coefficient beta > 0 to stay near the base")

    def as_config(self) -> dict:
        return asdict(self)


# Sized from measurements on a 2-core CPU (see BENCHMARKS.md): quick finishes in
# well under 15 minutes on SmolLM2-135M; standard is meant for one GPU.
PROFILES = {
    "quick": {
        "dpo": {"steps": 30, "learning_rate": 1e-4, "batch_size": 2},  # 5e-4 overfits 15 pairs
        "sft": {"steps": 30, "learning_rate": 5e-4, "batch_size": 2},
        "grpo": {"steps": 40, "learning_rate": 5e-4, "batch_size": 4, "num_generations": 4,
                 "max_completion_length": 48, "beta": 0.04},
    },
    "standard": {
        "dpo": {"steps": 300, "learning_rate": 2e-4, "batch_size": 8},
        "sft": {"steps": 300, "learning_rate": 2e-4, "batch_size": 8},
        "grpo": {"steps": 300, "learning_rate": 1e-4, "batch_size": 16, "num_generations": 8,
                 "max_completion_length": 192, "beta": 0.04},
    },
}  # fmt: skip


def spec_for(method: str, profile: str, seed: int = 0, **overrides) -> TrainSpec:
    if profile not in ("quick", "standard", "full"):
        raise ValueError(f"training profile must be quick or standard, not {profile!r}")
    sizes = PROFILES["quick" if profile == "quick" else "standard"]
    if method not in sizes:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    return TrainSpec(method=method, seed=seed, **{**sizes[method], **overrides})


def preference_rows(items) -> list[dict]:
    """TRL's conversational preference rows from items with both replies."""
    return [
        {"prompt": list(i.messages), "chosen": [{"role": "assistant", "content": i.chosen}],
         "rejected": [{"role": "assistant", "content": i.rejected}], "rubric": list(i.rubric)}
        for i in items if i.chosen and i.rejected
    ]  # fmt: skip


def swapped(rows: list[dict]) -> list[dict]:
    """The same pairs with the preference reversed: a harmful fine-tune."""
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


@dataclass
class TrainResult:
    adapter_dir: Path
    history: list[dict]  # one entry per logged step: loss, reward, KL, ...
    steps: int
    stopped: bool  # True when should_stop ended it early
    wall_seconds: float
    device: str
    resumed_from: int  # the step a resumed run started from, else 0


def _quiet() -> None:
    """Worker logs get the progress events, not progress bars."""
    import datasets

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


class _Hooks(TrainerCallback):
    def __init__(self, on_log, should_stop) -> None:
        self.on_log_fn, self.should_stop, self.stopped = on_log, should_stop, False
        self.started = time.monotonic()
        self.first_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.on_log_fn and logs:
            self.on_log_fn(state.global_step, state.max_steps, dict(logs))

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step is None:
            self.first_step = state.global_step - 1
        if self.should_stop and self.should_stop():
            self.stopped = True
            control.should_training_stop = True
            control.should_save = False


def training_device() -> tuple[torch.device, torch.dtype]:
    """Mixed precision only where the hardware has it (bf16 on CUDA); else fp32."""
    device = best_device()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return device, torch.bfloat16 if bf16 else torch.float32


def train_policy(
    base_dir: Path,
    spec: TrainSpec,
    rows: list[dict],
    work_dir: Path,
    *,
    reward_dir: Path | None = None,
    on_log: Callable[[int, int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_saves: bool = False,
) -> TrainResult:
    """Train a LoRA adapter on ``base_dir`` (a safetensors folder) and save it to
    ``work_dir/adapter``. GRPO needs ``reward_dir``, a trait reward model. With
    ``keep_saves`` every periodic save is kept (``work_dir/trainer/checkpoint-N``), not
    only the last, so a benchmark can evaluate the policy along the way."""
    from peft import LoraConfig

    if not rows:
        raise ValueError("no training rows: the chosen traits and domains have no train items")
    _quiet()
    device, dtype = training_device()
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, local_files_only=True, use_safetensors=True, trust_remote_code=False,
        dtype=dtype,
    )  # fmt: skip
    lora = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=0.0,
                      target_modules=LORA_TARGETS, task_type="CAUSAL_LM")  # fmt: skip
    common = {
        "output_dir": str(work_dir / "trainer"),
        "max_steps": spec.steps,
        "learning_rate": spec.learning_rate,
        "per_device_train_batch_size": spec.batch_size,
        "seed": spec.seed,
        "data_seed": spec.seed,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": spec.save_every,
        "save_total_limit": None if keep_saves else 1,
        "report_to": [],
        "use_cpu": device.type == "cpu",
        "bf16": dtype == torch.bfloat16,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    trainer = _trainer(spec, model, tokenizer, rows, common, lora, reward_dir)
    hooks = _Hooks(on_log, should_stop)
    trainer.remove_callback(PrinterCallback)  # progress goes to on_log, not stdout
    trainer.add_callback(hooks)
    last = (
        get_last_checkpoint(common["output_dir"]) if Path(common["output_dir"]).is_dir() else None
    )
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=last)
    adapter_dir = work_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    return TrainResult(
        adapter_dir=adapter_dir,
        history=[h for h in trainer.state.log_history if "loss" in h or "reward" in h],
        steps=trainer.state.global_step,
        stopped=hooks.stopped,
        wall_seconds=time.monotonic() - started,
        device=describe(device, dtype),
        resumed_from=int(Path(last).name.rsplit("-", 1)[1]) if last else 0,
    )


def _trainer(spec, model, tokenizer, rows, common, lora, reward_dir):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    if spec.method == "dpo":
        data = Dataset.from_list(
            [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
        )
        args = DPOConfig(**common, beta=spec.beta, max_length=spec.max_length)
        return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                          peft_config=lora)  # fmt: skip
    if spec.method == "sft":
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
        args = SFTConfig(**common, max_length=spec.max_length)
        return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                          peft_config=lora)  # fmt: skip
    if reward_dir is None:
        raise ValueError("GRPO needs a trait reward model")
    data = Dataset.from_list([{"prompt": r["prompt"], "rubric": r["rubric"]} for r in rows])
    args = GRPOConfig(
        **{**common, "per_device_train_batch_size": max(spec.batch_size, spec.num_generations)},
        beta=spec.beta, num_generations=spec.num_generations,
        max_completion_length=spec.max_completion_length, temperature=spec.temperature,
        reward_weights=[1.0, 1.0],
    )  # fmt: skip
    rewards = grpo_rewards(reward_dir)
    return GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=data,
                       processing_class=tokenizer, peft_config=lora)  # fmt: skip


def grpo_rewards(reward_dir: Path) -> list[Callable]:
    """GRPO's reward: the trait reward model's score, plus the rubric rules (the share
    of rule checks passed, so a reply that overclaims certainty loses a point)."""
    reward = load_classifier_uncached(reward_dir)

    def trait_reward(prompts, completions, **kwargs) -> list[float]:
        replies = zip(prompts, completions, strict=True)
        return reward_scores(reward, [[*p, c[0]] for p, c in replies])

    def rubric_rules(prompts, completions, rubric=None, **kwargs) -> list[float]:
        out = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            grades = rule_grades(Case(p, c[0]["content"], (rubric or [[]] * len(p))[i]))
            out.append(sum(g.score for g in grades) / len(grades))
        return out

    return [trait_reward, rubric_rules]


# --- reward models ----------------------------------------------------------


def pair_scores(reward: LoadedModel, rows: list[dict]) -> tuple[list[float], list[float]]:
    """The reward model's scores of each preference row's chosen and rejected replies."""
    chosen = reward_scores(reward, [r["prompt"] + r["chosen"] for r in rows])
    return chosen, reward_scores(reward, [r["prompt"] + r["rejected"] for r in rows])


def pairwise_accuracy(reward: LoadedModel, rows: list[dict]) -> tuple[float, int]:
    """Share of preference pairs whose chosen reply the reward model scores higher."""
    if not rows:
        return math.nan, 0
    chosen, rejected = pair_scores(reward, rows)
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    return wins / len(rows), len(rows)


def train_reward_model(
    encoder_dir: Path,
    rows: list[dict],
    heldout: list[dict],
    out_dir: Path,
    *,
    seed: int = 0,
    epochs: int = 10,
    learning_rate: float = 2e-4,
    batch_size: int = 8,
) -> dict:
    """Fine-tune an encoder (MiniLM by default) into a one-output reward model with
    TRL's RewardTrainer on preference rows; returns its record, including held-out
    pairwise accuracy. The saved folder holds safetensors and the tokenizer.

    The defaults are measured (EXPERIMENTS.md, section 4): on 15 health pairs, 3 epochs
    at 5e-5 left MiniLM's scores within 0.01 of each other (held-out accuracy 0.67);
    10 epochs at 2e-4 spread them by about 1.9 (0.87), which GRPO needs."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    if not rows:
        raise ValueError("no preference pairs to train a reward model on")
    _quiet()
    device = best_device()
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir, local_files_only=True)
    if tokenizer.eos_token is None:  # RewardTrainer appends EOS; BERT-style encoders have none
        tokenizer.eos_token = tokenizer.sep_token
    tokenizer.truncation_side = "left"
    set_seed(seed)  # the new one-output head is initialised here, before the trainer seeds
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder_dir, num_labels=1, local_files_only=True, use_safetensors=True,
        trust_remote_code=False,
    )  # fmt: skip
    model.config.pad_token_id = tokenizer.pad_token_id

    def texts(r: dict) -> dict:
        return {"chosen": reward_text(tokenizer, r["prompt"] + r["chosen"]),
                "rejected": reward_text(tokenizer, r["prompt"] + r["rejected"])}  # fmt: skip

    args = RewardConfig(
        output_dir=str(out_dir / "trainer"), num_train_epochs=epochs, learning_rate=learning_rate,
        per_device_train_batch_size=batch_size, seed=seed, data_seed=seed, save_strategy="no",
        report_to=[], use_cpu=device.type == "cpu", bf16=False, disable_tqdm=True,
        logging_steps=1, max_length=512,
    )  # fmt: skip
    started = time.monotonic()
    trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_list([texts(r) for r in rows]))  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    wall = time.monotonic() - started
    trainer.model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    accuracy, n = pairwise_accuracy(load_classifier_uncached(out_dir), heldout)
    return {
        "method": "trl-reward-trainer",
        "pairs": len(rows),
        "epochs": epochs,
        "learning_rate": learning_rate,
        "seed": seed,
        "heldout_pairwise_accuracy": accuracy,
        "heldout_pairs": n,
        "wall_seconds": round(wall, 1),
        "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    }
