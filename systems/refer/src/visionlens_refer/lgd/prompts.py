"""The two MLLM prompts (kept in ``prompts.json``) and the post-processing of their answers:
strip, keep the first sentence, force the "A photo of" prefix, cap at 77 word pieces."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from visionlens.errors import InputError

PROMPTS_FILE = Path(__file__).with_name("prompts.json")
KINDS = ("attribute", "surrounding")
MAX_TOKENS = 77


@lru_cache(maxsize=4)
def load_prompts(path: str | None = None) -> dict:
    """``{"version", "attribute", "surrounding"}`` from ``prompts.json`` or another file."""
    p = Path(path) if path else PROMPTS_FILE
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read the prompt file {p}: {err}") from None
    missing = [k for k in ("version", *KINDS) if k not in data]
    if missing:
        raise InputError(f"prompt file {p} lacks {', '.join(missing)}")
    return data


def build_prompt(kind: str, expression: str, prompts: dict | None = None) -> str:
    if kind not in KINDS:
        raise InputError(f"unknown description kind {kind!r}; choose from {', '.join(KINDS)}")
    return (prompts or load_prompts())[kind].replace("{expression}", expression.strip())


def clean_description(text: str, max_tokens: int = MAX_TOKENS) -> str:
    """First sentence of an MLLM answer, prefixed "A photo of", at most ``max_tokens`` words
    (a conservative stand-in for CLIP's 77-token limit; the CLIP tokenizer truncates too)."""
    text = " ".join(str(text).strip().strip('"').split())
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".!? ")
    if not first:
        return ""
    if not first.lower().startswith("a photo of"):
        first = "A photo of " + first[0].lower() + first[1:]
    return " ".join(first.split()[:max_tokens])
