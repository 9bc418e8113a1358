"""Briefly trained models for the bf16 comparisons: a random model's next-token logits are
nearly tied everywhere, so any two bf16 implementations part within a few tokens; a model
trained on real text is as confident as a real checkpoint on it, which is what the issue's
"identical tokens on most prompts" presumes. No weights can be downloaded here, so the GPU
tests train their own on the demo tokenizer's corpus (Python standard-library sources)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from serving.demo_models import corpus_texts


def corpus_tokens(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """The whole corpus as one int64 token stream."""
    return torch.tensor(
        [t for text in corpus_texts() for t in tokenizer.encode(text, add_special_tokens=False)],
        dtype=torch.int64,
    )


def train_on_corpus(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    steps: int,
    batch: int = 16,
    length: int = 256,
    lr: float = 6e-4,
    seed: int = 0,
) -> float:
    """Next-token training on random windows of ``tokens`` (AdamW, warm-up, bf16 autocast,
    fp32 weights); returns the last loss."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 20))
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - length - 1, (batch,), generator=generator).tolist()
        windows = torch.stack([tokens[s : s + length] for s in starts]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(windows, labels=windows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        warmup.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


def corpus_prompts(tokens: torch.Tensor, lengths: tuple[int, ...], seed: int = 7) -> list[list[int]]:
    """Prompts cut from the corpus at random places, one per length."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - max(lengths), (len(lengths),), generator=generator).tolist()
    return [tokens[s : s + n].tolist() for s, n in zip(starts, lengths, strict=True)]
