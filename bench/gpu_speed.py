"""Keel's scoring speed against lm-evaluation-harness on one GPU: same items, model and dtype.

Two steps. Here, with Keel's database (embedded mode is enough):

    KEEL_DATA_DIR=/tmp/keel-gpu .venv/bin/python bench/gpu_speed.py prepare --out .gpubench

writes the `beneficial` eval split as Keel's pair requests (neutral condition) and as
lm-eval's task (Keel's suite export, rendered with SmolLM2's chat template), plus
SmolLM2-135M-Instruct's config and tokenizer read from the bundled GGUF (no weights).
Then, where the GPU is, with lm-eval 0.4.13 and Django importable (no database is used):

    python3 bench/gpu_speed.py measure --data .gpubench --out "$OUT"

builds a model of SmolLM2-135M's shape with random weights (speed does not depend on the
weights' values) and measures, in one process and for each dtype: torch.matmul's peak;
Keel's score_pairs calibrated (cold calibration cache) and doing lm-eval's work (warm
cache: both replies after the conversation only) at several KEEL_BATCH_TOKENS; lm-eval's
HFLM.loglikelihood on the task's requests at several batch sizes, and simple_evaluate end
to end; per-item agreement of the two; then a wall-clock breakdown and a torch.profiler
table of Keel's time, and candidate changes to Keel's scorer timed beside it (prototypes
defined here; Keel's code is not modified). It writes gpu_speed.json and gpu_speed.log
under --out.
bench/gpu_speed.sh installs carried wheels and runs it on the device machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

KEEL_BATCH_TOKENS = (4096, 16384, 65536)  # Keel's default first
LM_EVAL_BATCH_SIZES = (8, 64, 256)  # 8 as on the CPU; `auto` starts at 64 (max_batch_size)
DTYPES = ("bfloat16", "float32")
SCORING_PY = "gpu_tasks/engine/scoring.py"
TINY = {  # --tiny: tests/conftest.py's tiny Llama shape, for a quick run on a CPU
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2,
}  # fmt: skip


# ---------------------------------------------------------------- prepare (here)


def prepare(out: Path, suite_name: str) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from transformers import AutoConfig, AutoTokenizer

    from audits.builtin import load_keel_suite
    from audits.conditions import NEUTRAL
    from audits.models import Suite
    from audits.suite_export import export_lm_eval
    from gpu_tasks.engine.convert import bundled_smollm2_gguf
    from gpu_tasks.evaluate import pair_request

    call_command("migrate", verbosity=0)
    suite = Suite.objects.filter(name=suite_name).order_by("-version").first()
    suite = suite or load_keel_suite(suite_name)
    shutil.rmtree(out, ignore_errors=True)
    (out / "model").mkdir(parents=True)

    gguf = bundled_smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")

    items = list(suite.items.filter(split="eval").order_by("item_id"))
    with (out / "requests.jsonl").open("w", encoding="utf-8") as f:
        for item in items:
            r = pair_request(item, NEUTRAL)
            row = {"id": item.item_id, "messages": r.messages, "chosen": r.chosen,
                   "rejected": r.rejected, "system": r.system}  # fmt: skip
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    yaml = export_lm_eval(suite, out / "task", tokenizer=tokenizer)
    (out / "meta.json").write_text(json.dumps({
        "suite": f"{suite.name} v{suite.version}", "suite_sha256": suite.content_hash,
        "items": len(items), "task": yaml.stem, "task_dir_at_export": str(yaml.parent.resolve()),
        "config_from": str(gguf),
    }, indent=2))  # fmt: skip
    print(f"{len(items)} items, task {yaml.stem}, model config and tokenizer in {out}")


# ---------------------------------------------------------------- measure (device)


class Run:
    """The results document and log, written after every step so a cut-off run keeps them."""

    def __init__(self, out: Path, budget_s: float):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / "gpu_speed.log").open("w", encoding="utf-8")
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.doc: dict = {"errors": []}

    def log(self, *parts) -> None:
        line = f"[{time.perf_counter() - self.started:7.1f}s] " + " ".join(map(str, parts))
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def save(self) -> None:
        self.doc["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        (self.out / "gpu_speed.json").write_text(json.dumps(self.doc, indent=2, default=str))

    def time_left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    @contextlib.contextmanager
    def step(self, name: str):
        self.log(f"-- {name}")
        try:
            yield
        except Exception as e:  # one failed measurement must not lose the others
            import traceback

            self.log(f"!! {name} failed: {type(e).__name__}: {e}")
            self.log(traceback.format_exc())
            self.doc["errors"].append(f"{name}: {type(e).__name__}: {e}")
        self.save()


def git_blob_sha1(path: Path) -> str:
    """The file's git blob id, to tell which version of Keel's scorer was measured."""
    import hashlib

    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - started)
    return times, result


def matmul_peak(dtype, size: int, repeats: int = 10) -> float:
    """torch.matmul FLOP/s on random data, timed with events after warm-up (host clock on CPU)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(3):
        a @ b
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def build_random_model(data: Path, target: Path, tiny: bool) -> Path:
    """SmolLM2-135M's shape (or the tiny test shape), random weights, saved as safetensors."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(data / "model")
    if tiny:
        for key, value in TINY.items():
            setattr(config, key, value)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target)  # safetensors
    for f in (data / "model").iterdir():
        if f.name != "config.json":
            shutil.copy(f, target / f.name)
    return target


def keel_load(path: Path, dtype):
    """What Keel's load_uncached does with a safetensors folder and a dtype (its tokenizer
    loader, the weights cast to the dtype on the device, the pad token), here on the GPU
    directly: the worker's device-slot settings, which need Keel's full configuration, do
    not apply to a bench."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from gpu_tasks.engine.loading import LoadedModel, load_tokenizer

    hf_logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=False, local_files_only=True, dtype=dtype, use_safetensors=True
    )
    model.to(device=device, dtype=dtype).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype)


