"""The batched sampler: every option, per-row parameters, seeds and logprobs."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from serving.sampling import InvalidParamsError, Sampler, SamplingParams, argmax_rows


@dataclass
class Row:
    params: SamplingParams
    token_ids: list[int] = field(default_factory=lambda: [0])
    num_prompt_tokens: int = 1
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)


def logits_batch(rows: int = 4, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def draw(logits: torch.Tensor, params: SamplingParams, times: int) -> list[int]:
    rows = [Row(params) for _ in range(times)]
    return Sampler()(logits.expand(times, -1).clone(), rows).token_ids


def test_greedy_is_argmax_per_row():
    logits = logits_batch()
    result = Sampler()(logits, [Row(SamplingParams(temperature=0)) for _ in range(4)])
    assert result.token_ids == logits.argmax(-1).tolist()


@pytest.mark.parametrize("vocab", [128256, 151936, 32000, 50, 1009])
def test_two_stage_argmax_is_torch_argmax_ties_included(vocab):
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(vocab))
    logits[1, [7, vocab // 2, vocab - 1]] = 100.0  # a tie across chunks: the first index wins
    logits[2, :] = 0.0  # all tied
    assert argmax_rows(logits).tolist() == logits.argmax(dim=-1).tolist() == [logits[0].argmax().item(), 7, 0]


def test_rows_with_different_params_in_one_batch():
    logits = logits_batch(rows=3)
    rows = [Row(SamplingParams(temperature=0)), Row(SamplingParams(top_k=1)), Row(SamplingParams(top_p=1e-6))]
    assert Sampler()(logits, rows).token_ids == logits.argmax(-1).tolist()


def test_top_k_only_draws_the_k_best():
    logits = logits_batch(rows=1)[0]
    allowed = set(logits.topk(3).indices.tolist())
    assert set(draw(logits, SamplingParams(top_k=3, temperature=5.0), 300)) <= allowed


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert set(draw(logits, SamplingParams(top_p=0.7), 300)) == {0, 1}


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert set(draw(logits, SamplingParams(min_p=0.2), 400)) == {0, 1, 2}


def test_temperature_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    counts = torch.bincount(torch.tensor(draw(probs.log(), SamplingParams(), 3000)), minlength=3)
    assert torch.allclose(counts / 3000, probs, atol=0.05)


def test_seed_makes_a_row_reproducible_whatever_its_batch():
    logits = logits_batch(rows=1, vocab=1000)
    alone = Sampler()(logits, [Row(SamplingParams(seed=42))]).token_ids[0]
    batch = torch.cat([logits_batch(rows=2, vocab=1000, seed=9), logits])
    rows = [Row(SamplingParams()), Row(SamplingParams(seed=7)), Row(SamplingParams(seed=42))]
    assert Sampler()(batch, rows).token_ids[2] == alone
    different = {Sampler()(logits, [Row(SamplingParams(seed=s))]).token_ids[0] for s in range(20)}
    assert len(different) > 1


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.9, -3.0]])
    row = Row(SamplingParams(temperature=0, repetition_penalty=2.0), token_ids=[0, 1])
    assert Sampler()(logits, [row]).token_ids == [2]  # 2.0 -> 1.0 falls below 1.9
    logits = torch.tensor([[-1.0, -1.5, -5.0]])
    row = Row(SamplingParams(temperature=0, repetition_penalty=2.0), token_ids=[0])
    assert Sampler()(logits, [row]).token_ids == [1]  # -1.0 -> -2.0


def test_frequency_and_presence_penalties_count_output_tokens_only():
    logits = torch.tensor([[3.0, 2.5, 0.0]])
    # token 0 is in the prompt only: no penalty, still the best
    prompt_only = Row(
        SamplingParams(temperature=0, frequency_penalty=2.0), token_ids=[0, 2], num_prompt_tokens=1
    )
    assert Sampler()(logits, [prompt_only]).token_ids == [0]
    # token 0 generated twice: 3.0 - 2 * 0.4 = 2.2 < 2.5
    frequent = Row(
        SamplingParams(temperature=0, frequency_penalty=0.4), token_ids=[2, 0, 0], num_prompt_tokens=1
    )
    assert Sampler()(logits, [frequent]).token_ids == [1]
    present = Row(SamplingParams(temperature=0, presence_penalty=0.6), token_ids=[2, 0], num_prompt_tokens=1)
    assert Sampler()(logits, [present]).token_ids == [1]


def test_logprobs_are_those_of_the_raw_distribution():
    logits = logits_batch(rows=2)
    rows = [Row(SamplingParams(temperature=0, logprobs=3)), Row(SamplingParams(temperature=0))]
    result = Sampler()(logits, rows)
    expected = torch.log_softmax(logits[0], -1)
    entry = result.logprobs[0]
    assert entry is not None and result.logprobs[1] is None
    assert entry.token_id == result.token_ids[0]
    assert entry.logprob == pytest.approx(expected[entry.token_id].item(), abs=1e-5)
    assert [t for t, _ in entry.top] == expected.topk(3).indices.tolist()


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1},
        {"top_p": 0},
        {"top_k": -2},
        {"min_p": 1.5},
        {"repetition_penalty": 0},
        {"frequency_penalty": 3},
        {"max_tokens": 0},
        {"logprobs": 21},
    ],
)
def test_invalid_params_are_rejected(bad):
    with pytest.raises(InvalidParamsError):
        SamplingParams(**bad).validate()
