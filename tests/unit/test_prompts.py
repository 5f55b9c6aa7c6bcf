"""Prompts: APRIL-GAN's ensembles, offline and LLM phrase generators, cached ensemble embeddings."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import httpx
import pytest
import torch

from normadd.backbone import ClipEncoder
from normadd.errors import InvalidTextError
from normadd.prompts import (
    ABNORMAL_STATES,
    NORMAL_STATES,
    TEMPLATES,
    LLMPhraseGenerator,
    OfflinePhraseGenerator,
    TextEmbedder,
    clean_text,
    ensemble_embedding,
    expand_templates,
)
from normadd.prompts.llm import parse_phrase_list
from normadd.prompts.phrases import MAX_PHRASES, with_article
from normadd.prompts.templates import fill_states
from normadd.prompts.validation import MAX_TEXT_CHARS

pytestmark = pytest.mark.usefixtures("one_thread")

FEW_TEMPLATES = ("a photo of a {}.", "a close-up photo of the {}.")  # keeps text encoding fast

# --- templates ----------------------------------------------------------------


def test_aprilgan_has_7_normal_states_5_abnormal_states_and_35_templates() -> None:
    assert len(NORMAL_STATES) == 7
    assert len(ABNORMAL_STATES) == 5
    assert len(TEMPLATES) == 35
    assert len(set(TEMPLATES)) == 35


def test_every_state_and_template_holds_one_slot() -> None:
    for pattern in (*NORMAL_STATES, *ABNORMAL_STATES, *TEMPLATES):
        assert pattern.count("{}") == 1


def test_states_take_the_object_name_as_it_is() -> None:
    assert fill_states(NORMAL_STATES, "metal_nut")[:2] == ["metal_nut", "flawless metal_nut"]
    assert fill_states(ABNORMAL_STATES, "bottle")[0] == "damaged bottle"


def test_expansion_puts_every_phrase_in_every_template() -> None:
    sentences = expand_templates(["flawless bottle", "perfect bottle", "bottle"])
    assert len(sentences) == 3 * 35
    assert len(set(sentences)) == 3 * 35


def test_expansion_is_phrase_major() -> None:
    assert expand_templates(["a", "b"], ["x {}.", "y {}."]) == ["x a.", "y a.", "x b.", "y b."]
    sentences = expand_templates(["flawless bottle", "perfect bottle"])
    assert sentences[0] == "a bad photo of a flawless bottle."
    assert sentences[34] == "this is one flawless bottle in the scene."
    assert sentences[35] == "a bad photo of a perfect bottle."


# --- offline phrase generator -------------------------------------------------


def test_poke_on_capsule_gives_poked_capsule() -> None:
    phrases = OfflinePhraseGenerator().phrases("capsule", "poke")
    assert "poked capsule" in phrases
    assert "capsule with a poke hole" in phrases


def test_broken_on_bottle_gives_broken_and_cracked_bottle() -> None:
    phrases = OfflinePhraseGenerator().phrases("bottle", "broken")
    assert phrases[0] == "broken bottle"  # the plain "<text> <class>" first
    assert "cracked bottle" in phrases


def test_lexicon_words_are_found_in_any_spelling() -> None:
    generator = OfflinePhraseGenerator()
    assert generator.phrases("bottle", "Broken") == generator.phrases("bottle", "broken")
    assert generator.phrases("pill", "faulty_imprint") == generator.phrases("pill", "faulty imprint")
    assert generator.phrases("bottle", "contamination") == generator.phrases("bottle", "  contamination ")
    assert "holed tile" in generator.phrases("tile", "holes")


@pytest.mark.parametrize(("text", "first"), [("wobble", "widget with wobble"), ("smudged", "smudged widget")])
def test_an_unknown_word_gets_rule_based_phrases_naming_the_class(text: str, first: str) -> None:
    phrases = OfflinePhraseGenerator().phrases("widget", text)
    assert phrases[0] == first
    assert len(phrases) >= 2
    assert all("widget" in phrase and text in phrase for phrase in phrases)


def test_phrases_are_unique_and_at_most_the_limit() -> None:
    for text in ("broken", "contamination", "poke", "scratch", "cut"):
        phrases = OfflinePhraseGenerator().phrases("carpet", text)
        assert 1 <= len(phrases) <= MAX_PHRASES
        assert len(set(phrases)) == len(phrases)
    assert len(OfflinePhraseGenerator(limit=2).phrases("bottle", "broken")) == 2


def test_the_offline_generator_is_deterministic() -> None:
    assert OfflinePhraseGenerator().phrases("cable", "cut") == OfflinePhraseGenerator().phrases("cable", "cut")


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\t\n", "x" * (MAX_TEXT_CHARS + 1), "one two three four five six seven eight nine"],
)
def test_empty_blank_or_over_long_text_raises_invalid_text(text: str) -> None:
    with pytest.raises(InvalidTextError):
        OfflinePhraseGenerator().phrases("bottle", text)


HOSTILE_LOOKING_TEXTS = [
    "dent (small)",
    "oil stain 10%",
    "{}",
    "{{7*7}}",
    "${7*7} {0.__class__}",
    "scratch; rm -rf /",
    "<b>scratch</b>",
    "<script>alert(1)</script>",
    "'; DROP TABLE normalities;--",
    "../../etc/passwd",
    "C:\\Windows\\win.ini",
    "キズ (小)",
    "Kratzer ä/ö/ü",
    '"quoted", comma',
]


@pytest.mark.parametrize("text", HOSTILE_LOOKING_TEXTS)
def test_any_printable_text_is_accepted_as_it_is(text: str) -> None:
    assert clean_text(text) == text
    phrases = OfflinePhraseGenerator().phrases("bottle", text)
    assert phrases and not any("49" in phrase for phrase in phrases)  # never evaluated as a template
    for prompt in expand_templates(phrases, TEMPLATES):
        assert "{" not in text or "{" in prompt  # braces reach the prompt as text


@pytest.mark.parametrize("text", ["scr\x1b[2Jatch", "a\x00b", "line\nbreak", "\u202eevil", "bell\x07"])
def test_control_characters_are_refused_and_shown_escaped(text: str) -> None:
    with pytest.raises(InvalidTextError, match="control characters") as caught:
        clean_text(text)
    message = str(caught.value)
    assert all(ch.isprintable() for ch in message)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("uneven area", "an uneven area"),
        ("oil stain", "an oil stain"),
        ("unit defect", "a unit defect"),
        ("scratch", "a scratch"),
        ("air bubble", "an air bubble"),
        ("hour mark", "an hour mark"),
        ("European plug", "a European plug"),
    ],
)
def test_article_agrees_with_the_first_sound(words: str, expected: str) -> None:
    assert with_article(words) == expected


def test_generated_phrases_never_say_a_before_a_vowel() -> None:
    generator = OfflinePhraseGenerator()
    for text in ["uneven", "oil", "odd", "irregular", "inclusion", "abrasion", "elongated"]:
        for phrase in generator.phrases("bottle", text):
            words = phrase.split()
            for article, following in itertools.pairwise(words):
                if article == "a":
                    assert following[0] not in "aeio", phrase


def test_an_empty_class_name_raises_invalid_text() -> None:
    with pytest.raises(InvalidTextError, match="class name"):
        OfflinePhraseGenerator().phrases(" ", "scratch")


def test_clean_text_trims_and_collapses_spaces() -> None:
    assert clean_text("  small   scratch ") == "small scratch"


def test_invalid_text_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        clean_text("")


# --- ensemble embedding -------------------------------------------------------


def test_ensemble_normalises_each_sentence_then_the_mean() -> None:
    sentences = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    # normalised: [1, 0] and [0, 1]; mean [0.5, 0.5]; normalised [1/√2, 1/√2]
    expected = torch.tensor([1.0, 1.0]) / 2**0.5
    assert torch.allclose(ensemble_embedding(sentences), expected)
    plain_mean = torch.nn.functional.normalize(sentences.mean(dim=0), dim=-1)  # the mistake
    assert not torch.allclose(plain_mean, expected, atol=1e-2)


def test_ensemble_embedding_has_unit_length_and_ignores_sentence_scale() -> None:
    sentences = torch.randn(12, 32, generator=torch.Generator().manual_seed(0))
    scales = torch.rand(12, 1, generator=torch.Generator().manual_seed(1)) * 10 + 0.1
    embedding = ensemble_embedding(sentences)
    assert embedding.shape == (32,)
    assert embedding.norm() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(ensemble_embedding(sentences * scales), embedding, atol=1e-6)


# --- text embedder and its cache ----------------------------------------------


def test_the_embedding_is_the_ensemble_of_every_phrase_in_every_template(
    tiny_encoder: ClipEncoder,
) -> None:
    embedder = TextEmbedder(tiny_encoder, FEW_TEMPLATES)
    phrases = ["poked capsule", "capsule with a poke hole"]
    expected = ensemble_embedding(tiny_encoder.encode_texts(expand_templates(phrases, FEW_TEMPLATES)))
    assert torch.allclose(embedder.embed_phrases(phrases), expected, atol=1e-6)
    assert embedder.encoded_prompts == 4


def test_a_second_call_for_the_same_phrases_encodes_nothing(tiny_encoder: ClipEncoder) -> None:
    embedder = TextEmbedder(tiny_encoder, FEW_TEMPLATES)
    first = embedder.embed_phrases(["broken bottle", "cracked bottle"])
    assert embedder.encoded_prompts == 4
    second = embedder.embed_phrases(["broken bottle", "cracked bottle"])
    assert embedder.encoded_prompts == 4
    assert torch.equal(first, second)


def test_a_fresh_embedder_on_the_same_encoder_reads_the_disk_cache(tiny_encoder: ClipEncoder, cache_root: Path) -> None:
    first = TextEmbedder(tiny_encoder, FEW_TEMPLATES).embed_phrases(["broken bottle"])
    assert len(list((cache_root / "text").glob("*.pt"))) == 1
    again = ClipEncoder.from_name("tiny-random")  # another object, the same backbone and weights
    fresh = TextEmbedder(again, FEW_TEMPLATES)
    assert torch.equal(fresh.embed_phrases(["broken bottle"]), first)
    assert fresh.encoded_prompts == 0


def test_other_phrases_are_encoded_anew(tiny_encoder: ClipEncoder) -> None:
    embedder = TextEmbedder(tiny_encoder, FEW_TEMPLATES)
    broken = embedder.embed_phrases(["broken bottle"])
    scratched = embedder.embed_phrases(["scratched bottle"])
    assert embedder.encoded_prompts == 4
    assert not torch.allclose(broken, scratched)


def test_other_templates_are_another_cache_entry(tiny_encoder: ClipEncoder) -> None:
    TextEmbedder(tiny_encoder, FEW_TEMPLATES).embed_phrases(["broken bottle"])
    other = TextEmbedder(tiny_encoder, FEW_TEMPLATES[:1])
    other.embed_phrases(["broken bottle"])
    assert other.encoded_prompts == 1


def test_without_the_disk_cache_a_fresh_embedder_encodes_again(tiny_encoder: ClipEncoder, cache_root: Path) -> None:
    TextEmbedder(tiny_encoder, FEW_TEMPLATES, disk_cache=False).embed_phrases(["broken bottle"])
    fresh = TextEmbedder(tiny_encoder, FEW_TEMPLATES, disk_cache=False)
    fresh.embed_phrases(["broken bottle"])
    assert fresh.encoded_prompts == 2
    assert not list((cache_root / "text").glob("*.pt"))


def test_normal_and_abnormal_use_aprilgans_states(tiny_encoder: ClipEncoder) -> None:
    embedder = TextEmbedder(tiny_encoder, FEW_TEMPLATES)
    normal = embedder.normal("bottle")
    assert embedder.encoded_prompts == 7 * 2
    abnormal = embedder.abnormal("bottle")
    assert embedder.encoded_prompts == (7 + 5) * 2
    assert torch.equal(normal, embedder.embed_phrases(fill_states(NORMAL_STATES, "bottle")))
    assert not torch.allclose(normal, abnormal)


def test_no_phrase_raises(tiny_encoder: ClipEncoder) -> None:
    with pytest.raises(ValueError, match="phrase"):
        TextEmbedder(tiny_encoder, FEW_TEMPLATES).embed_phrases([])


# --- LLM phrase generator -----------------------------------------------------


class FakeEndpoint:
    """An OpenAI-compatible chat endpoint in memory: counts calls and keeps the last request."""

    def __init__(self, content: str = '["poked capsule", "capsule with a puncture"]', status: int = 200) -> None:
        self.content = content
        self.status = status
        self.calls = 0
        self.request: httpx.Request | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.request = request
        body = {"choices": [{"message": {"role": "assistant", "content": self.content}}]}
        return httpx.Response(self.status, json=body)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def llm(endpoint: FakeEndpoint | httpx.MockTransport, api_key: str | None = "test-key") -> LLMPhraseGenerator:
    transport = endpoint.transport if isinstance(endpoint, FakeEndpoint) else endpoint
    return LLMPhraseGenerator(base_url="http://llm.test/v1", model="tiny-llm", api_key=api_key, transport=transport)


def test_llm_phrases_come_from_the_endpoint(cache_root: Path) -> None:
    endpoint = FakeEndpoint()
    assert llm(endpoint).phrases("capsule", "poke") == ["poked capsule", "capsule with a puncture"]
    assert endpoint.calls == 1
    request = endpoint.request
    assert request is not None
    assert str(request.url) == "http://llm.test/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer test-key"
    body = json.loads(request.content)
    assert body["model"] == "tiny-llm"
    prompt = body["messages"][0]["content"]
    assert "capsule" in prompt and "'poke'" in prompt
    assert len(list((cache_root / "llm").glob("*.json"))) == 1


def test_llm_phrases_are_cached_on_disk(cache_root: Path) -> None:
    endpoint = FakeEndpoint()
    first = llm(endpoint).phrases("capsule", "poke")
    second = llm(endpoint).phrases("capsule", "poke")  # a fresh generator: the disk cache answers
    assert second == first
    assert endpoint.calls == 1
    llm(endpoint).phrases("capsule", "crack")  # another text asks again
    assert endpoint.calls == 2


def test_the_api_key_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    endpoint = FakeEndpoint()
    assert llm(endpoint, api_key=None).phrases("capsule", "poke")[0] == "poked capsule"
    assert endpoint.request is not None
    assert endpoint.request.headers["Authorization"] == "Bearer from-env"


def test_without_an_api_key_the_offline_phrases_are_used_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = FakeEndpoint()
    with caplog.at_level(logging.WARNING, logger="normadd.prompts.llm"):
        phrases = llm(endpoint, api_key=None).phrases("capsule", "poke")
    assert phrases == OfflinePhraseGenerator().phrases("capsule", "poke")
    assert endpoint.calls == 0
    assert "API key" in caplog.text and "offline" in caplog.text


def test_a_timeout_falls_back_to_offline_phrases_and_caches_nothing(
    caplog: pytest.LogCaptureFixture, cache_root: Path
) -> None:
    def time_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    with caplog.at_level(logging.WARNING, logger="normadd.prompts.llm"):
        phrases = llm(httpx.MockTransport(time_out)).phrases("capsule", "poke")
    assert phrases == OfflinePhraseGenerator().phrases("capsule", "poke")
    assert "timed out" in caplog.text
    assert not list((cache_root / "llm").glob("*.json"))
    endpoint = FakeEndpoint()  # the next call asks again rather than reading a cached fallback
    assert llm(endpoint).phrases("capsule", "poke") == ["poked capsule", "capsule with a puncture"]
    assert endpoint.calls == 1


def test_a_server_error_falls_back_to_offline_phrases(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="normadd.prompts.llm"):
        phrases = llm(FakeEndpoint(status=500)).phrases("bottle", "broken")
    assert phrases == OfflinePhraseGenerator().phrases("bottle", "broken")
    assert "offline" in caplog.text


def test_an_answer_that_is_not_a_phrase_list_falls_back_to_offline_phrases() -> None:
    phrases = llm(FakeEndpoint(content="I cannot help with that.")).phrases("bottle", "broken")
    assert phrases == OfflinePhraseGenerator().phrases("bottle", "broken")


def test_the_llm_generator_refuses_invalid_text_before_asking() -> None:
    endpoint = FakeEndpoint()
    with pytest.raises(InvalidTextError):
        llm(endpoint).phrases("bottle", "   ")
    assert endpoint.calls == 0


def test_parse_phrase_list_reads_a_fenced_json_answer() -> None:
    answer = 'Here you go:\n```json\n["poked capsule", "capsule with a poke hole"]\n```'
    assert parse_phrase_list(answer) == ["poked capsule", "capsule with a poke hole"]


def test_parse_phrase_list_drops_duplicates_and_invalid_phrases_and_caps_the_count() -> None:
    items = ["a b", "a b", 3, "", "c\x1bd", *[f"phrase {i}" for i in range(20)]]
    phrases = parse_phrase_list(json.dumps(items))
    assert phrases[0] == "a b"
    assert "c\x1bd" not in phrases and "" not in phrases
    assert len(phrases) == MAX_PHRASES
    assert len(set(phrases)) == len(phrases)


@pytest.mark.parametrize("answer", ["no list here", '{"phrase": "broken bottle"}', "[1, 2, 3]", '[""]', "[]"])
def test_parse_phrase_list_rejects_answers_without_usable_phrases(answer: str) -> None:
    with pytest.raises(ValueError):
        parse_phrase_list(answer)
