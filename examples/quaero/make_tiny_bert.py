"""Build a tiny random BERT and its WordPiece tokenizer for offline tests and examples.

The tokenizer is cased and keeps accents. Its vocabulary contains every character of the QUAERO
sample's training text and of a list of French characters, then the most frequent words of
that text, so that French text tokenizes without unknown tokens.
The model has random weights (2 layers, hidden size 128): it makes EDS-NLP's training loop run
in seconds on a CPU, and its scores mean nothing. Both are written with `save_pretrained`, so
`eds.transformer` loads the folder with `model: <OUTDIR>` and no network access.

Usage:
    python examples/quaero/make_tiny_bert.py [OUTDIR] [--data FOLDER] [--force]

The default OUTDIR is `models/tiny-bert` next to this script. The script does nothing when
OUTDIR/config.json already exists, unless `--force` is given. Two runs give identical files.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXAMPLE_DIR = Path(__file__).resolve().parent
DEFAULT_OUTDIR = EXAMPLE_DIR / "models" / "tiny-bert"
DEFAULT_DATA = EXAMPLE_DIR / "data" / "train"

VOCAB_SIZE = 800
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Every character of this list becomes a vocabulary entry, so that words absent from the
# training text still split into known pieces.
EXTRA_CHARACTERS = [
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789",
    "àâäçéèêëîïôöùûüÿœæ ÀÂÄÇÉÈÊËÎÏÔÖÙÛÜŸŒÆ",
    ".,;:!?()[]{}'\"-+/*%<>=_#@&€$°±µ§«»–—’",
]


def read_corpus(data_dir: Path) -> list[str]:
    """Return the lines of every `.txt` file under `data_dir`, in sorted path order.

    Raises:
        FileNotFoundError: `data_dir` contains no `.txt` file.
    """
    paths = sorted(data_dir.rglob("*.txt"))
    if not paths:
        raise FileNotFoundError(
            f"No .txt file found under {data_dir}: pass the QUAERO train folder with --data."
        )
    lines: list[str] = []
    for path in paths:
        lines.extend(path.read_text(encoding="utf-8").splitlines())
    return lines + EXTRA_CHARACTERS


def build_vocabulary(lines: list[str], normalizer: Any, pre_tokenizer: Any) -> dict[str, int]:
    """Return a WordPiece vocabulary: special tokens, every character, then frequent words.

    Each character is added both as a word start and as a `##` continuation, so every word
    made of known characters tokenizes. The most frequent words fill the rest, ties broken
    alphabetically. The `tokenizers` WordPiece trainer is not used because it breaks ties
    differently from one run to the next.
    """
    words: Counter[str] = Counter()
    characters: set[str] = set()
    for line in lines:
        for word, _offsets in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
            words[word] += 1
            characters.update(word)

    tokens = list(SPECIAL_TOKENS)
    tokens += sorted(characters)
    tokens += ["##" + character for character in sorted(characters)]
    known = set(tokens)
    for word, _count in sorted(words.items(), key=lambda item: (-item[1], item[0])):
        if len(tokens) >= VOCAB_SIZE:
            break
        if word not in known:
            tokens.append(word)
            known.add(word)
    return {token: index for index, token in enumerate(tokens)}


def build(outdir: Path, data_dir: Path) -> None:
    """Build the tokenizer and the random model and save both into `outdir`."""
    # Imported here so that `--help` and the "already built" case stay instant. In transformers
    # 5, BertTokenizerFast is an alias created at run time, which mypy does not see.
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocabulary = build_vocabulary(read_corpus(data_dir), normalizer, pre_tokenizer)
    tokenizer = Tokenizer(models.WordPiece(vocab=vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(token, tokenizer.token_to_id(token)) for token in ("[CLS]", "[SEP]")],
    )
    fast_tokenizer = BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=False,
        model_max_length=512,
    )

    config = BertConfig(
        vocab_size=len(fast_tokenizer),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=512,
        pad_token_id=fast_tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = BertModel(config)

    outdir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(outdir)
    fast_tokenizer.save_pretrained(outdir)
    logger.info(
        "Wrote %s: vocabulary %d, %d parameters",
        outdir,
        len(fast_tokenizer),
        sum(parameter.numel() for parameter in model.parameters()),
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and build the model unless it already exists."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "outdir",
        nargs="?",
        type=Path,
        default=DEFAULT_OUTDIR,
        help=f"folder to write the model and tokenizer into (default: {DEFAULT_OUTDIR})",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"folder whose .txt files train the tokenizer (default: {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if OUTDIR/config.json exists"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if (args.outdir / "config.json").exists() and not args.force:
        logger.info("%s already contains a model; pass --force to rebuild it", args.outdir)
        return 0

    # The model is built locally: nothing may be fetched from the Hugging Face Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    build(args.outdir, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
