"""The attention block against torch's scaled dot-product attention and a dense formula."""
import torch
import torch.nn.functional as F

from graphlrp.blocks.attention import AttentionBlock

T, H, D = 3, 2, 4


def _inputs(batch: int = 2):
    torch.manual_seed(0)
    return [torch.randn(batch, T * H * D, dtype=torch.float64) for _ in range(3)]


def _block() -> AttentionBlock:
    return AttentionBlock(2, 3, 0, 1, T, H, D, dtype=torch.float64)


def _per_head(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(len(v), T, H, D).transpose(1, 2)


def test_forward_equals_scaled_dot_product_attention():
    q, k, v = _inputs()
    block = _block()
    state = block.prepare(v, q, k)
    expected = F.scaled_dot_product_attention(_per_head(q), _per_head(k), _per_head(v)).transpose(1, 2).reshape(2, -1)
    torch.testing.assert_close(block.forward(v, state), expected)


def test_reductions_and_messages_match_the_dense_matrix():
    """The per-sample matrix of ``A_(h, i, j)`` on edges ``(j, h, c) → (i, h, c)``, built from its definition."""
    q, k, v = _inputs()
    block = _block()
    state = block.prepare(v, q, k)
    s = torch.randn_like(v)
    width = H * D
    for b in range(2):
        dense = torch.zeros(T * width, T * width, dtype=torch.float64)
        for h in range(H):
            for i in range(T):
                for j in range(T):
                    for c in range(D):
                        dense[i * width + h * D + c, j * width + h * D + c] = state[b, h, i, j]
        torch.testing.assert_close(block.matvec(v, state=state)[b], dense @ v[b])
        torch.testing.assert_close(block.rmatvec(s, state=state)[b], dense.T @ s[b])
        src, dst, _ = block.edges()
        messages = block.edge_messages(v, s, state=state)[b]
        torch.testing.assert_close(messages, v[b, src] * dense[dst, src] * s[b, dst])


def test_relevance_is_conserved_through_the_values():
    """Rows of A sum to one: Σ_i R_i of the output equals Σ_j of the redistributed relevance (LRP-0)."""
    q, k, v = _inputs()
    block = _block()
    state = block.prepare(v, q, k)
    relevance = torch.randn_like(v)
    redistributed = v * block.rmatvec(relevance / block.forward(v, state), state=state)
    torch.testing.assert_close(redistributed.sum(1), relevance.sum(1))
