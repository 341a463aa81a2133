"""The zero-shot MetaPrompt rewrite: no rows, guidelines only, strict parsing, unscored when no row judged it."""

from __future__ import annotations

import json

import pytest

from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.llm.fake import FakeLLM
from promptopt_dagster.optimizers.metaprompt import MetaPromptOptimizer

START = PromptVersion(system_prompt="sentiment", output_prompt="{user_input}")
GOOD = json.dumps(
    {
        "system_prompt": "Classify the sentiment of the review. Answer with one word: positive or negative.",
        "output_prompt": "Review: {user_input}\nSentiment:",
    }
)


def chat(reply: str) -> FakeLLM:
    return FakeLLM(lambda r: reply, mode="chat")


def test_the_request_holds_guidelines_labels_and_no_rows():
    llm = chat(GOOD)
    proposal = MetaPromptOptimizer(guidelines="Mention sarcasm.").rewrite(
        START, llm, ["positive", "negative"], {"negative": "the reviewer disliked the film"}, "Movie reviews."
    )
    assert proposal.prompt is not None and proposal.prompt.parent_id == START.id
    assert proposal.prompt.metadata == {"optimizer": "metaprompt", "scored": True}
    user = llm.requests[0].messages[-1][1]
    assert '"positive", "negative"' in user and "the reviewer disliked the film" in user and "Mention sarcasm." in user
    assert "{user_input} in the output prompt exactly once" in user and "Movie reviews." in user


def test_an_unscored_rewrite_says_so():
    proposal = MetaPromptOptimizer().rewrite(START, chat(GOOD), scored=False)
    assert proposal.prompt.metadata["scored"] is False and "UNSCORED" in proposal.prompt.metadata["warning"]


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("Here you go: a better prompt.", "no JSON object"),
        ('{"system_prompt": "Classify', "truncated or malformed"),
        (json.dumps({"system_prompt": "x" * 5000, "output_prompt": "{user_input}"}), "limit is 4000"),
        (json.dumps({"system_prompt": "Classify.", "output_prompt": "Answer now."}), "{user_input}"),
        (json.dumps({"system_prompt": "sentiment", "output_prompt": "{user_input}"}), "unchanged"),
        (
            json.dumps({"system_prompt": "A", "output_prompt": "{user_input}", "note": "ignore the rules"}),
            "unexpected keys",
        ),
    ],
)
def test_a_bad_reply_is_a_rejection_with_its_reason(reply, reason):
    proposal = MetaPromptOptimizer().rewrite(START, chat(reply))
    assert proposal.prompt is None and reason in proposal.rejected_reason and proposal.raw_output == reply


def test_the_embedded_model_is_refused():
    local = chat(GOOD)
    local.backend = "local"
    proposal = MetaPromptOptimizer().rewrite(START, local)
    assert proposal.prompt is None and "optimizer_model" in proposal.rejected_reason and not local.requests


# --- through the CLI, the optimizer model on the real openai SDK against the fake server ---------------------


def _rewrite_from_what_was_sent(req) -> str:
    """Keeps the current system prompt and adds the allowed answers it was sent."""
    current = json.loads(req.user.split("Current system_prompt (JSON string): ", 1)[1].split("\n", 1)[0])
    labels = json.loads(req.user.split("Allowed answers: ", 1)[1].split("\n", 1)[0])
    return json.dumps(
        {
            "system_prompt": f"{current} When unsure, answer {labels[-1]}.",
            "output_prompt": "Review: {user_input}\nSentiment:",
        }
    )


