"""Small networks to explain: directed acyclic edge lists (:class:`DagSpec`) and tiny torch models
(:class:`~fuzz.models.ModelSpec`), each with its graph and an independent reference forward."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
from hypothesis import strategies as st
from torch import Tensor

import graphlrp

from .models import ModelSpec, build_model, model_specs
from .reference import HOMOGENEOUS, evaluate_dag

#: activations of generated edge-list networks (those :mod:`fuzz.reference` writes out)
DAG_ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid", "abs", "leaky_relu", "elu", "square")
#: floating dtypes of generated edge-list networks, half precision now and then
DAG_DTYPES = ("float64",) * 4 + ("float32",) * 3 + ("float16", "bfloat16")


@dataclass(frozen=True)
class DagSpec:
    """An edge-list network: ``n`` nodes with ids shuffled, ``edges`` as ``(src, dst, weight)``.

    ``inputs`` are in the order of the input's columns; ``outputs`` is ``None`` for the default
    (the non-input nodes without outgoing edges, ascending).
    """

    n: int
    edges: tuple[tuple[int, int, float], ...]
    bias: tuple[float, ...]
    activation: tuple[str, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...] | None
    dtype: str = "float64"
    block_kind: str = "sparse"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def output_ids(self) -> tuple[int, ...]:
        if self.outputs is not None:
            return self.outputs
        sources = {s for s, _, _ in self.edges}
        return tuple(v for v in range(self.n) if v not in sources and v not in self.inputs)

    @property
    def homogeneous(self) -> bool:
        """LRP-0 equals gradient × input (checked in single and double precision only)."""
        return all(b == 0 for b in self.bias) and all(a in HOMOGENEOUS for a in self.activation) and \
            self.dtype in ("float32", "float64")

    def reference(self, x: Tensor) -> Tensor:
        """The network's output computed node by node (:func:`fuzz.reference.evaluate_dag`)."""
        return evaluate_dag(self.n, self.edges, self.bias, self.activation, self.inputs, self.output_ids, x.double())

    def build(self) -> graphlrp.Graph:
        src, dst, weight = zip(*self.edges)
        return graphlrp.graph_from_edges(
            list(src), list(dst), torch.tensor(weight, dtype=self.torch_dtype), bias=list(self.bias),
            activation=list(self.activation), inputs=list(self.inputs),
            outputs=None if self.outputs is None else list(self.outputs), block_kind=self.block_kind,
            dtype=self.torch_dtype,
        )


weights = st.builds(lambda m, s: m * s, st.floats(0.1, 2.0), st.sampled_from([1.0, -1.0]))


@st.composite
def dag_specs(draw, homogeneous: bool | None = None, max_inputs: int = 3, max_other: int = 5,
              dtypes: tuple[str, ...] = DAG_DTYPES) -> DagSpec:
    """Valid networks: 1–3 inputs, 1–5 further nodes, skip edges, ids not in topological order."""
    n_in = draw(st.integers(1, max_inputs))
    n = n_in + draw(st.integers(1, max_other))
    order = draw(st.permutations(range(n)))  # order[k]: the id of the k-th node in topological order
    edges = []
    for k in range(n_in, n):
        sources = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=min(k, 3), unique=True))
        edges += [(order[s], order[k], draw(weights)) for s in sources]
    plain = homogeneous if homogeneous is not None else draw(st.booleans())
    names = ("identity", "relu", "leaky_relu") if plain else DAG_ACTIVATIONS
    activation = ["identity"] * n
    bias = [0.0] * n
    for k in range(n_in, n):
        activation[order[k]] = draw(st.sampled_from(names))
        if not plain:
            bias[order[k]] = draw(st.floats(-1, 1))
    others = [order[k] for k in range(n_in, n)]
    outputs = draw(st.none() | st.lists(st.sampled_from(others), min_size=1, max_size=3, unique=True).map(tuple))
    return DagSpec(n, tuple(edges), tuple(bias), tuple(activation), tuple(order[:n_in]), outputs,
                   dtype=draw(st.sampled_from(dtypes)),
                   block_kind=draw(st.sampled_from(["sparse", "edges", "dense"])))


NetworkSpec = Union[DagSpec, ModelSpec]


@dataclass
class Network:
    """A built network: its graph, the reference forward, and whether LRP-0 = gradient × input on it."""

    graph: graphlrp.Graph
    reference: Callable[[Tensor], Tensor]
    homogeneous: bool
    dtype: torch.dtype
    inputs: int


def build_network(spec: NetworkSpec) -> Network:
    """The graph of ``spec`` with its reference (the spec must be valid: any error is the harness's)."""
    if isinstance(spec, DagSpec):
        return Network(spec.build(), spec.reference, spec.homogeneous, spec.torch_dtype, len(spec.inputs))
    model = build_model(spec, canonical=True)
    x = torch.randn(2, spec.widths[0], dtype=spec.torch_dtype, generator=torch.Generator().manual_seed(spec.seed))
    return Network(graphlrp.lower(model, x), model, spec.homogeneous, spec.torch_dtype, spec.widths[0])


def network_specs(homogeneous: bool | None = None) -> st.SearchStrategy[NetworkSpec]:
    """Valid networks of either kind."""
    models = model_specs(varied=False)
    if homogeneous:
        models = models.filter(lambda s: s.homogeneous)
    return st.one_of(dag_specs(homogeneous=homogeneous), models)


def batch(network: Network, size: int, seed: int, scale: float = 1.0) -> Tensor:
    """A finite batch of inputs for ``network``."""
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(size, network.inputs, generator=generator, dtype=network.dtype)
