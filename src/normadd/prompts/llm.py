"""Optional phrase generator that asks an OpenAI-compatible chat endpoint (the ``[llm]`` extra).

Settings come from the environment: ``NORMADD_LLM_BASE_URL`` (default the OpenAI API),
``NORMADD_LLM_MODEL`` and the key in ``NORMADD_LLM_API_KEY`` or ``OPENAI_API_KEY``. Answers are
cached on disk per (endpoint, model, class, text); any failure (no key, no network, timeout,
an answer that is not a phrase list) falls back to the offline generator with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from normadd.cache import atomic_write_bytes, cache_dir, cache_key
from normadd.errors import printable
from normadd.prompts.phrases import MAX_PHRASES, OfflinePhraseGenerator, PhraseGenerator
from normadd.prompts.validation import clean_text

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
PROMPT = (
    "An industrial inspection system checks images of a {obj}. The defect type '{text}' is now "
    "acceptable. Write {n} short visual state phrases (2 to 6 words) that describe a {obj} "
    "showing this defect, such as 'fractured capsule' or 'capsule with a poke hole'. "
    "Answer with a JSON list of strings only."
)


class LLMPhraseGenerator:
    """Phrases written by an LLM, cached on disk, with the offline generator as fallback."""

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 20.0,
        fallback: PhraseGenerator | None = None,
        transport: Any = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("NORMADD_LLM_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.model = model or os.environ.get("NORMADD_LLM_MODEL") or DEFAULT_MODEL
        self.api_key = api_key or os.environ.get("NORMADD_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.timeout_s = timeout_s
        self.fallback = fallback or OfflinePhraseGenerator()
        self._transport = transport  # an httpx transport, for tests

    def phrases(self, class_name: str, text: str) -> list[str]:
        """Phrases from the cache, else the endpoint, else the offline generator (with a warning)."""
        obj = clean_text(class_name, "class name")
        defect = clean_text(text)
        path = cache_dir("llm") / f"{cache_key(self.base_url, self.model, obj, defect)}.json"
        if path.is_file():
            return list(json.loads(path.read_text()))
        try:
            answer = self._ask(obj, defect)
        except Exception as error:
            logger.warning("LLM phrase generator unavailable (%s): using offline phrases", printable(str(error)))
            return self.fallback.phrases(obj, defect)
        atomic_write_bytes(path, json.dumps(answer).encode())
        return answer

    def _ask(self, obj: str, text: str) -> list[str]:
        if not self.api_key:
            raise RuntimeError("no API key: set NORMADD_LLM_API_KEY or OPENAI_API_KEY")
        import httpx

        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [{"role": "user", "content": PROMPT.format(obj=obj, text=text, n=6)}],
        }
        with httpx.Client(timeout=self.timeout_s, transport=self._transport) as client:
            response = client.post(
                f"{self.base_url}/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {self.api_key}"},
            )
            response.raise_for_status()
        content = response.json()["choices"][0]["message"]["content"]
        return parse_phrase_list(content)


def parse_phrase_list(content: str) -> list[str]:
    """Read a JSON list of phrases from an LLM answer (code fences tolerated).

    Raises:
        ValueError: The answer holds no usable phrase.
    """
    match = re.search(r"\[.*\]", content, re.DOTALL)
    if match is None:
        raise ValueError("the answer is not a JSON list")
    items = json.loads(match.group(0))
    phrases: list[str] = []
    for item in items:
        if isinstance(item, str):
            try:
                phrases.append(clean_text(item, "phrase"))
            except ValueError:
                continue
    if not phrases:
        raise ValueError("the answer has no usable phrase")
    return list(dict.fromkeys(phrases))[:MAX_PHRASES]
