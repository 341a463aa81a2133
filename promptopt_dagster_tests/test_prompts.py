"""Prompt versions: rendering order, literal braces, placeholder checks, lineage and persistence."""

from __future__ import annotations

import json

import pytest

from promptopt_dagster.app.quality import prompt_gate
from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster.core.errors import PromptError
from promptopt_dagster.core.prompts import Demo, PoolRef, PromptVersion, Retrieval, fill, placeholder_problem

SYSTEM = "Classify the sentiment as positive or negative."
OUTPUT = "Review: {user_input}\nSentiment:"
DEMOS = [
    Demo(user_input="a joy to watch", ground_truth_output="positive"),
    Demo(user_input="dull and long", ground_truth_output="negative"),
]


def make(**kw) -> PromptVersion:
    fields = {"system_prompt": SYSTEM, "output_prompt": OUTPUT, "demos": DEMOS}
    fields.update(kw)
    return PromptVersion(**fields)


# --- rendering ---------------------------------------------------------------------------------


def test_completion_order_system_then_demos_then_input():
    text = make().render_completion("the row itself")
    assert text == (
        f"{SYSTEM}\n\n"
        "Review: a joy to watch\nSentiment: positive\n\n"
        "Review: dull and long\nSentiment: negative\n\n"
        "Review: the row itself\nSentiment:"
    )
    # The row's input is the tail, so the shared prefix is identical for every row.
    other = make().render_completion("another row")
    prefix = text[: text.index("Review: the row itself")]
    assert other.startswith(prefix)
    assert text.endswith("Review: the row itself\nSentiment:")


def test_completion_demo_is_filled_output_prompt_space_answer():
    p = make(demos=[DEMOS[0]])
    parts = p.render_completion("x").split("\n\n")
    assert parts == [SYSTEM, fill(OUTPUT, "a joy to watch") + " positive", fill(OUTPUT, "x")]


def test_completion_without_system_or_demos():
    p = make(system_prompt="   ", demos=[])
    assert p.render_completion("hello") == "Review: hello\nSentiment:"


def test_completion_strips_system_prompt():
    p = make(system_prompt="  Be brief.  \n", demos=[])
    assert p.render_completion("hi").startswith("Be brief.\n\nReview: hi")


def test_chat_turns():
    messages = make().render_chat("the row itself")
    assert messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Review: a joy to watch\nSentiment:"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "Review: dull and long\nSentiment:"},
        {"role": "assistant", "content": "negative"},
        {"role": "user", "content": "Review: the row itself\nSentiment:"},
    ]


def test_chat_without_system_prompt_has_no_system_turn():
    messages = make(system_prompt="", demos=[]).render_chat("hi")
    assert messages == [{"role": "user", "content": "Review: hi\nSentiment:"}]


def test_braces_in_input_stay_literal():
    row = 'He said {user_input} and {0} and {name} and {"k": 1} {{x}}'
    p = make(demos=[])
    assert p.render_completion(row) == f"{SYSTEM}\n\nReview: {row}\nSentiment:"
    assert p.render_chat(row)[-1]["content"] == f"Review: {row}\nSentiment:"


def test_braces_in_prompt_stay_literal():
    system = 'Answer with JSON like {"label": "positive"} or {"label": "negative"}. Not {0}.'
    output = 'Input: {user_input}\nJSON {"label": ...}:'
    assert placeholder_problem(output) is None
    p = make(
        system_prompt=system,
        output_prompt=output,
        demos=[Demo(user_input="ok {x}", ground_truth_output='{"label": "positive"}')],
    )
    assert p.render_completion("fine") == (
        f"{system}\n\n"
        'Input: ok {x}\nJSON {"label": ...}: {"label": "positive"}\n\n'
        'Input: fine\nJSON {"label": ...}:'
    )
    chat = p.render_chat("fine")
    assert chat[0]["content"] == system
    assert chat[-1]["content"] == 'Input: fine\nJSON {"label": ...}:'


def test_input_containing_placeholder_is_not_substituted_twice():
    # The substitution is a single pass; the input's own "{user_input}" is kept as text.
    assert fill("A: {user_input} B", "{user_input}") == "A: {user_input} B"


# --- placeholder_problem -----------------------------------------------------------------------


def test_placeholder_ok():
    assert placeholder_problem(OUTPUT) is None
    assert placeholder_problem("{user_input}") is None


def test_placeholder_missing():
    problem = placeholder_problem("Review:\nSentiment:")
    assert problem is not None
    assert "{user_input}" in problem and "exactly once" in problem and "found 0" in problem


def test_placeholder_duplicated():
    problem = placeholder_problem("{user_input} and again {user_input}")
    assert problem is not None
    assert "exactly once" in problem and "found 2" in problem


