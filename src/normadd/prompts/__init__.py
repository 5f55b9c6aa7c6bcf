"""Prompts: template ensembles, offline and LLM phrase generators, cached text embeddings."""

from normadd.prompts.llm import LLMPhraseGenerator
from normadd.prompts.phrases import OfflinePhraseGenerator, PhraseGenerator
from normadd.prompts.templates import ABNORMAL_STATES, NORMAL_STATES, TEMPLATES, expand_templates
from normadd.prompts.text_embedding import TextEmbedder, ensemble_embedding
from normadd.prompts.validation import clean_text

__all__ = [
    "ABNORMAL_STATES",
    "NORMAL_STATES",
    "TEMPLATES",
    "LLMPhraseGenerator",
    "OfflinePhraseGenerator",
    "PhraseGenerator",
    "TextEmbedder",
    "clean_text",
    "ensemble_embedding",
    "expand_templates",
]
