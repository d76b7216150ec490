"""Per-head token-to-token relevance flow of the tiny ViT: conservation against the attention
level's and the value level's relevance, the streamed messages of attention and layer-norm blocks
bit for bit the listed ones, and the flow as token-level edges."""
import pytest
import torch

import graphlrp
from graphlrp.attention_flow import attention_blocks, attention_flow, flow_edges
from graphlrp.errors import InputError

from test_vit import epsilon_everywhere, tiny_vit


@pytest.fixture(scope="module")
def explained():
    model = tiny_vit()
    torch.manual_seed(2)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    return graph, graphlrp.explain(graph, x, target=1, composite=epsilon_everywhere())


def test_streamed_messages_of_state_dependent_blocks_equal_the_listed_ones(explained):
    graph, explanation = explained
    kinds = {"attention", "layer_norm"}
    chosen = [k for k, block in enumerate(graph.blocks) if block.kind in kinds]
    listed = explanation.edge_relevance([0, 2])
    for run in explanation.message_runs([0, 2], blocks=chosen, max_edges=150):
        assert torch.equal(run.messages, listed[:, run.start : run.start + run.messages.shape[1]])


def test_flow_rows_and_columns_conserve_the_block_relevance(explained):
    graph, explanation = explained
    blocks = attention_blocks(graph)
    assert len(blocks) == 2
    for position in blocks:
        block = graph.blocks[position]
        flow = attention_flow(explanation, position)
        heads, tokens, width = block.heads, block.tokens, block.heads * block.head_dim
        assert flow.shape == (3, heads, tokens, tokens)
        out = explanation.level_relevance(block.dst).reshape(3, tokens, heads, -1).sum(-1).transpose(1, 2)
        torch.testing.assert_close(flow.sum(-1), out, rtol=1e-6, atol=1e-10)  # all but the ε share
        values = explanation.level_relevance(block.src).reshape(3, tokens, heads, -1).sum(-1).transpose(1, 2)
        torch.testing.assert_close(flow.sum(-2), values, rtol=1e-10, atol=1e-12)
        assert width == block.n_src // tokens


def test_flow_of_one_sample_as_edges(explained):
    graph, explanation = explained
    position = attention_blocks(graph)[0]
    flow = attention_flow(explanation, position, sample=[1])[0]
    head, src, dst, relevance = flow_edges(flow)
    assert len(head) == flow.numel()
    rebuilt = torch.zeros_like(flow).index_put_((head, src, dst), relevance)
    torch.testing.assert_close(rebuilt, flow, rtol=0, atol=0)


def test_flow_of_a_block_that_is_not_attention_is_refused(explained):
    graph, explanation = explained
    with pytest.raises(InputError, match="not an attention block"):
        attention_flow(explanation, 0)


@pytest.fixture(scope="module")
def explained_attnlrp():
    from test_attnlrp import _composite

    model = tiny_vit()
    torch.manual_seed(3)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    graph = graphlrp.lower(model, x, attention="attnlrp")
    return graph, graphlrp.explain(graph, x, target=2, composite=_composite())


def _heads_of(block, node: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token and head of a node of a token-major ``(T, H·d)`` level."""
    features = block.right.cols
    return node // (block.left.heads * features), node % (block.left.heads * features) // features


def test_attnlrp_flow_equals_the_value_messages_summed_by_head_query_and_key(explained_attnlrp):
    graph, explanation = explained_attnlrp
    blocks = attention_blocks(graph)
    assert len(blocks) == 2 and all(graph.blocks[k].kind == "head_product" for k in blocks)
    listed = explanation.edge_relevance()
    first = 0
    starts = {}
    for k, block in enumerate(graph.blocks):
        starts[k], first = first, first + block.num_edges
    for position in blocks:
        block = graph.blocks[position]
        src, dst, _ = block.edges()
        value_token, head = _heads_of(block, src)
        query_token, same_head = _heads_of(block, dst)
        assert torch.equal(head, same_head)
        heads, tokens = block.left.heads, block.left.rows
        expected = torch.zeros(2, heads, tokens, tokens, dtype=torch.float64)
        messages = listed[:, starts[position] : starts[position] + block.num_edges]
        expected.index_put_((torch.arange(2)[:, None], head, query_token, value_token), messages, accumulate=True)
        flow = attention_flow(explanation, position)
        torch.testing.assert_close(flow, expected, rtol=1e-12, atol=1e-15)
        # the values receive the flow's column sums; the output's relevance is the flow's rows plus
        # the relevance of the attention weights (the probabilities), but for the ε share
        values = explanation.level_relevance(block.src).reshape(2, tokens, heads, -1).sum(-1).transpose(1, 2)
        torch.testing.assert_close(flow.sum(-2), values, rtol=1e-10, atol=1e-12)
        weights = explanation.level_relevance(block.context[0]).reshape(2, heads, tokens, tokens)
        out = explanation.level_relevance(block.dst).reshape(2, tokens, heads, -1).sum(-1).transpose(1, 2)
        torch.testing.assert_close(flow.sum(-1) + weights.sum(-1), out, rtol=1e-6, atol=1e-10)
        assert weights.abs().sum() > 1e-3 and flow.abs().sum() > 1e-3
