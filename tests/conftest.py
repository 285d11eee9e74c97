"""Shared test fixtures: tiny randomly initialised models built from a config (milliseconds on CPU)
and small labelled data sets written on the fly."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest
from hypothesis import settings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

# Property tests: the `ci` profile (chosen by `make test` when CI is set) derives every example from
# the test itself, so a CI run is the same every time; elsewhere each run explores with a fresh seed,
# printed in the header (rerun it with --hypothesis-seed=N); a failure prints its falsifying example
# and a blob for @reproduce_failure. No deadline: an example's time says how busy the machine is, not
# whether the code is right (a first example that waits on the CPU failed as "flaky").
settings.register_profile("ci", derandomize=True, print_blob=True, database=None, deadline=None)
settings.register_profile("dev", print_blob=True, deadline=None)
settings.load_profile(os.environ.get("LMTUNE_HYPOTHESIS_PROFILE", "dev"))


def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import core

    if not settings.default.derandomize and config.getoption("hypothesis_seed") is None:
        core.global_force_seed = random.SystemRandom().getrandbits(32)


def _hypothesis_line() -> str:
    from hypothesis import core

    profile = settings.get_current_profile_name()
    if settings.default.derandomize:
        return f"hypothesis: profile {profile!r}, derandomized (examples derived from each test)"
    return f"hypothesis: profile {profile!r}, seed {core.global_force_seed} (rerun with --hypothesis-seed={core.global_force_seed})"


def pytest_report_header(config: pytest.Config) -> str:
    return _hypothesis_line()


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: pytest.Config) -> None:
    if exitstatus != 0:  # (the header, where the seed is, is not shown with -q)
        terminalreporter.write_line(_hypothesis_line())  # type: ignore[attr-defined]

WORDS = {
    "positive": "good great fine lovely superb happy wonderful nice excellent brilliant".split(),
    "negative": "bad awful poor boring sad terrible dull ugly worst horrible".split(),
    "neutral": "the a movie film plot story actor scene it was is very really quite".split(),
}


def build_tiny_bert(
    path: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0, words: list[str] | None = None,
    max_positions: int = 64,
) -> Path:
    """A 2-layer, width-32 BERT with a word-level WordPiece vocabulary (the sentiment words, or
    `words` in their order), saved as a HF folder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (words or sorted({w for ws in WORDS.values() for w in ws}))
    ids = {w: i for i, w in enumerate(vocab)}
    backend = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tokenizer = BertTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions,
    )
    BertModel(config).save_pretrained(path)
    return path


def write_sentiment(path: Path, n: int, seed: int = 0) -> Path:
    """A separable toy sentiment set: each text mixes neutral words with words of its label."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = "positive" if i % 2 else "negative"
            words = rng.sample(WORDS["neutral"], rng.randint(2, 6)) + rng.sample(WORDS[label], rng.randint(1, 3))
            rng.shuffle(words)
            w.writerow([" ".join(words), label])
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("toy-data")
    return {
        "train": write_sentiment(d / "train.csv", 96, seed=1),
        "validation": write_sentiment(d / "validation.csv", 32, seed=2),
        "test": write_sentiment(d / "test.csv", 32, seed=3),
    }


def tiny_config(model: Path, data: dict[str, Path], out: Path, **train: object) -> dict:
    """A run config dict for the tiny model; `train` overrides train.* keys."""
    return {
        "model": str(model),
        "output_dir": str(out),
        "data": {"train": str(data["train"]), "validation": str(data["validation"])},
        "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "precision": "fp32", "log_steps": 2, **train},
    }


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LM_WORDS = (
    "the a bike chain shop opens at nine closes six fix flat tire price is twelve euro hello hi what when "
    "how much does cost do you rent bikes yes no we on tuesday saturday sunday closed thanks please "
    "summarize translate ein das fahrrad ist rot blue red green house cat dog runs sits user assistant system"
).split()


def build_tiny_llama(path: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A 2-layer, width-32 Llama with a word-level tokenizer and a ChatML chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    vocab = {w: i for i, w in enumerate(special + sorted(set(LM_WORDS)) + [":", ".", "?", ",", "!"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<pad>",
        bos_token="<|im_start|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=vocab["<pad>"], eos_token_id=vocab["<|im_end|>"], bos_token_id=vocab["<|im_start|>"],
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def build_tiny_bpe_llama(path: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A 2-layer, width-64 Llama with a byte-level BPE tokenizer (GPT-2 style, as SmolLM2's), trained
    here on the LM words, and a ChatML chat template: a model that GGUF export and llama.cpp take."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([" ".join(LM_WORDS[i:] + LM_WORDS[:i]) for i in range(len(LM_WORDS))], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<|endoftext|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", bos_token="<|im_start|>")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=backend.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=2, eos_token_id=2,
        bos_token_id=1, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bpe_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bpe_llama(tmp_path_factory.mktemp("tiny-bpe-llama"))


def tensorboard_events(folder: Path):
    """TensorBoard's own reader over the event files in `folder`, every scalar kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return events


def loop_state(run_dir: Path) -> dict | None:
    """The loop position of a run's last checkpoint, or None while there is none. Reads through
    lmtune's own `existing_dir` (a kill may fall between the two renames of a checkpoint) and takes
    a checkpoint being replaced at this moment as not there yet."""
    import json

    from lmtune.core.rundir import existing_dir

    last = existing_dir(run_dir / "checkpoints" / "last")
    try:
        return json.loads((last / "loop_state.json").read_text()) if last else None
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for_checkpoint(run_dir: Path, ready, proc, timeout: float = 600) -> dict | None:
    """Wait until the running process `proc` has written a checkpoint whose loop state satisfies
    `ready`: polls the folder (nothing to block on across processes) and returns early if the
    process ends. The generous timeout only guards against a hung run; the test then fails on its
    own assertions, not on the clock."""
    import time

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        state = loop_state(run_dir)
        if state is not None and ready(state):
            return state
        time.sleep(0.05)
    return loop_state(run_dir)


def report_sections(run_dir: Path) -> set[str]:
    """The sections of a run's report.html (their ids), after checking that every embedded image
    is a PNG and that the page has no script."""
    import base64
    import re

    page = (run_dir / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert images and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "<script" not in page
    return set(re.findall(r'<section id="([^"]+)"', page))