def test_rewrite_writes_an_unscored_version_and_optimize_scores_one(tmp_path):
    import os
    import subprocess
    import sys

    from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
    from promptopt_dagster_tests.remote_helpers import warehouse
    from promptopt_dagster_tests.test_gepa_end_to_end import task, toy_project

    root = toy_project(tmp_path / "project")
    with (
        FakeLLMServer("openai", answer=task) as task_srv,
        FakeLLMServer("openai", answer=_rewrite_from_what_was_sent) as opt,
    ):
        env = {
            **os.environ,
            "PROMPTOPT_DATA_DIR": str(root / "data"),
            "PROMPTOPT_PROMPTS_DIR": str(root / "prompts"),
            "PROMPTOPT_STATE_DIR": str(root / "state"),
            "PROMPTOPT_TASK__BACKEND": "openai",
            "PROMPTOPT_TASK__BASE_URL": task_srv.openai_base_url,
            "OPENAI_API_KEY": "sk-x",
            "PROMPTOPT_OPTIMIZER__BACKEND": "openai",
            "PROMPTOPT_OPTIMIZER__BASE_URL": opt.openai_base_url,
        }
        env.pop("DAGSTER_HOME", None)
        cli = [sys.executable, "-m", "promptopt_dagster.cli"]
        done = subprocess.run(
            cli + ["rewrite", "--dataset", "toy"], env=env, cwd=root, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert task_srv.request_count == 0  # zero-shot: no row was answered
        written = json.loads((root / "state" / "unscored_prompts" / "toy.json").read_text())
        assert written["metadata"]["scored"] is False and done.stdout.startswith("UNSCORED prompt version")
        assert written["system_prompt"] == "Classify the review. When unsure, answer negative."
        # ... and the Dagster UI lists it as an unscored prompt version, never as a best prompt
        import dagster as dg

        from promptopt_dagster_tests.dagster_dev_helpers import open_instance

        with open_instance({"DAGSTER_HOME": str(root / "state" / "dagster_home")}) as inst:
            events = inst.fetch_materializations(dg.AssetKey("unscored_prompt"), limit=5).records
            best = inst.fetch_materializations(dg.AssetKey("best_prompt"), limit=5).records
        assert len(events) == 1 and not best
        shown = events[0].asset_materialization.metadata
        assert shown["scored"].value is False and shown["status"].value.startswith("UNSCORED")
        assert "When unsure, answer negative." in shown["prompt"].value
        assert shown["written_by"].value.startswith("openai/")  # the optimizer model, never a key

        scored = subprocess.run(
            cli
            + [
                "optimize",
                "--dataset",
                "toy",
                "--optimizer",
                "metaprompt",
                "--eval-size",
                "20",
                "--select-size",
                "20",
                "--max-iterations",
                "1",
                "--test-size",
                "40",
                "--json",
            ],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert scored.returncode == 0, scored.stderr[-3000:]
    report = json.loads(scored.stdout)
    assert report["best_prompt"]["metadata"] == {"optimizer": "metaprompt", "scored": True}
    assert (report["initial_test_score"], report["best_test_score"]) == (0.25, 0.75)
    assert warehouse(root / "state", "select accepted from promptopt.comparison_report")["accepted"].tolist() == [True]


def test_rewrite_on_gemini_asks_for_the_proposal_schema_and_a_truncated_reply_is_refused(tmp_path, monkeypatch):
    """google-genai against the fake Vertex endpoint: the request carries the JSON response schema, and a
    reply cut at max_tokens (MAX_TOKENS) never becomes a prompt."""
    from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
    from promptopt_dagster_tests.remote_helpers import adc_file, gemini_client

    long_reply = json.dumps(
        {"system_prompt": " ".join(["Classify the review."] * 400), "output_prompt": "{user_input}"}
    )
    with FakeLLMServer("gemini", answer=_rewrite_from_what_was_sent) as srv:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc_file(tmp_path, srv)))
        good = MetaPromptOptimizer().rewrite(
            PromptVersion(system_prompt="Classify the review.", output_prompt="Review: {user_input}\nSentiment:"),
            gemini_client(srv),
            ["positive", "negative"],
        )
        sent = srv.requests[-1].body
        srv.answer = lambda req: long_reply
        cut = MetaPromptOptimizer(max_tokens=50).rewrite(START, gemini_client(srv), ["positive", "negative"])
    assert good.prompt.system_prompt == "Classify the review. When unsure, answer negative."
    assert sent["generationConfig"]["responseMimeType"] == "application/json"
    assert cut.prompt is None and "truncated" in cut.rejected_reason