def load_requests(data: Path, limit: int | None):
    from gpu_tasks.engine.scoring import PairRequest

    rows = [json.loads(x) for x in (data / "requests.jsonl").read_text().splitlines()][:limit]
    requests = [PairRequest(r["messages"], r["chosen"], r["rejected"], r["system"]) for r in rows]
    return [r["id"] for r in rows], requests


def count_keel(loaded, requests, batch_tokens: int, calibrated: bool) -> dict:
    """Tokens through the transformer body (unpadded and padded), positions through the
    vocabulary projection, and query-key pairs, as Keel's packer lays them out."""
    from gpu_tasks.engine.scoring import EMPTY_TURN, ROW_TOKENS, _buckets, _pack, render_prompt

    tok = loaded.tokenizer
    conversations: dict = {}
    empty: dict = {}
    for r in requests:
        prompt = tuple(render_prompt(tok, r.messages, r.system))
        for reply in (r.chosen, r.rejected):
            ids = tuple(tok(reply, add_special_tokens=False)["input_ids"])
            conversations.setdefault(prompt, {})[ids] = None
            empty[ids] = None
    groups = [conversations]
    if calibrated:
        groups.append({tuple(render_prompt(tok, EMPTY_TURN, None)): empty})
    counted = {"body_tokens": 0, "padded_tokens": 0, "head_positions": 0,
               "attention_pairs": 0, "batches": 0}  # fmt: skip
    for children in groups:
        trees = _pack(children, ROW_TOKENS)
        counted["body_tokens"] += sum(t.width for t in trees)
        counted["head_positions"] += sum(len(r) for t in trees for r in t.replies)
        counted["attention_pairs"] += sum(t.width**2 for t in trees)
        for batch in _buckets(trees, batch_tokens):
            counted["batches"] += 1
            counted["padded_tokens"] += len(batch) * max(t.width for t in batch)
    return counted


def count_lm_eval(tokenizer, contexts_and_choices, batch_size: int) -> dict:
    """lm-eval feeds context + continuation minus the last token, one request per choice,
    sorted longest first and right-padded to the longest of each batch."""
    lengths = []
    for context, choice in contexts_and_choices:
        whole = len(tokenizer(context + choice, add_special_tokens=False)["input_ids"])
        lengths.append(whole - 1)
    lengths.sort(reverse=True)
    chunks = [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
    padded = sum(chunk[0] * len(chunk) for chunk in chunks)
    return {"body_tokens": sum(lengths), "padded_tokens": padded,
            "head_positions": sum(lengths),  # every position goes through the vocabulary
            "attention_pairs": sum(n * n for n in lengths)}  # fmt: skip


def model_flops(model, counted: dict) -> float:
    """2 FLOPs per weight per token in the body, the vocabulary projection where it ran,
    attention scores and weighted sum (4 x hidden per query-key pair, causal half)."""
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.base_model.parameters()) - head  # tied embeddings
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    return (2 * body * counted["body_tokens"] + 2 * head * counted["head_positions"]
            + 4 * hidden * layers * counted["attention_pairs"] / 2)  # fmt: skip


