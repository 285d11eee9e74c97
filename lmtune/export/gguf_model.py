"""A causal LM of the Llama family as a GGUF file that llama.cpp runs as it is: the weights under
llama.cpp's tensor names (q and k rows reordered for its rotary layout), f32, f16 or q8_0 by the
`gguf` package's writer and quantizer; the tokenizer, its special tokens, the end-of-turn token and
the chat template in the metadata; and an Ollama Modelfile beside it (ollama.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..core.errors import LmtuneError
from ..infer.saved_run import SavedRun
from ..tasks.chat import PLAIN_CHAT_TEMPLATE
from ..tasks.decoding import turn_end_ids
from .ollama import write_modelfile

QUANT = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
FAMILIES = ("llama",)  # config.model_type values written as llama.cpp's `llama` architecture


def write_gguf(model: Any, tokenizer: Any, saved: SavedRun, folder: Path, *, type: str, log=print) -> Path:
    """Write `<run name>-<type>.gguf` and its Modelfile into `folder`; return the GGUF file."""
    config = model.config
    check_family(config, saved)
    path = folder / f"{saved.name}-{type}.gguf"
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    add_model_metadata(writer, config, saved, type)
    ends = turn_end_ids(tokenizer, model)  # the tokens that end an answer: metadata and Modelfile stops
    template = add_tokenizer(writer, tokenizer, ends, config.vocab_size, log=log)
    for name, data, qtype in gguf_tensors(model, config, type):
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    write_modelfile(folder / "Modelfile", path.name, tokenizer, template,
                    stops=[tokenizer.convert_ids_to_tokens(i) for i in ends], log=log)
    log(f"export: {path.name}, {path.stat().st_size / 2**20:.1f} MiB ({type}), and an Ollama Modelfile")
    return path


def check_family(config: Any, saved: SavedRun) -> None:
    """Llama-architecture models with plain rotary embeddings; anything else is one line."""
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        arch = ", ".join(getattr(config, "architectures", None) or []) or "unknown architecture"
        raise LmtuneError(f"{saved.folder}: GGUF export knows the Llama family; this model is {family!r} ({arch})")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise LmtuneError(f"{saved.folder}: GGUF export supports plain rotary embeddings; this model uses "
                          f"rope scaling {rope.get('rope_type')!r}")


def add_model_metadata(writer: Any, config: Any, saved: SavedRun, type: str) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(saved.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(FILE_TYPE[type])


# ------------------------------------------------------------ weights


def rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """transformers rotates each head's two halves (rotate_half); llama.cpp rotates neighbouring
    pairs. The rows of q_proj and k_proj are reordered so that each head's first-half row i and
    second-half row i become neighbours (transformers' GGUF loader undoes this when it reads)."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model: Any, config: Any, type: str):
    """(llama.cpp name, data, GGML type) for each weight: 2-D weights in `type`, norms in f32."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reads the token embeddings as the output head when there is none
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise LmtuneError(f"GGUF export: no llama.cpp name for the weight {hf_name!r}")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = rotary_rows(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = rotary_rows(data, kv_heads)
        yield (name, *encoded(data, type))


def encoded(data: np.ndarray, type: str) -> tuple[np.ndarray, Any]:
    """1-D tensors stay f32 (llama.cpp's norms are); a matrix whose rows do not split into q8_0's
    blocks of 32 stays f16."""
    if data.ndim == 1 or type == "f32":
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if type == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[QUANT["q8_0"]][0] == 0:
        return gguf.quants.quantize(data, QUANT["q8_0"]), QUANT["q8_0"]
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


# ------------------------------------------------------------ tokenizer


def add_tokenizer(writer: Any, tokenizer: Any, ends: list[int], vocab_size: int, *, log=print) -> str:
    """The vocabulary, merges, special tokens and chat template; returns the chat template written."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = spec["model"]["type"]
    if kind != "BPE" or not is_byte_level(spec):
        raise LmtuneError(f"GGUF export writes byte-level BPE tokenizers (GPT-2 style, as SmolLM2's and Llama 3's); "
                          f"this one is {kind}{'' if kind != 'BPE' else ' without byte-level pieces'}")
    tokens, types = token_list(spec, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec, log=log))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{key}_token_id", None)
        if token_id is not None:
            add(token_id)
    turn_ends = [i for i in ends if i != tokenizer.eos_token_id]
    if turn_ends:
        writer.add_eot_token_id(turn_ends[0])
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])
    template = getattr(tokenizer, "chat_template", None) or PLAIN_CHAT_TEMPLATE
    writer.add_chat_template(template)
    return template


def is_byte_level(spec: dict[str, Any]) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))


def token_list(spec: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token up to the model's vocabulary size (ids beyond the tokenizer padded, as
    llama.cpp's converter pads them), and its type: special added tokens are control tokens."""
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    tokens, types = [], []
    T = gguf.TokenType
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(T.CONTROL if added[i].get("special") else T.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(T.NORMAL)
    return tokens, types


# The pre-tokenizers lmtune recognises by their tokenizer.json form, as llama.cpp names them. llama.cpp
# splits the text with the named rule before BPE, so the name must match what the tokenizer does.
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def pre_tokenizer_name(spec: dict[str, Any], *, log=print) -> str:
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and parts[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
        return "llama-bpe"
    log(f"export: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) has no llama.cpp name known to "
        "lmtune; written as 'default', which llama.cpp splits as GPT-2 does")
    return "default"
