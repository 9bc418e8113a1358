"""`arena-serve calibrate`: Double Sparsity's channel ranking, its file, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from serving.models import load_model
from serving.sparse.calibration import (
    CHANNELS_FILE,
    CalibrationError,
    ChannelRanking,
    causal_pair_importance,
    rank_channels,
)

CALIBRATION_TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 30


def test_pair_importance_equals_the_explicit_sum_over_causal_pairs_and_group_heads() -> None:
    q, k = torch.randn(7, 4, 6), torch.randn(7, 2, 6)
    expected = torch.zeros(2, 6, dtype=torch.float64)
    for t in range(7):
        for s in range(t + 1):
            for h in range(4):
                expected[h // 2] += (q[t, h] * k[s, h // 2]).abs().double()
    torch.testing.assert_close(causal_pair_importance(q, k), expected)


def test_ranking_puts_a_dominant_channel_first(tiny_checkpoint) -> None:
    """Scaling one k channel of one KV head's projection makes it that head's heaviest channel
    (its rotary partner turns slowly at that frequency, so it gains little over short windows)."""
    path = tiny_checkpoint("llama")
    model = load_model(path, "cpu", torch.float32, max_positions=128)
    attention = model.model.layers[1].self_attn
    head_dim = attention.head_dim
    k_start = attention.q_size  # the fused projection's rows are q | k | v
    with torch.no_grad():  # KV head 1, channel 3
        attention.qkv_proj.weight[k_start + head_dim + 3] *= 50
    ranking = rank_channels(model, list(range(3, 200)), window=64)
    assert ranking.shape == (2, 2, head_dim) and ranking.num_tokens == 197
    assert ranking.ranking[1, 1, 0] == 3
    assert ranking.ranking[1, 0, 0] != 3 or ranking.ranking[0, 1, 0] != 3  # not a bias of the method
    for row in ranking.ranking.reshape(-1, head_dim):
        assert sorted(row.tolist()) == list(range(head_dim))  # a permutation of the channels
    assert ranking.top(4).shape == (2, 2, 4) and ranking.top(4).dtype == torch.int32


def test_cli_writes_the_file_next_to_the_checkpoint_and_it_loads(tiny_checkpoint, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.symlink_to(tiny_checkpoint("qwen3"), target_is_directory=True)
    text = tmp_path / "calib.txt"
    text.write_text(CALIBRATION_TEXT, encoding="utf-8")
    command = [sys.executable, "-m", "serving", "calibrate", "--model", str(model_dir), "--text", str(text),
               "--max-tokens", "300", "--window", "128"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    written = model_dir / CHANNELS_FILE
    document = json.loads(written.read_text())
    assert document["calibration"]["tokens"] == 300 and document["head_dim"] == 32
    ranking = ChannelRanking.load(model_dir)
    ranking.check_model(AutoConfig.from_pretrained(model_dir))
    assert ranking.shape == (2, 2, 32)
    with pytest.raises(CalibrationError, match="heavy channels"):
        ranking.top(33)
    with pytest.raises(CalibrationError, match="kv heads"):
        ranking.check_model(AutoConfig.from_pretrained(tiny_checkpoint("mistral")))


def test_cli_rejects_missing_text_and_bad_files(tiny_checkpoint, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "serving", "calibrate", "--model", str(tiny_checkpoint("llama")),
               "--text", str(tmp_path / "absent.txt")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert not (tiny_checkpoint("llama") / CHANNELS_FILE).exists()
    with pytest.raises(CalibrationError, match="calibrate"):
        ChannelRanking.load(tmp_path)
    (tmp_path / CHANNELS_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(CalibrationError, match="not a version-1"):
        ChannelRanking.load(tmp_path)
    (tmp_path / CHANNELS_FILE).write_text("{not json")
    with pytest.raises(CalibrationError, match="unreadable"):
        ChannelRanking.load(tmp_path)