def rates(times: list[float], n: int, flops: float, peak: float) -> dict:
    seconds = statistics.median(times)
    return {
        "times_s": [round(t, 4) for t in times], "seconds": round(seconds, 4),
        "items_per_s": round(n / seconds, 2),
        "model_tflop": round(flops / 1e12, 3) if flops else None,
        "model_tflops_per_s": round(flops / seconds / 1e12, 3) if flops else None,
        "share_of_matmul_peak": round(flops / seconds / peak, 4) if peak and flops else None,
    }  # fmt: skip


def keel_score(loaded, requests, batch_tokens: int, warm_cache: dict | None):
    """Keel's production call. A warm cache (every reply's empty-turn score known, as on a
    checkpoint's second audit) leaves exactly lm-eval's work: both replies after the
    conversation."""
    from gpu_tasks.engine.scoring import score_pairs

    cache = dict(warm_cache) if warm_cache is not None else {}
    return score_pairs(loaded, requests, batch_tokens=batch_tokens, calibration=cache)


# ---- prototypes, measured beside Keel's scorer (Keel's code is not modified here)


def score_pairs_batched_tokens(loaded, requests, *, batch_tokens=4096, on_batch=None,
                               calibration=None):  # fmt: skip
    """Keel's score_pairs with the same inputs and outputs, but every conversation and every
    distinct reply tokenised in one call each (the fast tokenizer then spreads the work over
    its threads) instead of one call per text. A candidate change."""
    from gpu_tasks.engine.scoring import (
        EMPTY_TURN,
        PairScore,
        continuation_logprobs,
        render_prompt,
        render_prompt_text,
    )

    tok = loaded.tokenizer
    calibration = {} if calibration is None else calibration
    texts = [render_prompt_text(tok, r.messages, r.system) for r in requests]
    prompts = [tuple(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    replies = list(dict.fromkeys(x for r in requests for x in (r.chosen, r.rejected)))
    encoded = tok(replies, add_special_tokens=False)["input_ids"]
    reply_ids = {reply: tuple(ids) for reply, ids in zip(replies, encoded, strict=True)}
    conversations: dict = {}
    uncalibrated: dict = {}
    for req, prompt in zip(requests, prompts, strict=True):
        for reply in (req.chosen, req.rejected):
            ids = reply_ids[reply]
            if not ids:
                raise ValueError("a reply is empty after tokenisation")
            conversations.setdefault(prompt, {})[ids] = None
            if reply not in calibration:
                uncalibrated[ids] = reply
    logps = continuation_logprobs(loaded, conversations, batch_tokens=batch_tokens)
    if uncalibrated:
        empty = tuple(render_prompt(tok, EMPTY_TURN, None))
        fresh = continuation_logprobs(
            loaded, {empty: dict.fromkeys(uncalibrated)}, batch_tokens=batch_tokens
        )
        for ids, reply in uncalibrated.items():
            calibration[reply] = fresh[empty, ids]
    out = []
    for req, p in zip(requests, prompts, strict=True):
        c, r = reply_ids[req.chosen], reply_ids[req.rejected]
        out.append(PairScore(logps[p, c], logps[p, r], calibration[req.chosen],
                             calibration[req.rejected], len(c), len(r)))  # fmt: skip
    return out


def tree_logprobs_gpu_mask(loaded, batch):
    """Keel's _tree_logprobs with the same inputs and outputs, but the (rows, width, width)
    attention mask is built on the device from a (rows, width) segment map, instead of on
    the CPU and copied over. A candidate change; Keel's code is not modified here."""
    import torch

    from gpu_tasks.engine.scoring import HEAD_CHUNK

    width = max(t.width for t in batch)
    rows = len(batch)
    input_ids = torch.full((rows, width), loaded.tokenizer.pad_token_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    segment = torch.full((rows, width), -1, dtype=torch.long)  # -1 pad, 0 prefix, k reply k
    sources: list[int] = []
    targets: list[int] = []
    owners: list[int] = []
    reply_number = 0
    for row, tree in enumerate(batch):
        p = len(tree.prefix)
        input_ids[row, :p] = torch.tensor(tree.prefix)
        positions[row, :p] = torch.arange(p)
        segment[row, :p] = 0
        start = p
        for k, reply in enumerate(tree.replies, 1):
            n = len(reply)
            end = start + n
            input_ids[row, start:end] = torch.tensor(reply)
            positions[row, start:end] = torch.arange(p, p + n)
            segment[row, start:end] = k
            sources += [row * width + s for s in (p - 1, *range(start, end - 1))]
            targets += reply
            owners += [reply_number] * n
            reply_number += 1
            start = end

    device = loaded.device
    model = loaded.model
    dtype = model.dtype
    seg = segment.to(device)
    at = torch.arange(width, device=device)
    causal = at[None, :, None] >= at[None, None, :]  # query i sees key j <= i
    sees = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
    allowed = (causal & sees & (seg[:, :, None] >= 0)) | (at[:, None] == at[None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    with torch.inference_mode():
        hidden = model.base_model(
            input_ids=input_ids.to(device), attention_mask=mask[:, None],
            position_ids=positions.to(device), use_cache=False,
        ).last_hidden_state.flatten(0, 1)  # fmt: skip
        head = model.get_output_embeddings()
        index = torch.tensor(sources, device=device)
        wanted = torch.tensor(targets, device=device)
        token_logps = torch.empty(len(sources), dtype=torch.float32, device=device)
        for at0 in range(0, len(sources), HEAD_CHUNK):
            piece = slice(at0, at0 + HEAD_CHUNK)
            logits = head(hidden[index[piece]]).float()
            token_logps[piece] = logits.log_softmax(-1).gather(1, wanted[piece, None])[:, 0]
    sums = torch.zeros(reply_number, dtype=torch.float64)
    sums.index_add_(0, torch.tensor(owners), token_logps.cpu().double())
    out, at1 = [], 0
    for tree in batch:
        out.append(sums[at1 : at1 + len(tree.replies)].tolist())
        at1 += len(tree.replies)
    return out


@contextlib.contextmanager
def patched(module, name: str, replacement):
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield original
    finally:
        setattr(module, name, original)


def keel_breakdown(loaded, requests, batch_tokens: int) -> dict:
    """Wall-clock split of one calibrated score_pairs call, by wrapping Keel's own functions
    (the body's forward is synchronised on both sides, so GPU work is charged to it)."""

    from gpu_tasks.engine import scoring

    spent = dict.fromkeys(
        ["render_prompt", "pack_and_bucket", "batch_inputs_cpu_and_copy", "body_forward",
         "vocab_head_and_readback"], 0.0)  # fmt: skip
    marks: dict = {}

    def render(*a, **k):
        t = time.perf_counter()
        try:
            return original_render(*a, **k)
        finally:
            spent["render_prompt"] += time.perf_counter() - t
            if "first_continuation" not in marks:
                marks["render_before"] = marks.get("render_before", 0) + time.perf_counter() - t

    def pack(*a, **k):
        t = time.perf_counter()
        try:
            return original_pack(*a, **k)
        finally:
            spent["pack_and_bucket"] += time.perf_counter() - t

    def buckets(*a, **k):
        it = original_buckets(*a, **k)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                spent["pack_and_bucket"] += time.perf_counter() - t
                return
            spent["pack_and_bucket"] += time.perf_counter() - t
            yield batch

    def continuation(*a, **k):
        marks.setdefault("first_continuation", time.perf_counter())
        return original_continuation(*a, **k)

    def tree(loaded_, batch):
        marks["tree_start"] = time.perf_counter()
        out = original_tree(loaded_, batch)
        spent["vocab_head_and_readback"] += time.perf_counter() - marks["body_end"]
        return out

    body = loaded.model.base_model
    original_forward = body.forward

    def forward(*a, **k):
        sync()
        t = time.perf_counter()
        spent["batch_inputs_cpu_and_copy"] += t - marks["tree_start"]
        out = original_forward(*a, **k)
        sync()
        marks["body_end"] = time.perf_counter()
        spent["body_forward"] += marks["body_end"] - t
        return out

    with (
        patched(scoring, "render_prompt", render) as original_render,
        patched(scoring, "_pack", pack) as original_pack,
        patched(scoring, "_buckets", buckets) as original_buckets,
        patched(scoring, "continuation_logprobs", continuation) as original_continuation,
        patched(scoring, "_tree_logprobs", tree) as original_tree,
    ):
        body.forward = forward
        try:
            sync()
            started = time.perf_counter()
            keel_score(loaded, requests, batch_tokens, None)
            sync()
            total = time.perf_counter() - started
        finally:
            del body.forward
    before = marks["first_continuation"] - started
    spent["tokenize_replies_and_plan"] = before - marks.get("render_before", 0)
    spent["other"] = total - sum(spent.values())
    return {"total_s": round(total, 4), **{k: round(v, 4) for k, v in spent.items()}}


def keel_profile(loaded, requests, batch_tokens: int, rows: int = 18) -> dict:
    """torch.profiler over one calibrated call: top operators by device and by CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    sync()
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        keel_score(loaded, requests, batch_tokens, None)
        sync()
        wall = time.perf_counter() - started
    averages = prof.key_averages()

    def device_self(e) -> float:
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

    # kernels and copies only: an operator's row repeats the time of the kernels it launched
    kernels = [e for e in averages if e.device_type != torch.autograd.DeviceType.CPU]
    device_us = sum(device_self(e) for e in kernels)
    device_key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    by_device = sorted(kernels, key=device_self, reverse=True)[:rows]
    operators = [e for e in averages if e.device_type == torch.autograd.DeviceType.CPU]
    by_operator = sorted(operators, key=device_self, reverse=True)[:rows]
    by_cpu = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {
        "wall_s": round(wall, 4),
        "device_busy_s": round(device_us / 1e6, 4),
        "device_busy_share": round(device_us / 1e6 / wall, 3),
        "top_kernels_by_device_time": [
            {"kernel": e.key[:120], "calls": e.count, "device_ms": round(device_self(e) / 1e3, 2),
             "share_of_device_time": round(device_self(e) / max(device_us, 1), 3)}
            for e in by_device
        ],
        "top_operators_by_device_time": [
            {"op": e.key, "calls": e.count, "device_ms": round(device_self(e) / 1e3, 2),
             "share_of_device_time": round(device_self(e) / max(device_us, 1), 3)}
            for e in by_operator
        ],
        "top_by_self_cpu_time": [
            {"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2)}
            for e in by_cpu
        ],
        "table_device": averages.table(sort_by=device_key, row_limit=rows),
        "table_cpu": averages.table(sort_by="self_cpu_time_total", row_limit=rows),
    }  # fmt: skip


def lm_eval_setup(data: Path, work: Path, limit: int | None, log):
    """The exported task, pointed at its data where it now lies; its requests built once by
    lm-eval's task code. If that code cannot load here (it needs `datasets`), the same
    requests are made from the task's documents as its YAML says (context, then each choice
    with no delimiter), and only the end-to-end run is lost."""
    meta = json.loads((data / "meta.json").read_text())
    task_dir = work / "task"
    shutil.rmtree(task_dir, ignore_errors=True)
    shutil.copytree(data / "task", task_dir)
    yaml = task_dir / f"{meta['task']}.yaml"
    yaml.write_text(yaml.read_text().replace(meta["task_dir_at_export"], str(task_dir.resolve())))
    try:
        from lm_eval.tasks import TaskManager, get_task_dict

        manager = TaskManager(include_path=str(task_dir))
        task = get_task_dict([meta["task"]], manager)[meta["task"]]
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        return meta["task"], manager, list(task.instances)
    except Exception as e:
        log(f"!! lm-eval's task loader failed ({type(e).__name__}: {e}); requests made directly")
    from lm_eval.api.instance import Instance

    lines = (task_dir / f"{meta['task']}.jsonl").read_text(encoding="utf-8").splitlines()
    instances = [
        Instance("loglikelihood", doc, (doc["context"], choice), k, (meta["task"], n, 1))
        for n, doc in enumerate(json.loads(x) for x in lines[:limit])
        for k, choice in enumerate((doc["chosen"], doc["rejected"]))
    ]
    return meta["task"], None, instances


def lm_eval_scores(instances, results) -> dict:
    """doc id -> (log p chosen, log p rejected) from loglikelihood results in instance order."""
    out: dict = {}
    for inst, (logp, _greedy) in zip(instances, results, strict=True):
        out.setdefault(inst.doc["id"], [None, None])[inst.idx] = logp
    return out


def agreement(ids, keel_scores, lm_scores: dict) -> dict:
    """Per-item log-likelihoods of the two tools. lm-eval moves the context's trailing
    newline into each continuation, so its sums hold one more token, the same for both
    replies of an item (near 0 nats on a trained model, about -ln(vocab) on random weights);
    the margin (chosen minus rejected) cancels it."""
    worst_abs, worst_rel, worst_margin, same = 0.0, 0.0, 0.0, 0
    for item_id, s in zip(ids, keel_scores, strict=True):
        chosen, rejected = lm_scores[item_id]
        for mine, theirs in ((s.logp_chosen, chosen), (s.logp_rejected, rejected)):
            worst_abs = max(worst_abs, abs(mine - theirs))
            worst_rel = max(worst_rel, abs(mine - theirs) / max(abs(theirs), 1e-9))
        margin = (chosen - rejected) - (s.logp_chosen - s.logp_rejected)
        worst_margin = max(worst_margin, abs(margin))
        same += (chosen > rejected) == (s.logp_chosen > s.logp_rejected)
    return {"items": len(ids), "same_choice": same, "max_abs_margin_difference": worst_margin,
            "max_abs_logp_difference": worst_abs, "max_rel_logp_difference": worst_rel}  # fmt: skip


def measure(args) -> int:
    import torch

    run = Run(Path(args.out), args.budget)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    doc = run.doc
    cuda = torch.cuda.is_available()
    dtypes = args.dtypes.split(",")
    budgets = [int(x) for x in args.keel_batch_tokens.split(",")]
    sizes = [int(x) for x in args.lm_eval_batch_sizes.split(",")]
    ends = sorted({budgets[0], budgets[-1]})  # where the breakdown, profile and prototypes run
    skip = set(filter(None, args.skip.split(",")))
    e2e_batch = 64  # lm-eval's end-to-end run and its fp32-softmax check
    doc["machine"] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__, "python": sys.version.split()[0],
        "cpu_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "date": time.strftime("%Y-%m-%d"),
        "keel_scoring_py_sha1": git_blob_sha1(Path(__file__).parent.parent / SCORING_PY),
    }  # fmt: skip
    with run.step("versions"):
        import transformers

        doc["machine"]["transformers"] = transformers.__version__
        import lm_eval

        doc["machine"]["lm_eval"] = getattr(lm_eval, "__version__", "?")
    run.log(json.dumps(doc["machine"]))

    size = 8192 if cuda else 256
    doc["matmul_peak_tflops"] = {}
    with run.step("matmul peak"):
        for name in dtypes:
            peak = matmul_peak(getattr(torch, name), size)
            doc["matmul_peak_tflops"][name] = round(peak / 1e12, 3)
            run.log(f"torch.matmul {size}^3 {name}: {peak / 1e12:.2f} TFLOP/s")
        if cuda:  # for reference only: neither tool turns TF32 on
            torch.backends.cuda.matmul.allow_tf32 = True
            peak = matmul_peak(torch.float32, size)
            torch.backends.cuda.matmul.allow_tf32 = False
            doc["matmul_peak_tflops"]["float32_tf32_not_used"] = round(peak / 1e12, 2)

    model_dir = build_random_model(Path(args.data), work / "model", args.tiny)
    ids, requests = load_requests(Path(args.data), args.limit)
    n = len(requests)
    doc["items"] = n
    doc["model"] = {"shape": "tiny" if args.tiny else "SmolLM2-135M", "weights": "random"}
    run.log(f"{n} items; random model in {model_dir}")
    task_name, manager, instances, contexts = None, None, [], []
    with run.step("lm-eval task"):
        task_name, manager, instances = lm_eval_setup(Path(args.data), work, args.limit, run.log)
        contexts = [(i.arguments[0], i.arguments[1]) for i in instances]
        run.log(f"lm-eval task {task_name}: {len(instances)} loglikelihood requests")

    from gpu_tasks.engine import scoring

    doc["runs"] = []
    models, warm_caches, lms, scores_by_dtype = {}, {}, {}, {}

    def repeats() -> int:
        return args.repeats if run.time_left() > 90 else 1

    # Phase 1: the comparison, each dtype, both tools
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        peak = doc["matmul_peak_tflops"].get(dtype_name, 0) * 1e12
        loaded = models[dtype_name] = keel_load(model_dir, dtype)
        tok = loaded.tokenizer
        run.log(f"== {dtype_name}: Keel loaded on {loaded.device}")
        keel_scores = None
        warm_cache = warm_caches[dtype_name] = {}
        with run.step(f"keel warm-up {dtype_name}"):
            # fills the warm cache (every reply's empty-turn score) and warms the kernels
            keel_scores = scoring.score_pairs(loaded, requests, calibration=warm_cache)
            scores_by_dtype[dtype_name] = keel_scores
            keel_score(loaded, requests, budgets[-1], None)
        for calibrated in (False, True):
            for batch_tokens in budgets:
                label = f"keel {'calibrated' if calibrated else 'same work'} {batch_tokens}"
                with run.step(f"{label} {dtype_name}"):
                    if run.time_left() < 30:
                        raise TimeoutError("skipped: time budget spent")
                    cache = None if calibrated else warm_cache
                    times, _ = timed(partial(keel_score, loaded, requests, batch_tokens, cache),
                                     repeats())  # fmt: skip
                    counted = count_keel(loaded, requests, batch_tokens, calibrated)
                    flops = model_flops(loaded.model, counted)
                    row = {"tool": "keel", "dtype": dtype_name, "calibrated": calibrated,
                           "batch_tokens": batch_tokens, **rates(times, n, flops, peak),
                           **counted}  # fmt: skip
                    doc["runs"].append(row)
                    run.log(json.dumps(row))

        # lm-eval: the same saved weights, the same dtype, its HF backend
        with run.step(f"lm-eval load {dtype_name}"):
            from lm_eval.models.huggingface import HFLM

            if not instances:
                raise RuntimeError("no lm-eval requests (see the task step)")
            lm = lms[dtype_name] = HFLM(pretrained=str(model_dir), dtype=dtype_name, batch_size=8,
                                        device="cuda" if cuda else "cpu")  # fmt: skip
            lm.loglikelihood(instances[:16], disable_tqdm=True)  # warm-up
        for bs in sizes if dtype_name in lms else ():
            with run.step(f"lm-eval loglikelihood batch {bs} {dtype_name}"):
                if run.time_left() < 30:
                    raise TimeoutError("skipped: time budget spent")
                lm.batch_size_per_gpu = bs
                times, results = timed(
                    partial(lm.loglikelihood, instances, disable_tqdm=True), repeats()
                )
                counted = count_lm_eval(tok, contexts, bs)
                flops = model_flops(loaded.model, counted)
                row = {"tool": "lm-eval loglikelihood", "dtype": dtype_name, "batch_size": bs,
                       **rates(times, n, flops, peak), **counted}  # fmt: skip
                if bs == sizes[0] and keel_scores is not None:
                    theirs = lm_eval_scores(instances, results)
                    row["agreement_with_keel"] = agreement(ids, keel_scores, theirs)
                doc["runs"].append(row)
                run.log(json.dumps(row))
    summary(run)

    # Phase 2: where Keel's time goes (the first dtype, default and largest budget)
    loaded = models[dtypes[0]]
    with run.step(f"keel breakdown {dtypes[0]}"):
        if "breakdown" in skip:
            raise TimeoutError("skipped (--skip)")
        doc["breakdown"] = {}
        for batch_tokens in ends:
            parts = keel_breakdown(loaded, requests, batch_tokens)
            doc["breakdown"][str(batch_tokens)] = parts
            run.log(f"breakdown {batch_tokens}: {json.dumps(parts)}")
    with run.step(f"keel profile {dtypes[0]}"):
        if "profile" in skip:
            raise TimeoutError("skipped (--skip)")
        doc["profile"] = {}
        for batch_tokens in ends:
            if run.time_left() < 40:
                raise TimeoutError("skipped: time budget spent")
            prof = keel_profile(loaded, requests, batch_tokens)
            run.log(f"profile {batch_tokens}: wall {prof['wall_s']} s, device busy "
                    f"{prof['device_busy_s']} s ({prof['device_busy_share']:.0%})")  # fmt: skip
            run.log("\n" + prof.pop("table_device"))
            run.log("\n" + prof.pop("table_cpu"))
            doc["profile"][str(batch_tokens)] = prof

    # Phase 3: lm-eval end to end as its CLI runs (model loaded), and a Keel prototype
    for dtype_name in dtypes:
        with run.step(f"lm-eval simple_evaluate end to end {dtype_name}"):
            if "e2e" in skip:
                raise TimeoutError("skipped (--skip)")
            if run.time_left() < 40 or dtype_name not in lms or manager is None:
                raise TimeoutError("skipped: time budget spent, or lm-eval or its tasks missing")
            from lm_eval import simple_evaluate

            lm = lms[dtype_name]
            lm.batch_size_per_gpu = e2e_batch
            kw = {"model": lm, "tasks": [task_name], "task_manager": manager,
                  "log_samples": True}  # fmt: skip
            one, _ = timed(partial(simple_evaluate, **kw, limit=1), 1)
            full, res = timed(partial(simple_evaluate, **kw, limit=args.limit), 1)
            row = {"tool": "lm-eval simple_evaluate", "dtype": dtype_name,
                   "batch_size": e2e_batch, "seconds_full": round(full[0], 3),
                   "seconds_one_item": round(one[0], 3),
                   "items_per_s": round((n - 1) / (full[0] - one[0]), 2),
                   "acc": res["results"][task_name].get("acc,none")}  # fmt: skip
            doc["runs"].append(row)
            run.log(json.dumps(row))
    for dtype_name in dtypes:
        with run.step(f"agreement, lm-eval's log-softmax in float32, {dtype_name}"):
            # in bf16 lm-eval takes the log-softmax in bf16, Keel in fp32: is that the gap?
            if dtype_name == "float32" or dtype_name not in lms or run.time_left() < 30:
                raise TimeoutError("not needed, or skipped: time budget spent")
            lm = lms[dtype_name]
            lm.softmax_dtype, lm.batch_size_per_gpu = torch.float32, e2e_batch
            results = lm.loglikelihood(instances, disable_tqdm=True)
            lm.softmax_dtype = None
            theirs = lm_eval_scores(instances, results)
            doc[f"agreement_softmax_fp32_{dtype_name}"] = found = agreement(
                ids, scores_by_dtype[dtype_name], theirs
            )
            run.log(json.dumps(found))
    variants = {  # name -> (score_pairs, _tree_logprobs) swapped in for the timing
        "gpu mask": (scoring.score_pairs, tree_logprobs_gpu_mask),
        "batched tokenization": (score_pairs_batched_tokens, scoring._tree_logprobs),
        "batched tokenization + gpu mask": (score_pairs_batched_tokens, tree_logprobs_gpu_mask),
    }
    for dtype_name in dtypes:
        loaded = models[dtype_name]
        for (name, (pairs_fn, tree_fn)), batch_tokens in product(variants.items(), ends):
            with run.step(f"keel prototype, {name}, {batch_tokens} {dtype_name}"):
                if "prototypes" in skip or run.time_left() < 30:
                    raise TimeoutError("skipped (--skip or time budget spent)")
                with (
                    patched(scoring, "score_pairs", pairs_fn),
                    patched(scoring, "_tree_logprobs", tree_fn),
                ):
                    keel_score(loaded, requests[:16], batch_tokens, None)  # warm
                    call = partial(keel_score, loaded, requests, batch_tokens, None)
                    times, proto = timed(call, repeats())
                stock = keel_score(loaded, requests, batch_tokens, None)
                diff = max(abs(a.margin - b.margin) for a, b in zip(proto, stock, strict=True))
                row = {"tool": f"keel prototype {name}", "dtype": dtype_name,
                       "calibrated": True, "batch_tokens": batch_tokens,
                       **rates(times, n, 0, 0), "max_margin_difference_to_keel": diff}  # fmt: skip
                doc["runs"].append(row)
                run.log(json.dumps(row))
    summary(run)
    return 0


def summary(run: Run) -> None:
    """A short table last, so the tail of the output carries it."""
    doc = run.doc
    lines = ["", "| dtype | what | setting | s | items/s | body tokens | TFLOP/s | share of peak |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in doc.get("runs", []):
        setting = r.get("batch_tokens", r.get("batch_size"))
        what = r["tool"] + (" calibrated" if r.get("calibrated") else "")
        if r["tool"] == "keel" and not r["calibrated"]:
            what = "keel same work"
        seconds = r.get("seconds", r.get("seconds_full"))
        lines.append(f"| {r['dtype']} | {what} | {setting} | {seconds} | {r['items_per_s']} "
                     f"| {r.get('body_tokens', '')} | {r.get('model_tflops_per_s', '')} "
                     f"| {r.get('share_of_matmul_peak', '')} |")  # fmt: skip
    best = {}
    for r in doc.get("runs", []):
        key = (r["dtype"], r["tool"], r.get("calibrated"))
        best[key] = max(best.get(key, 0), r["items_per_s"])
    for dtype in DTYPES:
        lm = best.get((dtype, "lm-eval loglikelihood", None))
        if not lm:
            continue
        for calibrated in (False, True):
            k = best.get((dtype, "keel", calibrated))
            if k:
                name = "calibrated" if calibrated else "same work"
                lines.append(f"{dtype}: Keel {name} best {k} items/s against lm-eval's best "
                             f"{lm}: {k / lm:.2f}x")  # fmt: skip
    doc["summary"] = lines
    run.save()
    run.log("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="export items, task, config and tokenizer (here)")
    p.add_argument("--out", default=".gpubench")
    p.add_argument("--suite", default="beneficial")
    m = sub.add_parser("measure", help="time both tools (on the GPU machine)")
    m.add_argument("--data", default=".gpubench")
    m.add_argument("--out", required=True)
    m.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "keel-gpu-bench"),
                   help="scratch folder: the random model, the task's copy")  # fmt: skip
    m.add_argument("--limit", type=int, help="only the first N items (for a quick test)")
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--budget", type=float, default=330, help="seconds; later steps are skipped")
    m.add_argument("--tiny", action="store_true", help="the tiny test shape, not SmolLM2-135M")
    m.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated, in order")
    m.add_argument(
        "--keel-batch-tokens",
        default=",".join(map(str, KEEL_BATCH_TOKENS)),
        help="KEEL_BATCH_TOKENS values to time, comma-separated",
    )
    m.add_argument(
        "--lm-eval-batch-sizes",
        default=",".join(map(str, LM_EVAL_BATCH_SIZES)),
        help="lm-eval batch sizes to time; agreement is read from the first",
    )
    m.add_argument("--skip", default="", help="any of breakdown,profile,e2e,prototypes")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(Path(args.out), args.suite)
        return 0
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
