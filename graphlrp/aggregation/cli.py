"""The ``graphlrp aggregate`` command: parameter, node and edge sums over a data set to a file.

Registered by :mod:`graphlrp.cli` with :func:`add_parser`, which it hands itself: the command uses
its loading, rule and lowering options and helpers, so the model, inputs and rules mean what they
mean for ``graphlrp explain``, and this module imports nothing of the command line.

Started by ``torchrun`` (``torchrun --nproc-per-node N -m graphlrp aggregate ...``), the command
joins the job's process group (gloo; NCCL with ``--device cuda``, process ``LOCAL_RANK`` on GPU
``cuda:LOCAL_RANK``) and shares the chunks between the processes; the first
process writes the files, which hold the same bits as the command run on one process.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import ModuleType

import networkx as nx
import numpy as np
import torch

from ..errors import InputError
from ..graph import Graph
from .core import Aggregate, aggregate
from .distributed import ENVIRONMENT


def add_parser(subparsers: argparse._SubParsersAction, cli: ModuleType) -> argparse.ArgumentParser:
    """Add the ``aggregate`` subcommand to ``subparsers``; ``cli`` is :mod:`graphlrp.cli`."""
    parser = cli._subcommand(
        subparsers, "aggregate", run, "relevance per parameter, node and edge summed over every sample",
        "Explain every sample of INPUTS and write the relevance summed over them to --out: per parameter of "
        "the model (named as in model.named_parameters()), per node and per edge. With --edges, also write "
        "the --top-k edges of largest summed |relevance| as GraphML or JSON.")
    parser.add_argument("--out", required=True, metavar="FILE", type=cli._path_with_suffix(".pt", ".npz"),
                        help="sums: .pt (torch.save of a dict) or .npz (numpy arrays 'count', 'nodes', 'edges' "
                             "and 'parameter:<name>')")
    parser.add_argument("--batch-size", type=cli._int_at_least(1), default=64, metavar="N",
                        help="samples explained at once (default: %(default)s)")
    parser.add_argument("--chunk-size", type=cli._int_at_least(1), default=512, metavar="N",
                        help="samples per chunk, the unit of work of a process and of a checkpoint; the sums "
                             "depend on it and on --batch-size, never on the number of processes "
                             "(default: %(default)s)")
    parser.add_argument("--by-class", action="store_true", help="sums per explained class (a leading class axis)")
    parser.add_argument("--absolute", action="store_true", help="sum |relevance| instead of relevance")
    parser.add_argument("--parameters-only", action="store_true",
                        help="keep sums per parameter and node only, not per edge (a convolution's sums "
                             "the size of its weight, not of its edges)")
    parser.add_argument("--checkpoint", metavar="FILE", type=Path,
                        help="save progress there; a rerun with the same arguments resumes from it")
    parser.add_argument("--edges", metavar="FILE", type=cli._path_with_suffix(".graphml", ".json"),
                        help="also write the most relevant edges as GraphML or node-link JSON")
    parser.add_argument("--top-k", type=cli._int_at_least(1), default=1000, metavar="N",
                        help="edges written with --edges (default: %(default)s)")
    parser.set_defaults(cli=cli)
    return parser


def run(args: argparse.Namespace) -> None:
    """``aggregate``: lower the model, sum relevance over every sample, write the sums."""
    cli = args.cli
    if args.edges is not None and args.by_class:
        raise InputError("--edges writes one value per edge; leave out --by-class")
    if args.edges is not None and args.parameters_only:
        raise InputError("--edges writes the most relevant edges; leave out --parameters-only")
    distributed = all(name in os.environ for name in ENVIRONMENT)
    if distributed and args.device.type == "cuda" and args.device.index is None:  # one GPU per process
        args.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    job = cli._prepare(args)
    graph = cli._lower(args, job.model, job.inputs[: args.batch_size])
    target = args.target
    with cli._failing("cannot aggregate the samples", cli.EXPLAIN_BUILTINS):
        sums = aggregate(graph, job.inputs, target, batch_size=args.batch_size, by_class=args.by_class,
                         absolute=args.absolute, progress=not args.quiet, checkpoint=args.checkpoint,
                         chunk_size=args.chunk_size, distributed=distributed, edges=not args.parameters_only,
                         **job.method)
    if distributed:
        import torch.distributed as dist

        first = dist.get_rank() == 0
        dist.destroy_process_group()
        if not first:
            return
    with cli._writing(args.out):
        write_sums(sums, args.out)
    cli._log(args, f"wrote the sums over {sums.count} samples to {args.out}")
    if args.edges is not None:
        G = top_edges(graph, sums, args.top_k)
        with cli._writing(args.edges):
            if args.edges.suffix.lower() == ".graphml":
                nx.write_graphml(G, args.edges)
            else:
                args.edges.write_text(json.dumps(nx.node_link_data(G)), encoding="utf-8")
        cli._log(args, f"wrote {G.number_of_edges():,} of {graph.num_edges:,} edges to {args.edges}")


def write_sums(sums: Aggregate, path: Path) -> None:
    """The count, node, edge (unless aggregated with ``edges=False``) and parameter sums as ``.pt``
    (a dict) or ``.npz``, by ``path``'s suffix."""
    parameters = sums.parameter_relevance()
    edges = {"edges": sums.edge_relevance()} if sums.edges else {}
    if path.suffix.lower() == ".npz":
        arrays = {"count": np.array(sums.count), "nodes": sums.node_relevance.cpu().numpy(),
                  **{name: values.cpu().numpy() for name, values in edges.items()},
                  **{f"parameter:{name}": values.cpu().numpy() for name, values in parameters.items()}}
        np.savez(path, **arrays)
        return
    torch.save({"count": sums.count, "nodes": sums.node_relevance, **edges, "parameters": parameters}, path)


def top_edges(graph: Graph, sums: Aggregate, k: int) -> nx.DiGraph:
    """The ``k`` edges of largest summed ``|relevance|`` with their end nodes, as a networkx graph:
    edges carry ``weight`` and ``relevance`` (the sum), nodes ``label`` and ``relevance``."""
    relevance = sums.edge_relevance()
    chosen = torch.argsort(relevance.abs(), descending=True, stable=True)[:k]
    src, dst, weight = graph.edges()
    nodes = sums.node_relevance
    G = nx.DiGraph(samples=sums.count)
    for e in chosen.tolist():
        i, j = int(src[e]), int(dst[e])
        for node in (i, j):
            if node not in G:
                G.add_node(node, label=graph.node_label(node), relevance=float(nodes[node]))
        G.add_edge(i, j, weight=float(weight[e]), relevance=float(relevance[e]))
    return G
