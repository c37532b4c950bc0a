"""Text encoders for the text prompt: word features (B, L, d), a padding mask and a sentence feature.

* ``SmallTextEncoder``: a word-level tokenizer over a fixed vocabulary plus a small Transformer
  encoder with a [CLS] token (its output plays the role of RoBERTa's ``pooler_output``); trained here.
* ``HFTextEncoder``: any ``transformers`` encoder (e.g. RoBERTa-base, as in UniPHD) from a local
  directory (``local_files_only=True``), with a clear error when the weights are not there.

Both are followed (in the model) by UniPHD's projections: Linear + LayerNorm + Dropout to d.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from visionlens.errors import AssetError, InputError

SPECIALS = ("<pad>", "<unk>", "<cls>")
FUNCTION_WORDS = frozenset({"a", "an", "the", "in", "on", "of", "with", "and", "to", "is", "at", "by"})


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def build_vocab(captions, min_count: int = 1, limit: int = 5000) -> tuple:
    counts: dict[str, int] = {}
    for c in captions:
        for w in words_of(c):
            counts[w] = counts.get(w, 0) + 1
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))[:limit]
    return SPECIALS + tuple(sorted(words))


class SmallTextEncoder(nn.Module):
    def __init__(self, vocab, width: int, layers: int = 1, heads: int = 4, max_words: int = 16):
        super().__init__()
        if not vocab:
            raise InputError("the small text encoder needs a vocabulary (config.vocab); build it with build_vocab(captions)")
        self.vocab = {w: i for i, w in enumerate(vocab)}
        self.max_words = max_words
        self.embed = nn.Embedding(len(vocab), width)
        self.position = nn.Parameter(torch.randn(max_words + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_dim = width

    def content_words(self, text: str) -> list[str]:
        """The words of ``text`` in the vocabulary, function words ("a", "the", "in", ...) left out."""
        return [w for w in words_of(text) if w in self.vocab and w not in FUNCTION_WORDS and w not in SPECIALS]

    def check_known(self, text: str) -> None:
        """Refuse, in one line, a prompt without a content word in the vocabulary: every word of it
        would be ``<unk>``, and the prediction would not follow the text."""
        if not self.content_words(text):
            known = [w for w in self.vocab if w not in SPECIALS and w not in FUNCTION_WORDS]
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            raise InputError(f"no word of {text!r} is known to the model's small text encoder (its vocabulary: "
                             f"{shown}); describe the person with those words, or give --point or --scribble")

    def tokenize(self, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), self.max_words + 1, dtype=torch.long)
        for i, t in enumerate(texts):
            toks = [self.vocab["<cls>"]] + [self.vocab.get(w, 1) for w in words_of(t)][: self.max_words]
            ids[i, : len(toks)] = torch.tensor(toks)
        return ids.to(device), (ids == 0).to(device)

    def forward(self, texts: list[str], device):
        ids, pad = self.tokenize(texts, device)
        x = self.encoder(self.embed(ids) + self.position, src_key_padding_mask=pad)
        return x[:, 1:], pad[:, 1:], x[:, 0]


TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",), ("tokenizer.model",),
                   ("spiece.model",), ("sentencepiece.bpe.model",))


def check_hf_dir(path: str) -> None:
    """A text-encoder folder that is missing, or lacks config.json or a tokenizer's files: one line
    naming what it lacks, before transformers is asked (its own message is cut off or vague)."""
    folder = Path(path)
    save = "(model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR) write them)"
    if not folder.is_dir():
        raise AssetError(f"text encoder directory not found: {path}; save a transformers model there "
                         "(model.save_pretrained + tokenizer.save_pretrained) or use text_encoder='small'")
    if not (folder / "config.json").is_file():
        raise AssetError(f"text encoder folder {path} has no config.json {save}")
    if not any(all((folder / name).is_file() for name in files) for files in TOKENIZER_FILES):
        raise AssetError(f"text encoder folder {path} has no tokenizer files (tokenizer.json, vocab.json + merges.txt, "
                         f"vocab.txt or a sentencepiece .model) {save}")


class HFTextEncoder(nn.Module):
    """A local ``transformers`` encoder: word features = last hidden state, sentence = pooler output
    (or the first token when the model has no pooler)."""

    def __init__(self, path: str, max_words: int = 32):
        super().__init__()
        check_hf_dir(path)
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as err:
            raise AssetError("a transformers text encoder needs transformers (a dependency of visionlens-refer): "
                             "pip install transformers") from err
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.text_backbone = AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise AssetError(f"cannot load a transformers text encoder from {path}: {str(err).splitlines()[0]}") from err
        self.max_words = max_words
        self.out_dim = self.text_backbone.config.hidden_size

    def forward(self, texts: list[str], device):
        tok = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_words, return_tensors="pt").to(device)
        out = self.text_backbone(**tok)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state[:, 0]
        return out.last_hidden_state, tok["attention_mask"] == 0, pooled


def build_text_encoder(config) -> nn.Module:
    """``small``, or a local ``transformers`` folder given as ``hf:DIR`` (the model-spec form) or ``DIR``."""
    if config.text_encoder == "small":
        return SmallTextEncoder(config.vocab, config.d_model, config.text_layers, config.heads, config.max_words)
    path = config.text_encoder[3:] if config.text_encoder.startswith("hf:") else config.text_encoder
    return HFTextEncoder(path, config.max_words)
