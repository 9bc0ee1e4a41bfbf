"""The LLM-judge reward against a live `specialize serve` on 127.0.0.1: a run fine-tuned to grade is the judge."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
import yaml
from conftest import chat_row, write_jsonl
from live import free_port, start_server

from specialize.cli.main import main
from specialize.config import JudgeReward
from specialize.errors import ConfigError, RewardError
from specialize.runs import Registry
from specialize.train.judge import SYSTEM, Judge
from specialize.train.rewards import Scored, score_answers

RUBRIC = "The answer is polite."
# An adapter on the output layer too: a random tiny model's logits are nearly flat, and the blocks alone would not
# make "7" then the end of the turn stand out in 40 steps.
HEAD = ["q_proj", "v_proj", "lm_head"]


@dataclass(frozen=True)
class JudgeServer:
    url: str
    key: str
    grader: str  # the run id of the grading model


def judged(question: str, answer: str) -> list[dict[str, str]]:
    """A judge request's messages, as `Judge` sends them."""
    return [
        {"role": "system", "content": SYSTEM.format(rubric=RUBRIC, top=10)},
        {"role": "user", "content": f"USER: {question}\n\nASSISTANT'S ANSWER: {answer}\n\nScore:"},
    ]


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory, tiny_model_dir) -> Iterator[JudgeServer]:
    root = tmp_path_factory.mktemp("judge")
    # A grader that gives every answer 7: trained on judge requests as the judge sends them.
    rows = [
        {"messages": [*judged(f"Question {i}?", f"Answer {i}."), {"role": "assistant", "content": "7"}]}
        for i in range(40)
    ]
    write_jsonl(root / "train.jsonl", rows[:-4])
    write_jsonl(root / "validation.jsonl", rows[-4:])
    config = {
        "name": "grader",
        "base_model": str(tiny_model_dir),
        "runs_dir": str(root / "runs"),
        "data": {"train": "train.jsonl", "validation": "validation.jsonl", "dedupe": {"near": False}},
        "train": {"max_steps": 40, "batch_size": 4, "learning_rate": 0.03, "lora": {"target_modules": HEAD}},
        "eval": {"max_examples": 2, "systems": ["fine_tuned"]},
    }
    (root / "grader.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--quiet", "run", str(root / "grader.yaml")]) == 0
    registry_url = f"sqlite:///{root / 'runs' / 'registry.db'}"
    [grader] = [r["id"] for r in Registry(registry_url).list_runs()]
    created = subprocess.run(
        [sys.executable, "-m", "specialize", "keys", "create", "--name", "judge", "--registry", registry_url],
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    args = ["--base-model", str(tiny_model_dir), "--registry", registry_url, "--max-tokens", "32"]
    process = start_server(args, root / "server.log", port)
    try:
        yield JudgeServer(f"http://127.0.0.1:{port}/v1", key, grader)
    finally:
        process.terminate()
        process.wait(timeout=30)


def judge(server: JudgeServer, monkeypatch, **changes) -> Judge:
    monkeypatch.setenv("JUDGE_KEY", server.key)
    settings = {"type": "judge", "url": server.url, "model": server.grader, "rubric": RUBRIC}
    return Judge(JudgeReward(**{**settings, "api_key_env": "JUDGE_KEY", **changes}))


def answer(question: str, text: str, line: int) -> Scored:
    row = chat_row(question, "Thank you.", source=f"prompts.jsonl:{line}")
    return Scored(row["messages"][:1], text, row)


def test_the_judges_verdict_is_the_served_models_score(judge_server, monkeypatch):
    reward = judge(judge_server, monkeypatch)
    items = [answer(f"Question {i}?", f"Answer {i}.", i) for i in range(6)]
    scores = score_answers(reward, items)
    client = openai.OpenAI(base_url=judge_server.url, api_key=judge_server.key, max_retries=0)
    reply = client.chat.completions.create(
        model=judge_server.grader, messages=judged("Question 0?", "Answer 0."), temperature=0, max_tokens=8
    )
    assert reply.choices[0].message.content.strip() == "7"  # the grader learnt its one verdict
    assert scores == [0.7] * 6


def test_a_judge_that_cannot_answer_names_the_judge_and_the_row(judge_server, monkeypatch):
    item = answer("Question?", "Answer.", 12)
    missing = judge(judge_server, monkeypatch, model="no-such-model")
    with pytest.raises(
        RewardError, match=r"judge no-such-model at .* answered HTTP 404 for row prompts\.jsonl:12"
    ):
        score_answers(missing, [item])
    monkeypatch.setenv("WRONG_KEY", "sk-spec-wrong")
    refused = Judge(
        JudgeReward(
            type="judge",
            url=judge_server.url,
            model=judge_server.grader,
            rubric=RUBRIC,
            api_key_env="WRONG_KEY",
        )
    )
    with pytest.raises(RewardError, match=r"answered HTTP 401 for row prompts\.jsonl:12"):
        score_answers(refused, [item])
    closed = judge(judge_server, monkeypatch, url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(RewardError, match=r"could not be reached for row prompts\.jsonl:12.*fix reward\.url"):
        score_answers(closed, [item])


def test_a_judge_key_variable_that_is_not_set_is_a_config_error(monkeypatch):
    monkeypatch.delenv("UNSET_JUDGE_KEY", raising=False)
    with pytest.raises(ConfigError, match="UNSET_JUDGE_KEY, which is not set"):
        Judge(
            JudgeReward(
                type="judge",
                url="http://127.0.0.1:9/v1",
                model="m",
                rubric="r",
                api_key_env="UNSET_JUDGE_KEY",
            )
        )