def test_placeholder_unknown():
    problem = placeholder_problem("Title: {title}\nReview: {user_input}\nLang: {lang}")
    assert problem is not None
    assert "{lang}" in problem and "{title}" in problem and "unknown" in problem
    assert "Remove" in problem


def test_placeholder_wrong_case_is_missing():
    problem = placeholder_problem("Review: {User_Input}")
    assert problem is not None and "found 0" in problem


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_placeholder_empty(prompt):
    problem = placeholder_problem(prompt)
    assert problem is not None
    assert "empty" in problem and "{user_input}" in problem


# --- lineage -----------------------------------------------------------------------------------


def test_child_sets_lineage_and_keeps_demos():
    parent = make(version=3, metadata={"note": "parent"})
    child = parent.child(system_prompt="New instruction.")
    assert child.parent_id == parent.id
    assert child.version == 4
    assert child.id != parent.id and child.id
    assert child.system_prompt == "New instruction."
    assert child.output_prompt == parent.output_prompt
    assert child.demos == parent.demos
    assert child.metadata == {}  # metadata belongs to a version, it is not inherited
    assert not child.content_equals(parent)
    # The parent is untouched.
    assert parent.system_prompt == SYSTEM and parent.version == 3


def test_child_changes_demos_when_asked():
    parent = make()
    new_demos = [Demo(user_input="fine", ground_truth_output="positive")]
    child = parent.child(demos=new_demos, metadata={"optimizer": "fewshot"})
    assert child.demos == new_demos
    assert parent.demos == DEMOS
    assert child.metadata == {"optimizer": "fewshot"}


def test_child_chain_and_unique_ids():
    root = make()
    a = root.child()
    b = a.child()
    assert (root.version, a.version, b.version) == (0, 1, 2)
    assert (a.parent_id, b.parent_id) == (root.id, a.id)
    assert len({root.id, a.id, b.id}) == 3
    assert a.content_equals(root) and b.content_equals(root)


# --- persistence -------------------------------------------------------------------------------


def _retrieving(pool: list[Demo]) -> PromptVersion:
    return PromptVersion(
        system_prompt="Classify.", output_prompt="Review: {user_input}\nSentiment:", retrieval=Retrieval(k=2, pool=pool)
    )


POOL = [
    Demo(user_input=f"row {i} {'great' if i % 2 else 'awful'} film", ground_truth_output=f"l{i % 2}") for i in range(9)
]


def test_a_stored_prompt_names_its_pool_by_content_and_refuses_to_answer_until_the_pool_is_back():
    prompt = _retrieving(POOL)
    stored, pool = prompt.without_pool()
    assert pool == POOL and isinstance(stored.retrieval.pool, PoolRef) and stored.pool_ref.size == 9
    assert "great film" not in stored.to_json() and stored.describe() == prompt.describe()
    with pytest.raises(PromptError, match="stored apart and was not attached"):
        stored.render_completion("a great film")  # never a silent render without demos
    back = PromptVersion.model_validate_json(stored.to_json()).with_pool(list(POOL))
    assert back.render_completion("row 3 great film") == prompt.render_completion("row 3 great film")
    assert back.without_pool() == (stored, back.retrieval.pool)
    # the id is the content: equal pools share it, one changed label does not
    assert _retrieving(list(POOL)).without_pool()[0].pool_ref == stored.pool_ref
    relabeled = [*POOL[:-1], POOL[-1].model_copy(update={"ground_truth_output": "l1"})]
    assert _retrieving(relabeled).without_pool()[0].pool_ref.id != stored.pool_ref.id
    with pytest.raises(PromptError, match="has 8 rows where the prompt expects 9"):
        stored.with_pool(POOL[:-1])
    assert prompt.with_pool(POOL) is prompt and not stored.carries_pool and prompt.carries_pool


def test_save_load_round_trip(tmp_path):
    p = make(
        version=2,
        parent_id="abc123",
        metadata={"score": 0.75, "tags": ["x"]},
        system_prompt='Use JSON {"a": 1}',
        output_prompt="Q: {user_input}\nA:",
    )
    path = tmp_path / "nested" / "dir" / "v2.json"
    p.save(path)
    assert path.exists()
    assert not list(path.parent.glob("*.tmp"))
    assert json.loads(path.read_text())["id"] == p.id
    loaded = PromptVersion.load(path)
    assert loaded == p
    # A string path works the same.
    assert PromptVersion.load(str(path)) == p


