"""Linear layers for one or two rows (decode at batch 1-2): a Triton GEMV over the weight.

At one or two rows a projection is a pure weight stream: every weight byte is read once and
used for a multiply-add or two, so the layer's time is the weight's bytes over the HBM
bandwidth. cuBLAS handles these shapes with a mix of kernels: on an H100 some stream at half
the bandwidth (Llama-3.1-8B's 4096x4096 ``o_proj``: 20.9 us for 33.5 MB inside the model), and
others split K and add a reduction kernel. This kernel keeps each program on whole output rows
(no split, no second kernel) and can apply SwiGLU to its input on the fly
(``silu_mul_input``: the down projection reads the gate|up activations directly, so the
separate SiLU-and-mul kernel disappears at small batch; the activation is rounded to the input
dtype as the unfused kernel's output would be).

Launch parameters come from ``benchmarks/serving_kernels.py``'s GEMV sweep on an H100. Fusing
the layer norms into this kernel's prologue was tried and measured no faster at batch 1 (each
program recomputing the row's norm cost what the separate norm kernels did), so it is not here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    HAS_BIAS: tl.constexpr,
    SILU_MUL: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``out[m, n] = sum_k act(x)[m, k] * w[n, k] (+ bias[n])`` for BLOCK_N rows n, all m < M."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        if EVEN_K:
            w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None], other=0.0)
            x_mask = m_mask[:, None]
        else:
            k_mask = offs_k < K
            w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            x_mask = m_mask[:, None] & k_mask[None, :]
        x = tl.load(x_rows + offs_k[None, :], mask=x_mask, other=0.0)
        x32 = x.to(tl.float32)
        if SILU_MUL:
            up = tl.load(x_rows + K + offs_k[None, :], mask=x_mask, other=0.0).to(tl.float32)
            x32 = (x32 / (1.0 + tl.exp(-x32)) * up).to(x.dtype).to(tl.float32)
        acc += tl.sum(x32[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def gemv_launch_config(in_features: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps): 8 output rows a program, K tiles of up to 2048.

    Best or within 1% of the best over the H100 sweep at one and two rows, at every Llama-3.1-8B
    projection (``benchmarks/results/serving_gemv.json``): short programs over long K tiles
    keep enough loads in flight on every SM.
    """
    return 8, min(2048, triton.next_power_of_2(in_features)), 4


def linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    silu_mul_input: bool = False,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """``act(x) @ weight.T + bias`` for ``x[M, K]`` (gate|up ``[M, 2K]`` with ``silu_mul_input``)."""
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"linear wants x [M, K] and weight [N, K]; got {tuple(x.shape)}, {tuple(weight.shape)}")
    in_features = x.shape[1] // 2 if silu_mul_input else x.shape[1]
    if weight.shape[1] != in_features or (silu_mul_input and x.shape[1] % 2):
        hint = " (silu_mul_input: x holds gate|up, 2 x in_features)" if silu_mul_input else ""
        raise ValueError(f"x {tuple(x.shape)} does not fit weight {tuple(weight.shape)}{hint}")
    x = x if x.stride(1) == 1 else x.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    rows, out_features = x.shape[0], weight.shape[0]
    out = torch.empty((rows, out_features), dtype=x.dtype, device=x.device)
    block_n, block_k, warps = config or gemv_launch_config(in_features)
    if rows:
        _gemv_kernel[(triton.cdiv(out_features, block_n),)](
            x, weight, bias if bias is not None else weight, out,
            rows, out_features, in_features, x.stride(0), weight.stride(0), out.stride(0),
            HAS_BIAS=bias is not None, SILU_MUL=silu_mul_input, EVEN_K=in_features % block_k == 0,
            BLOCK_M=triton.next_power_of_2(rows), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
        )  # fmt: skip
    return out
