"""Constrained answers (`LLMRequest.choices`) through the real google-genai and openai clients.

The fake servers enforce an enum only when the request carries one, as the real APIs do; the fake
model below answers in chatty free text, so a client that forgot to send the enum, or failed to read
the constrained reply, gets an error instead of the right label.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from promptopt_dagster.llm.base import LLMRequest
from promptopt_dagster.llm.cache import CachedClient, ResponseCache, cache_key
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
from promptopt_dagster_tests.remote_helpers import chat, gemini_client, make_client, openai_client

LABELS = ("positive", "negative", "neutral")
ROWS = [
    ("a dull mess, negative", "negative"),
    ("what a delight, positive", "positive"),
    ("it exists, neutral", "neutral"),
    ("tedious again, negative", "negative"),
]
OPENAI_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(LABELS)}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}


def chatty(req) -> str:
    """Free text that names the label the row asks for, never the bare label itself."""
    return f"Hmm, I would call that {req.user.rsplit(' ', 1)[-1].upper()}!"


def sent_bodies(server):
    return [r.body for r in server.requests if r.status == 200 and r.body and r.path != "/token"]


# --- the enum goes out, one of the choices comes back ---------------------------------------------------


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_a_request_with_choices_gets_exactly_one_choice_back_and_the_server_saw_the_enum(protocol, adc):
    seen = []
    with FakeLLMServer(protocol, answer=lambda r: seen.append(r) or chatty(r)) as srv:
        adc(srv)
        client = make_client(protocol, srv)
        out = client.generate([chat(user, choices=LABELS) for user, _ in ROWS])
    assert [(r.text, r.error) for r in out] == [(label, None) for _, label in ROWS]
    assert [r.choices for r in seen] == [LABELS] * len(ROWS)
    for body in sent_bodies(srv):
        if protocol == "gemini":
            config = body["generationConfig"]
            assert config["responseMimeType"] == "text/x.enum"
            assert config["responseSchema"] == {"type": "STRING", "enum": list(LABELS)}
        else:
            assert body["response_format"] == OPENAI_FORMAT
    assert client.usage.errors == 0 and client.usage.llm_calls == len(ROWS)


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_a_request_without_choices_is_sent_and_answered_as_before(protocol, adc):
    with FakeLLMServer(protocol, answer=chatty) as srv:
        adc(srv)
        [res] = make_client(protocol, srv).generate([chat("a dull mess, negative")])
    [body] = sent_bodies(srv)
    assert res.text == "Hmm, I would call that NEGATIVE!" and res.error is None
    assert "responseMimeType" not in body.get("generationConfig", {}) and "response_format" not in body


def test_gemini_strips_whitespace_around_the_enum_value(adc):
    with FakeLLMServer("gemini", answer=lambda r: "  negative\n", honour_choices=False) as srv:
        adc(srv)
        [res] = gemini_client(srv).generate([chat("x", choices=LABELS)])
    assert (res.text, res.error) == ("negative", None)


# --- a server that breaks the enum: an error on the row, never an exception -----------------------------


@pytest.mark.parametrize(
    "protocol,answer,shown",
    [
        ("gemini", "maybe", "'maybe'"),
        ("gemini", '"positive"', "'\"positive\"'"),  # a JSON-quoted value is not the bare enum value
        ("openai", '{"label": "maybe"}', "'maybe'"),
        ("openai", "maybe", "'maybe'"),  # not JSON at all
        ("openai", '{"answer": "positive"}', '\'{"answer": "positive"}\''),  # JSON without a label
    ],
)
def test_an_answer_outside_the_choices_is_an_error_naming_it_and_the_choices(protocol, answer, shown, adc):
    with FakeLLMServer(protocol, answer=lambda r: answer, honour_choices=False) as srv:
        adc(srv)
        client = make_client(protocol, srv)
        bad, good = client.generate([chat("x", choices=LABELS), chat("y")])
    assert bad.text == "" and bad.error.startswith("not_a_choice: ")
    assert shown in bad.error and all(label in bad.error for label in LABELS)
    assert bad.attempts == 1 and srv.request_count == 2, "an off-choice answer is not retried"
    assert good.error is None and good.text == answer  # the rest of the batch is unaffected
    assert client.usage.errors == 1


# --- OpenAI-compatible servers without JSON-schema support ---------------------------------------------


def test_openai_json_object_mode_sends_only_json_object_and_reads_the_label():
    with FakeLLMServer("openai", answer=lambda r: '{"label": "neutral"}') as srv:
        [res] = openai_client(srv, json_mode="object").generate([chat("meh", choices=LABELS)])
        [bad] = openai_client(srv, json_mode="object").generate([chat("meh!", choices=("positive", "negative"))])
    first, _ = sent_bodies(srv)
    assert (res.text, res.error) == ("neutral", None)
    assert first["response_format"] == {"type": "json_object"}
    assert not any(label in json.dumps(first) for label in LABELS), "the labels went out somewhere"
    assert "'neutral'" in bad.error and "negative" in bad.error


@pytest.mark.parametrize(
    "answer,label",
    [
        ("negative", "negative"),
        ("  The review is NEGATIVE.\n", "negative"),
        ("Neutral", "neutral"),
        ("positive or negative", None),
        ("no idea", None),
    ],
)
def test_openai_without_json_mode_maps_a_reply_that_names_exactly_one_choice(answer, label):
    with FakeLLMServer("openai", answer=lambda r: answer) as srv:
        [res] = openai_client(srv, json_mode="off").generate([chat("meh", choices=LABELS)])
    [body] = sent_bodies(srv)
    assert "response_format" not in body
    if label is None:
        assert res.text == "" and repr(answer.strip()) in res.error and "neutral" in res.error
    else:
        assert (res.text, res.error) == (label, None)


# --- the response cache ---------------------------------------------------------------------------------

IDENT = {"backend": "openai", "model": "gpt-4o-mini", "endpoint": "http://x/v1"}
PLAIN = LLMRequest(messages=(("system", "Label it."), ("user", "a dull film")), max_tokens=8)
# cache_key(IDENT, PLAIN) as computed before LLMRequest had `choices` (git HEAD at the time of writing).
KEY_BEFORE_CHOICES = "0fcca655bacc23e2470686cd92ca58e301fa59c3a17d331edbbc61df27ea6430"


def test_choices_change_the_cache_key_and_empty_choices_leave_old_keys_valid():
    with_choices = dataclasses.replace(PLAIN, choices=LABELS)
    assert cache_key(IDENT, PLAIN) == KEY_BEFORE_CHOICES
    assert cache_key(IDENT, dataclasses.replace(PLAIN, choices=())) == KEY_BEFORE_CHOICES
    assert cache_key(IDENT, with_choices) != KEY_BEFORE_CHOICES
    assert cache_key(IDENT, with_choices) != cache_key(IDENT, dataclasses.replace(PLAIN, choices=LABELS[:2]))


@pytest.mark.parametrize("protocol", ["gemini", "openai"])
def test_cached_answers_keep_constrained_and_free_requests_apart(protocol, adc, tmp_path):
    requests = [chat("a dull mess, negative"), chat("a dull mess, negative", choices=LABELS)]
    with FakeLLMServer(protocol, answer=chatty) as srv:
        adc(srv)
        cache = ResponseCache(tmp_path / "cache.sqlite")
        first = CachedClient(make_client(protocol, srv), cache).generate(requests)
        sent = srv.success_count
        again = CachedClient(make_client(protocol, srv), cache).generate(requests)
    assert [r.text for r in first] == ["Hmm, I would call that NEGATIVE!", "negative"]
    assert sent == 2 and srv.success_count == 2, "the constrained request was answered from the free one's key"
    assert [(r.text, r.cached) for r in again] == [(r.text, True) for r in first]


# --- the fake servers themselves, over raw HTTP ---------------------------------------------------------


def test_fake_servers_answer_in_the_shape_the_enum_asks_for():
    from promptopt_dagster_tests.test_fake_llm_servers import CHAT, VERTEX, chat_body, gemini_body, post

    def reply(srv, path, body):
        out = json.loads(post(srv, path, body)[2])
        return (
            out["candidates"][0]["content"]["parts"][0]["text"]
            if "candidates" in out
            else out["choices"][0]["message"]["content"]
        )

    enum = {"type": "STRING", "enum": ["yes", "no"]}
    with FakeLLMServer("gemini", answer=lambda r: "ok") as srv:  # "ok" names neither: the user text decides
        assert reply(srv, VERTEX, gemini_body("so: no", responseMimeType="text/x.enum", responseSchema=enum)) == "no"
        assert (
            reply(srv, VERTEX, gemini_body("so: no", responseMimeType="application/json", responseSchema=enum))
            == '"no"'
        )
        assert reply(srv, VERTEX, gemini_body("so: no", responseSchema=enum)) == "ok"  # text/plain: no constraint
    schema = {"type": "object", "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": schema}}
    with FakeLLMServer("openai", answer=lambda r: "not sure, so yes") as srv:
        assert json.loads(reply(srv, CHAT, chat_body("q", response_format=fmt))) == {"verdict": "yes"}
        assert reply(srv, CHAT, chat_body("q", response_format={"type": "json_object"})) == "not sure, so yes"