def test_load_seed_file_only_needs_two_keys(tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({"system_prompt": "S", "output_prompt": "In: {user_input}"}))
    p = PromptVersion.load(path)
    assert p.system_prompt == "S" and p.demos == [] and p.version == 0 and p.parent_id is None


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(PromptError) as info:
        PromptVersion.load(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "does not exist" in msg and "Create it" in msg
    assert "system_prompt" in msg and "output_prompt" in msg and "{user_input}" in msg


def test_load_invalid_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"system_prompt": "S", "output_prompt": "{user_input}",}')
    with pytest.raises(PromptError) as info:
        PromptVersion.load(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "not valid JSON" in msg and "Fix the JSON syntax" in msg


def test_load_missing_field(tmp_path):
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"system_prompt": "S"}))
    with pytest.raises(PromptError) as info:
        PromptVersion.load(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "output_prompt" in msg and "missing or invalid" in msg
    assert "needs" in msg and "system_prompt" in msg


def test_load_wrong_type_field(tmp_path):
    path = tmp_path / "typed.json"
    path.write_text(json.dumps({"system_prompt": ["not", "a", "string"], "output_prompt": "{user_input}"}))
    with pytest.raises(PromptError) as info:
        PromptVersion.load(path)
    assert str(path) in str(info.value) and "system_prompt" in str(info.value)


def test_load_output_prompt_without_placeholder(tmp_path):
    path = tmp_path / "noplaceholder.json"
    path.write_text(json.dumps({"system_prompt": "S", "output_prompt": "Review:\nSentiment:"}))
    with pytest.raises(PromptError) as info:
        PromptVersion.load(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "{user_input}" in msg and "exactly once" in msg
    assert "Put {user_input} where" in msg


def test_load_output_prompt_with_unknown_placeholder(tmp_path):
    path = tmp_path / "unknown.json"
    path.write_text(json.dumps({"system_prompt": "S", "output_prompt": "{lang}: {user_input}"}))
    with pytest.raises(PromptError) as info:
        PromptVersion.load(path)
    assert str(path) in str(info.value) and "{lang}" in str(info.value)


@pytest.mark.parametrize(
    "system, found",
    [("Classify {user_input} as positive or negative.", "{user_input}"), ("Answer with {label}.", "{label}")],
)
def test_load_refuses_placeholder_in_system_prompt(tmp_path, system, found):
    # The system prompt is sent as written, so this would reach the model as literal braces.
    path = tmp_path / "system.json"
    path.write_text(json.dumps({"system_prompt": system, "output_prompt": OUTPUT}))
    with pytest.raises(PromptError) as info:
        PromptVersion.load(path)
    msg = str(info.value)
    assert str(path) in msg and "system_prompt" in msg and found in msg
    assert "only filled in at {user_input} in output_prompt" in msg and "Remove them from system_prompt" in msg


def test_load_keeps_json_braces_in_system_prompt(tmp_path):
    system = 'Reply as JSON like {"label": "ham"} or {"label": "spam"}; {0} and {} and { x } stay too.'
    path = tmp_path / "json.json"
    path.write_text(json.dumps({"system_prompt": system, "output_prompt": OUTPUT}))
    assert PromptVersion.load(path).system_prompt == system


def test_prompt_gate_fails_on_placeholder_in_system_prompt():
    result = prompt_gate(make(system_prompt="Classify {user_input}. Use {label}."))
    assert not result.passed
    assert "system_prompt" in result.message and "{label}, {user_input}" in result.message
    assert prompt_gate(make(system_prompt='Answer like {"label": "positive"}.')).passed


@pytest.mark.parametrize("name", ["sst2.json", "sms_spam.json"])
def test_shipped_prompts_load(name):
    path = PROJECT_ROOT / "prompts" / name
    p = PromptVersion.load(path)
    assert p.system_prompt.strip()
    assert placeholder_problem(p.output_prompt) is None
    assert p.render_completion("some text").endswith(fill(p.output_prompt, "some text"))


def test_all_shipped_prompts_load():
    files = sorted((PROJECT_ROOT / "prompts").glob("*.json"))
    assert files
    for path in files:
        PromptVersion.load(path)


# --- gs:// against the storage emulator ---------------------------------------------------------


def test_gcs_round_trip(gcs_emulator):
    from google.cloud import storage

    from promptopt_dagster.core.storage import _gcs_client

    p = make(
        version=1,
        parent_id="root",
        metadata={"score": 0.5},
        output_prompt='Review: {user_input}\nAnswer as {"label": ...}:',
    )
    uri = "gs://promptopt-test/prompts/v1.json"
    p.save(uri)
    assert PromptVersion.load(uri) == p

    # The object really is in the emulator's bucket, written through the real client.
    client = _gcs_client()
    assert isinstance(client, storage.Client)
    blob = client.bucket("promptopt-test").blob("prompts/v1.json")
    assert blob.exists()
    assert json.loads(blob.download_as_text())["id"] == p.id

    # Overwriting an object replaces it.
    child = p.child(system_prompt="Changed.")
    child.save(uri)
    assert PromptVersion.load(uri) == child
