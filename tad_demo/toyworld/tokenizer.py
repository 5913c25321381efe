"""An offline CLIPTokenizer for the shapes world.

The real SD tokenizer has 49,408 entries; its embedding table alone would be larger than our whole UNet. This
one is a genuine CLIP BPE vocabulary (so ``CLIPTokenizer.from_pretrained`` loads it unchanged) built from
single characters plus merges that spell every world word as one token. Unknown words still tokenize, into
characters, never into ``<|endoftext|>``.

CLIP's text models pool at the argmax of the ids, so ``<|endoftext|>`` must have the highest id.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from .world import world_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word (the same greedy lowest-rank-first loop as ``CLIPTokenizer.bpe``)."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def _merges_for(words: list[str]) -> list[tuple[str, str]]:
    """Left-to-right prefix merges for each word, longest words first.

    BPE applies the lowest-ranked merge present, so a word whose prefix chain comes first always ends as one
    token; a later, shorter word can be cut by an earlier word's merge. We try word orders (longest first,
    then seeded shuffles) until every word is a single token.
    """
    import random

    rng = random.Random(0)
    order = sorted(words, key=lambda w: (-len(w), w))
    for _ in range(1000):
        merges: list[tuple[str, str]] = []
        for word in order:
            symbols = list(word[:-1]) + [word[-1] + "</w>"]
            left = symbols[0]
            for sym in symbols[1:]:
                if (left, sym) not in merges:
                    merges.append((left, sym))
                left += sym
        ranks = {m: i for i, m in enumerate(merges)}
        if all(len(_bpe(w, ranks)) == 1 for w in words):
            return merges
        rng.shuffle(order)
    raise RuntimeError("no merge order makes every world word a single token")


def write_tokenizer(out_dir: str | Path, model_max_length: int = 24) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the configs; returns the folder.

    ``model_max_length`` = 24: the longest world prompt is 16 tokens with BOS/EOS; SD's 77 would only
    multiply attention cost by three for padding.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    words = world_words()
    chars = sorted(set(string.ascii_lowercase + string.digits + "'.,!?-"))
    vocab: list[str] = [*chars, *(c + "</w>" for c in chars)]
    merges = _merges_for(words)
    for a, b in merges:
        if a + b not in vocab:
            vocab.append(a + b)
    vocab += [BOS, EOS]  # EOS last: highest id, where CLIPTextModel pools
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "do_lower_case": True, "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2))
    return out


def check_tokenizer(tokenizer) -> None:
    """Raise if a world word is not a single known token."""
    unk = tokenizer.unk_token_id
    for word in world_words():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1 or ids[0] == unk:
            raise ValueError(f"world word {word!r} tokenizes to {tokenizer.convert_ids_to_tokens(ids)}")
