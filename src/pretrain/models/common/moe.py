"""A sparse mixture-of-experts feed-forward layer with top-k routing (Mixtral-style).

Shazeer et al. 2017 ("Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts
Layer") route each token to ``k`` of ``E`` expert MLPs; Jiang et al. 2024 ("Mixtral of
Experts") use SwiGLU experts, ``k = 2``, and weigh the chosen experts by the softmax of the
router's logits renormalized over the ``k`` chosen: ``y = sum_{i in topk} p_i / (sum_topk p)
* SwiGLU_i(x)``. Fedus et al. 2022 ("Switch Transformers", eqs. 4-6) keep the experts evenly
loaded with an auxiliary loss ``E * sum_i f_i * P_i``, ``f_i`` the share of routing
assignments that went to expert ``i`` and ``P_i`` its mean router probability; it is 1 per
assignment slot (``k`` in all) when the load is even, and grows as it concentrates.

The weights are laid out as Hugging Face's ``MixtralExperts``: ``gate_up`` (E, 2F, d) with rows
``[gate; up]`` per expert, ``down`` (E, d, F), and the router ``(E, d)``.

The experts' weights are stacked, one tensor for all of them, so DDP and FSDP see them used
in every step whatever the routing. The token-expert assignments are sorted by expert and
every expert's run of rows is multiplied by its matrices in one grouped GEMM
(``torch._grouped_mm``, as torchtitan's MoE), with no wait for the host: the run lengths stay
on the device. Where the grouped GEMM is not available (CUDA before compute capability 9.0,
fp32 on CUDA, fp32 compiled on the CPU) the experts run one after the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MoE(nn.Module):
    """``forward(x) -> y`` for ``x`` (B, T, d); the routing statistics of the last forward
    stay in :attr:`router_logits` for :func:`load_balancing_loss`.

    Args:
        d_model: width of the residual stream.
        d_ff: hidden width of each SwiGLU expert.
        n_experts: ``E``.
        experts_per_token: ``k``, the experts each token is routed to.
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, experts_per_token: int) -> None:
        super().__init__()
        if not 1 <= experts_per_token <= n_experts:
            raise ValueError(
                f"experts_per_token must be between 1 and n_experts ({n_experts}), "
                f"got {experts_per_token}"
            )
        self.d_ff, self.n_experts, self.top_k = d_ff, n_experts, experts_per_token
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(n_experts, 2 * d_ff, d_model))
        self.down = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        self.router_logits: torch.Tensor | None = None

    @torch.no_grad()
    def init_weights(self, std: float, residual_std: float) -> None:
        """N(0, std) for the router and the experts' input projections, N(0, residual_std)
        for their output projections (GPT-2's scaled residual init, as the dense MLP's)."""
        nn.init.normal_(self.router.weight, std=std)
        nn.init.normal_(self.gate_up, std=std)
        nn.init.normal_(self.down, std=residual_std)

    def expert_matrices(self) -> list[nn.Parameter]:
        """The stacked expert weights, (E, rows, cols) each: E matrices apiece."""
        return [self.gate_up, self.down]

    def fused_projections(self) -> dict[str, tuple[int, ...]]:
        """Each expert's ``gate_up`` rows: the gate's, then the up projection's (as the dense
        SwiGLU's; Muon orthogonalizes them apart, expert by expert)."""
        return {"gate_up": (self.d_ff, self.d_ff)}

    def active_matmul_params(self) -> int:
        """The expert weights one token is multiplied by: ``k`` experts' (the router, an
        ``nn.Linear``, is counted with the other matrices)."""
        return self.top_k * (self.gate_up[0].numel() + self.down[0].numel())

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits (N, E), the chosen experts (N, k) and their weights (N, k), which
        sum to 1 over the k, for the N tokens of ``x`` (N, d)."""
        logits = self.router(x)
        probs = torch.softmax(logits.float(), dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        return logits, experts, weights / weights.sum(dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (N, d)
        logits, experts, weights = self.route(tokens)
        self.router_logits = logits
        # The N*k assignments sorted by expert: each expert's rows are one contiguous run
        chosen = experts.flatten()
        order = chosen.argsort(stable=True)
        token_of = order // self.top_k
        per_expert = torch.zeros(self.n_experts, dtype=torch.long, device=x.device)
        per_expert.scatter_add_(0, chosen, torch.ones_like(chosen))  # on the device: no sync
        rows = tokens[token_of]  # (N*k, d)
        if grouped_mm_applies(rows):
            ends = per_expert.cumsum(0).to(torch.int32)
            h = expert_matmul(rows, self.gate_up, ends)
            gate, up = h.chunk(2, dim=-1)
            y = expert_matmul(F.silu(gate) * up, self.down, ends)
        else:
            y = self._expert_loop(rows, per_expert)
        y = y * weights.flatten()[order, None].to(y.dtype)
        return torch.zeros_like(tokens).index_add_(0, token_of, y.to(tokens.dtype)).view(shape)

    def _expert_loop(self, rows: torch.Tensor, per_expert: torch.Tensor) -> torch.Tensor:
        """Each expert's SwiGLU on its run of ``rows``, one matmul pair per expert (reads the
        run lengths on the host: a sync per layer)."""
        outputs = []
        for e, part in enumerate(rows.split(per_expert.tolist())):
            gate, up = F.linear(part, self.gate_up[e]).chunk(2, dim=-1)
            outputs.append(F.linear(F.silu(gate) * up, self.down[e]))
        return torch.cat(outputs)


def grouped_mm_applies(rows: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` multiplies ``rows`` by every expert's matrix in one call:
    on CUDA GPUs of compute capability 9.0+ (H100) in bf16, as torchtitan's MoE does, and on
    the CPU in eager mode (its compiled form takes bf16 only); elsewhere the experts run one
    by one."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if rows.device.type == "cpu":
        return rows.dtype == torch.bfloat16 or not torch.compiler.is_compiling()
    return (
        rows.device.type == "cuda"
        and rows.dtype == torch.bfloat16
        and torch.cuda.get_device_capability(rows.device) >= (9, 0)
    )


def expert_matmul(rows: torch.Tensor, weights: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """``rows[ends[e-1]:ends[e]] @ weights[e].T`` for every expert ``e`` in one grouped GEMM
    (``weights``: (E, out, in), as ``nn.Linear`` stores each)."""
    return torch._grouped_mm(rows, weights.to(rows.dtype).transpose(-2, -1), offs=ends)


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss ``E * sum_i f_i * P_i`` (Fedus et al. 2022, eqs.
    4-6) over the tokens of every MoE layer pooled, as Hugging Face's Mixtral computes it
    (``load_balancing_loss_func`` without a padding mask): ``f_i`` counts top-k assignments,
    so the loss is ``k`` for a perfectly even load and ``E`` when the router gives one expert
    all its probability.

    Args:
        router_logits: one (N, E) tensor per MoE layer.
        top_k: experts per token.
    """
    n_experts = router_logits[0].size(-1)
    assigned = router_logits[0].new_zeros(n_experts, dtype=torch.float32)
    prob_sum = router_logits[0].new_zeros(n_experts, dtype=torch.float32)
    rows = 0
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        chosen = torch.topk(probs, top_k, dim=-1).indices
        assigned = assigned + F.one_hot(chosen, n_experts).sum(dim=(0, 1)).float()
        prob_sum = prob_sum + probs.sum(dim=0)
        rows += probs.size(0)
    return n_experts * torch.sum((assigned / rows) * (prob_sum / rows))
