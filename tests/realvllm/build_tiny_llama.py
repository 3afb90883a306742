"""Build a tiny random-weight Llama with the real Llama-3 tokenizer, for the real-vLLM test tier.

The vocabulary comes from the `quicktok-v1` package's data files (``llama3.vocab``: u32 count,
then per token u16 length, the raw bytes, u32 rank; ``llama3.special``: u32 count, then per
token u32 id, u16 length, the UTF-8 text). From the ranks we write a Hugging Face byte-level BPE
``tokenizer.json`` that tokenizes exactly like quicktok "llama3" (and so like Meta's Llama-3):

- merges: every split ``(left, right)`` of a token whose two halves are tokens too, ordered by
  the rank of the merged token. tiktoken-style BPE repeatedly merges the adjacent pair whose
  concatenation has the lowest rank; HF BPE merges the pair listed first, so ordering the list
  by the result's rank makes the two pick the same pair at every step.
- ``ignore_merges``: a pre-token that is itself in the vocabulary is one token (tiktoken's rule).
- the Llama-3 pre-tokenizer regex, byte-level mapping without a prefix space, and the 256
  special tokens (``<|begin_of_text|>`` prepended when special tokens are added).

The model is a ``LlamaForCausalLM`` with random weights (hidden 256, 2 layers, 4 heads of 64,
tied embeddings: ~33M parameters, ~70 MB in bf16) and the Llama-3 Instruct chat template, the
one ``litellm_dualpool.core.chat_template.render_llama3`` writes out for tool-less chats.

Run with the interpreter of ``.venv-vllm`` (torch, transformers, tokenizers):
``python tests/realvllm/build_tiny_llama.py --quicktok-data DIR --out .cache/tiny-llama3``.
``--tokenizer-only`` needs only ``tokenizers``. The output directory gets a ``.stamp`` naming
the inputs' digest; a directory with the same digest is reused as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
from pathlib import Path

#: Llama-3's pre-tokenizer regex (the Split pattern of Meta's tokenizer.json).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKENS = ("<|end_of_text|>", "<|eot_id|>")
#: Llama-3 Instruct's template for chats without tools (BOS, then per message header + trimmed
#: content + eot, then the assistant header when a generation prompt is asked for).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
    "+ (message['content'] | trim) + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
#: The architecture: small enough for CPU inference in milliseconds per token. head_dim 64
#: (not smaller): vLLM's CPU attention kernels do not support head_dim 16.
MODEL_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
}
#: Positions the model supports; the servers' --max-model-len must not exceed it.
MAX_POSITION_EMBEDDINGS = 8192
SEED = 20240418
BUILD_VERSION = "1"


def read_vocab(path: Path) -> dict[bytes, int]:
    """quicktok's ``.vocab`` file: token bytes -> rank."""
    data = path.read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    offset, ranks = 4, {}
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, offset)
        offset += 2
        token = data[offset:offset + length]
        offset += length
        (rank,) = struct.unpack_from("<I", data, offset)
        offset += 4
        ranks[token] = rank
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} trailing bytes after {count} tokens")
    return ranks


def read_specials(path: Path) -> dict[str, int]:
    """quicktok's ``.special`` file: special token text -> id."""
    data = path.read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    offset, specials = 4, {}
    for _ in range(count):
        token_id, length = struct.unpack_from("<IH", data, offset)
        offset += 6
        specials[data[offset:offset + length].decode("utf-8")] = token_id
        offset += length
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} trailing bytes after {count} tokens")
    return specials


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest are shifted
    past 255 so that every byte is one visible character."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in visible}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every (left, right) split of a token into two tokens, by the merged token's rank (ties:
    by the halves' ranks)."""
    found = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                found.append((rank, ranks[left], ranks[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def build_tokenizer(ranks: dict[bytes, int], specials: dict[str, int]):  # -> tokenizers.Tokenizer
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    to_unicode = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab.update(specials)
    merges = [(text(left), text(right)) for left, right in bpe_merges(ranks)]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True,
                                     fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True,
                                           use_regex=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN}:0 $A:0", pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, specials[BOS_TOKEN])])
    tokenizer.add_special_tokens([
        AddedToken(token, special=True, normalized=False)
        for token, _ in sorted(specials.items(), key=lambda item: item[1])])
    for token, token_id in specials.items():
        if tokenizer.token_to_id(token) != token_id:
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}, "
                               f"expected {token_id}")
    return tokenizer


def write_tokenizer(out: Path, ranks: dict[bytes, int], specials: dict[str, int]) -> None:
    tokenizer = build_tokenizer(ranks, specials)
    tokenizer.save(str(out / "tokenizer.json"))
    vocab_size = len(ranks) + len(specials)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKENS[1],
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKENS[1]}, indent=2) + "\n")
    if vocab_size != 128256:
        raise RuntimeError(f"unexpected Llama-3 vocabulary size {vocab_size}")


def write_model(out: Path, specials: dict[str, int], vocab_size: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    eos_ids = [specials[t] for t in EOS_TOKENS]
    config = LlamaConfig(
        vocab_size=vocab_size, max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        bos_token_id=specials[BOS_TOKEN], eos_token_id=eos_ids, **MODEL_SHAPE)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=specials[BOS_TOKEN],
                                               eos_token_id=eos_ids)
    model.save_pretrained(str(out), safe_serialization=True)


def inputs_digest(data_dir: Path) -> str:
    digest = hashlib.sha256(BUILD_VERSION.encode())
    digest.update(Path(__file__).read_bytes())
    for name in ("llama3.vocab", "llama3.special"):
        digest.update((data_dir / name).read_bytes())
    return digest.hexdigest()[:16]


def build(data_dir: Path, out: Path, *, tokenizer_only: bool = False) -> Path:
    """Build (or reuse) the model directory; returns it."""
    stamp = out / ".stamp"
    wanted = inputs_digest(data_dir) + (":tokenizer" if tokenizer_only else ":model")
    if stamp.exists() and stamp.read_text().strip() in (wanted, wanted.replace(":tokenizer",
                                                                                ":model")):
        return out
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ranks = read_vocab(data_dir / "llama3.vocab")
    specials = read_specials(data_dir / "llama3.special")
    write_tokenizer(staging, ranks, specials)
    if not tokenizer_only:
        write_model(staging, specials, len(ranks) + len(specials))
    (staging / ".stamp").write_text(wanted + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quicktok-data", type=Path, required=True,
                        help="quicktok's data directory (holds llama3.vocab, llama3.special)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--tokenizer-only", action="store_true",
                        help="write only the tokenizer files (needs only `tokenizers`)")
    args = parser.parse_args(argv)
    path = build(args.quicktok_data, args.out, tokenizer_only=args.tokenizer_only)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
