"""MLLM backends that write LGD's descriptions: a local ``transformers`` model and an
OpenAI-compatible server on the loopback interface (llama.cpp, ollama, vLLM started by the user).
Both take the prompts from ``prompts.json`` and clean the answer (``prompts.clean_description``).
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from visionlens.errors import InputError, VisionlensError

from .local_weights import loading, model_dir, require_transformers
from .prompts import build_prompt, clean_description, load_prompts

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        return Image.open(image).convert("RGB")
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


class HFLocalDescriber:
    """A local model folder: image-text-to-text models (config with ``vision_config``) get the
    image and prompt through their processor's chat template; text-only causal LMs get the prompt
    only (they do not see the image: useful for plumbing tests, not for LGD). Greedy decoding."""

    def __init__(self, path: str | Path | None = None, max_new_tokens: int = 40, prompts: dict | None = None,
                 device: str = "cpu"):
        tf = require_transformers()
        self.path = model_dir(path, "MLLM", "VISIONLENS_MLLM", "llava-hf/llava-1.5-7b-hf")
        self.prompts = prompts or load_prompts()
        with loading("MLLM", self.path):
            config = tf.AutoConfig.from_pretrained(self.path, local_files_only=True)
            self.multimodal = hasattr(config, "vision_config")
            if self.multimodal:
                self.processor = tf.AutoProcessor.from_pretrained(self.path, local_files_only=True)
                self.model = tf.AutoModelForImageTextToText.from_pretrained(self.path, local_files_only=True)
            else:
                self.processor = tf.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                self.model = tf.AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True)
        self.model.eval().to(device)
        self.device, self.max_new_tokens = device, max_new_tokens
        self.name = f"hf:{self.path.name}"

    @torch.no_grad()
    def describe(self, image, expression: str, kind: str, image_id: str = "", scene=None) -> str:
        prompt = build_prompt(kind, expression, self.prompts)
        if self.multimodal:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = self.processor(text=text, images=to_pil(image), return_tensors="pt")
        else:
            inputs = self.processor(prompt, return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answer = out[0, inputs["input_ids"].shape[1]:]
        tok = getattr(self.processor, "tokenizer", self.processor)
        return clean_description(tok.decode(answer, skip_special_tokens=True))


class LoopbackDescriber:
    """POST ``/v1/chat/completions`` to a server on 127.0.0.1 / localhost / ::1 only, with the
    image as a PNG data URL; temperature 0."""

    def __init__(self, url: str, model: str, timeout: float = 120.0, prompts: dict | None = None,
                 max_tokens: int = 60):
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or parsed.hostname not in LOOPBACK:
            raise InputError(f"MLLM server URL must be http(s) on 127.0.0.1 / localhost / ::1, got {url!r}")
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/v1/chat/completions")
        self.model, self.timeout, self.max_tokens = model, timeout, max_tokens
        self.prompts = prompts or load_prompts()
        self.name = f"openai-loopback:{model}"

    def describe(self, image, expression: str, kind: str, image_id: str = "", scene=None) -> str:
        buf = io.BytesIO()
        to_pil(image).save(buf, format="PNG")
        data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens, "messages": [{
            "role": "user", "content": [{"type": "text", "text": build_prompt(kind, expression, self.prompts)},
                                        {"type": "image_url", "image_url": {"url": data_url}}]}]}
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
            with opener.open(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read().decode())
            return clean_description(reply["choices"][0]["message"]["content"])
        except urllib.error.URLError as err:
            raise VisionlensError(f"MLLM server {self.url} unreachable: {err.reason}; start it or use a cache") from None
        except (TimeoutError, OSError) as err:
            raise VisionlensError(f"MLLM server {self.url} unreachable or too slow: {err}; start it or use a cache") from None
        except (KeyError, IndexError, TypeError, json.JSONDecodeError) as err:
            raise VisionlensError(f"MLLM server {self.url} gave no chat completion: {err}") from None
