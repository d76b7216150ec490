"""Token embeddings: the looked-up vectors are the graph's input, a token's relevance their sum.

A lookup ``nn.Embedding(ids)`` has no edges to relevance (the ids are not quantities), so a model
of token ids is lowered from its embedding output on: the part after the lookup takes the vectors
``(B, T, E)`` and is lowered with :func:`graphlrp.lower`; :func:`embed` gives its input and
:func:`token_relevance` maps the input relevance back to one value per token::

    vectors = graphlrp.embed(model.tokens, ids)
    graph = graphlrp.lower(model.body, vectors)
    relevance = graphlrp.token_relevance(graphlrp.explain(graph, vectors, target=0).input_relevance)

Position embeddings added inside the lowered part are constants of the graph (biases of a sum
level), so their share of relevance is absorbed there, as in LXT.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError, UnsupportedModuleError


def embed(embedding: nn.Embedding, ids: Tensor) -> Tensor:
    """The vectors ``embedding`` looks up for the token ``ids``, detached: the graph's input.

    Parameters
    ----------
    embedding : nn.Embedding
        The model's token embedding.
    ids : Tensor
        ``(B, T)`` integer token ids.

    Returns
    -------
    Tensor
        ``(B, T, embedding_dim)`` on the embedding's device and of its dtype.
    """
    if not isinstance(embedding, nn.Embedding):
        raise InputError(f"embed needs an nn.Embedding, not {type(embedding).__name__}")
    if embedding.max_norm is not None:
        raise UnsupportedModuleError("an nn.Embedding with max_norm renormalizes its weights when called; it is "
                                     "not supported")
    if ids.dtype not in (torch.int32, torch.int64) or ids.dim() != 2:
        raise InputError(f"token ids must be an integer tensor (batch, tokens); got {ids.dtype} of shape "
                         f"{tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= embedding.num_embeddings):
        raise InputError(f"token ids must lie in 0 .. {embedding.num_embeddings - 1}; they range from "
                         f"{int(ids.min())} to {int(ids.max())}")
    with torch.no_grad():
        return F.embedding(ids.to(embedding.weight.device), embedding.weight).detach().clone()


def token_relevance(relevance: Tensor) -> Tensor:
    """Relevance per token: ``(B, T, E)`` input relevance summed over the embedding dimensions."""
    if relevance.dim() != 3:
        raise InputError(f"token relevance needs input relevance of shape (batch, tokens, features); got "
                         f"{tuple(relevance.shape)}")
    return relevance.sum(-1)
