"""The mutants ``scripts/mutate`` applies: one plausible bug each, as an exact text replacement.

Each mutant names its file, the text it replaces (which must occur exactly once in that file, else
the mutant is reported as stale), the replacement, and the bug it stands for. Snippets are kept
small so that edits elsewhere in a file leave them valid.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    path: str
    original: str
    replacement: str
    bug: str


RULES = "graphlrp/rules.py"
PROPAGATE = "graphlrp/propagate.py"
GRAPH = "graphlrp/graph.py"  # the plain forward pass (Graph.preactivation)
PLAN = "graphlrp/plan.py"
WORKSPACE = "graphlrp/workspace.py"
BASE = "graphlrp/blocks/base.py"
DENSE = "graphlrp/blocks/dense.py"
SPARSE = "graphlrp/blocks/sparse.py"
EDGES = "graphlrp/blocks/edgelist.py"
ELEMENTWISE = "graphlrp/blocks/elementwise.py"
CONV = "graphlrp/blocks/conv.py"
POOL = "graphlrp/blocks/pool.py"

MUTANTS = [
    # -- rules: the terms, biases, signs and stabilizers of every rule ---------------------------
    Mutant(RULES, "return Zero() if zero_bias else transform", "return transform if zero_bias else Zero()",
           "zero_bias flag inverted"),
    Mutant(RULES, "        return denominator + self.epsilon\n", "        return denominator - self.epsilon\n",
           "plain stabilizer subtracts ε"),
    Mutant(RULES, "return signed_epsilon.mul_(2 * self.epsilon).sub_(self.epsilon).add_(denominator)",
           "return denominator + self.epsilon", "signed stabilizer adds ε unsigned"),
    Mutant(RULES, "return (Group((Term(Identity(), Identity(), _bias(Identity(), self.zero_bias)),)),)",
           "return (Group((Term(Identity(), Identity(), Zero()),)),)", "ε drops its bias term"),
    Mutant(RULES, "return (Group((Term(Positive(), Positive(), bias), Term(Negative(), Negative(), Zero()))),)",
           "return (Group((Term(Positive(), Positive(), bias),)),)", "z⁺ drops the a⁻w⁻ term"),
    Mutant(RULES, "return (Group((Term(Identity(), Positive(), bias),)),)",
           "return (Group((Term(Positive(), Positive(), bias),)),)", "weights-only z⁺ clamps the inputs"),
    Mutant(RULES, "bias = _bias(Positive(), self.zero_bias)\n        if self.weights_only:",
           "bias = _bias(Identity(), self.zero_bias)\n        if self.weights_only:", "z⁺ uses b instead of b⁺"),
    Mutant(RULES, "negative = (Term(Positive(), Negative(), neg_bias), Term(Negative(), Positive(), Zero()))",
           "negative = (Term(Positive(), Negative(), Zero()), Term(Negative(), Positive(), Zero()))",
           "αβ drops its negative bias term"),
    Mutant(RULES, "negative = (Term(Identity(), Negative(), neg_bias),)", "negative = (Term(Identity(), Negative(), Zero()),)",
           "weights-only αβ drops its negative bias term"),
    Mutant(RULES, "groups.append(Group(negative, scale=-self.beta))", "groups.append(Group(negative, scale=self.beta))",
           "αβ adds the β part instead of subtracting it"),
    Mutant(RULES, "pos_bias = _bias(Positive(), self.zero_bias)", "pos_bias = _bias(Negative(), self.zero_bias)",
           "αβ positive part takes b⁻"),
    Mutant(RULES, "positive = (Term(Positive(), Positive(), pos_bias), Term(Negative(), Negative(), Zero()))",
           "positive = (Term(Positive(), Positive(), pos_bias), Term(Negative(), Positive(), Zero()))",
           "αβ positive part pairs a⁻ with w⁺"),
    Mutant(RULES, 'down = AddScaledPart(self.gamma, "negative")', 'down = AddScaledPart(self.gamma, "positive")',
           "γ uses W↑ for W↓"),
    Mutant(RULES, "return (Group((Term(Identity(), up, _bias(up, self.zero_bias)),)),)",
           "return (Group((Term(Identity(), up, _bias(Identity(), self.zero_bias)),)),)",
           "weights-only γ takes b instead of b + γb⁺"),
    Mutant(RULES, "negative = (Term(Positive(), down, _bias(down, self.zero_bias)), Term(Negative(), up, Zero()))",
           "negative = (Term(Positive(), down, _bias(up, self.zero_bias)), Term(Negative(), up, Zero()))",
           "γ on negative outputs takes b + γb⁺"),
    Mutant(RULES, 'Group(negative, served="negative")', 'Group(negative, served="positive")',
           "γ serves the positive outputs twice"),
    Mutant(RULES, "return (Group((Term(Ones(), Square(), _bias(Square(), self.zero_bias)),)),)",
           "return (Group((Term(Identity(), Square(), _bias(Square(), self.zero_bias)),)),)",
           "w² keeps the inputs"),
    Mutant(RULES, "Term(Ones(), Square(), _bias(Square(), self.zero_bias))",
           "Term(Ones(), Square(), _bias(Identity(), self.zero_bias))", "w² takes b instead of b²"),
    Mutant(RULES, "Term(Constant(self.low), Positive(), _bias(Positive(), self.zero_bias), sign=-1.0)",
           "Term(Constant(self.low), Positive(), _bias(Positive(), self.zero_bias), sign=1.0)",
           "z^B adds l·w⁺ instead of subtracting it"),
    Mutant(RULES, "Term(Constant(self.high), Negative()", "Term(Constant(self.low), Negative()",
           "z^B uses the low bound for w⁻"),
    Mutant(RULES, "super().__init__(epsilon, zero_bias=True)", "super().__init__(epsilon, zero_bias=False)",
           "Norm keeps the bias"),
    # -- propagation: forward, denominators, quotients, redistribution, balance -------------------
    Mutant(GRAPH, "        if level.bias is not None:\n            z.add_(level.bias)\n        return z",
           "        return z", "forward pass drops the bias"),
    Mutant(PROPAGATE, "    if level.bias is not None:\n        z.add_(level.bias)\n    trace.products",
           "    trace.products", "forward from the rule's products drops the bias"),
    Mutant(PROPAGATE, "torch.add(t0, t1, alpha=c1, out=total)", "torch.add(t0, t1, alpha=-c1, out=total)",
           "denominator subtracts its second product"),
    Mutant(PROPAGATE, "return total if per_node is None else total.add_(per_node)",
           "return total if per_node is None else total.sub_(per_node)", "denominator subtracts the bias term"),
    Mutant(PROPAGATE, "torch.mul(parts[0][1], parts[0][0], out=total)", "total.copy_(parts[0][1])",
           "denominator drops a product's coefficient"),
    Mutant(PROPAGATE, "alpha=coefficient / factor)\n    for", "alpha=coefficient)\n    for",
           "combined quotient not divided by the factor"),
    Mutant(PROPAGATE, "back, value=factor)", "back, value=1.0)", "redistribution drops the group's scale"),
    Mutant(PROPAGATE, "parts = [(group_plan.linear, z_forward)] if group_plan.linear else []",
           "parts = [(1.0, z_forward)] if group_plan.linear else []", "denominator ignores the coefficient of z"),
    Mutant(PROPAGATE, 'compare = torch.gt if group.served == "positive" else torch.lt',
           'compare = torch.lt if group.served == "positive" else torch.gt', "served mask of the wrong sign"),
    Mutant(PROPAGATE, "quotient = torch.div(target, stabilized.add(zero))",
           "quotient = torch.div(r_level, stabilized.add(zero))", "unsigned quotient ignores the served mask"),
    Mutant(PROPAGATE, "bias_part += group.scale * (quotient * beta).sum(1)", "bias_part += (quotient * beta).sum(1)",
           "balance: bias absorption without the group's scale"),
    Mutant(PROPAGATE, "(quotient * (stabilized - denominator)).sum(1)", "(quotient * (denominator - stabilized)).sum(1)",
           "balance: stabilizer absorption of the wrong sign"),
    Mutant(PROPAGATE, "nonnegative = {src: signs and trace.source(graph, src).nonnegative for src in sources}",
           "nonnegative = {src: signs for src in sources}", "every source level taken as non-negative"),
    Mutant(PROPAGATE, "bool(stored.min() >= 0)", "bool(stored.max() >= 0)", "non-negativity tested on the maximum"),
    # -- plans: how a rule's terms become products ----------------------------------------------
    Mutant(PLAN, "    if nonnegative and isinstance(transform, Negative):\n        return None",
           "    if isinstance(transform, Negative):\n        return None", "a⁻ taken as zero on every level"),
    Mutant(PLAN, "combination.get(key, 0.0) + scale * term.sign * coefficient",
           "combination.get(key, 0.0) + scale * coefficient", "a term's sign dropped"),
    Mutant(PLAN, "return sum(t.sign * t.bias(bias) for t in terms)", "return sum(t.bias(bias) for t in terms)",
           "a bias term's sign dropped"),
    Mutant(PLAN, "else per_node - linear * level.bias", "else per_node + linear * level.bias",
           "the level's bias added instead of removed from z"),
    Mutant(PLAN, "return factor if all(c == factor * r for (_, c), (_, r) in zip(items, reference)) else None",
           "return factor", "redistributions merged whose quotients are not proportional"),
    Mutant(PLAN, "for w in (1, -1)}", "for w in (1,)}", "forward product covers only W⁺"),
    Mutant(PLAN, "if len(parts) == len(full) and set(parts) == full:", "if set(parts) == full:",
           "forward product counts a part twice"),
    # -- workspace: what is kept between calls (plans, operands, range checks) ---------------------
    Mutant(WORKSPACE, "key = (level.index, groups, tuple(sorted(nonnegative.items())))",
           "key = (level.index, groups)", "plan cached without the sources' signs"),
    Mutant(WORKSPACE, "cache = self._operands.get(id(block))\n        if cache is None:\n"
           "            cache = self._operands[id(block)] = ",
           "cache = self._operands.get(block.dst)\n        if cache is None:\n"
           "            cache = self._operands[block.dst] = ",
           "one operand cache per destination level, shared by its incoming blocks"),
    Mutant(WORKSPACE, "for index in range(1, len(graph.levels)):", "for index in range(2, len(graph.levels)):",
           "range check skips the first level's rule"),
    Mutant(WORKSPACE, "else float(level.bias.abs().max())", "else float(level.bias.max())",
           "range check takes the largest bias, not the largest |bias|"),
    # -- blocks: the products and edge lists of every kind --------------------------------------
    Mutant(BASE, "mul_(weight).mul_(s.index_select(1, dst))", "mul_(weight).mul_(s.index_select(1, src))",
           "edge messages gather s by the source"),
    Mutant(DENSE, "return in_layout_of(x @ operand.T, x)", "return in_layout_of(x @ operand, x)",
           "dense matvec misses a transpose"),
    Mutant(DENSE, "return in_layout_of(s @ operand, s)", "return in_layout_of(s @ operand.T, s)",
           "dense rmatvec transposes once too often"),
    Mutant(DENSE, "panel = panel if forward else panel.T", "panel = panel.T if forward else panel",
           "dense panels transposed the wrong way"),
    Mutant(DENSE, "if cache is None or not cache.keep:\n        return False", "if cache is None:\n        return False",
           "dense block keeps transformed matrices when caching is off"),
    Mutant(DENSE, "self._edges = (src, dst, self.weight[dst, src])", "self._edges = (dst, src, self.weight[dst, src])",
           "dense edges list destination as source"),
    Mutant(SPARSE, "order = torch.argsort(dst_idx * n_src + src_idx)", "order = torch.argsort(dst_idx * n_dst + src_idx)",
           "CSR sorted by the wrong row stride"),
    Mutant(SPARSE, "values[self.perm_t]", "values", "transposed CSR misses the permutation of its values"),
    Mutant(SPARSE, "self._col_t = rows.index_select(0, self.perm_t)", "self._col_t = rows",
           "transposed CSR misses the permutation of its columns"),
    Mutant(SPARSE, "return self.col.long(), self.rows().long(), self.values",
           "return self.rows().long(), self.col.long(), self.values", "sparse edges swap source and destination"),
    Mutant(EDGES, "part = slice(start, start + chunk)", "part = slice(start, start + chunk - 1)",
           "edge-list chunk misses its last edge"),
    Mutant(EDGES, "self._gather_scatter(s, operand, self.dst_idx, self.src_idx, self.n_src)",
           "self._gather_scatter(s, operand, self.src_idx, self.dst_idx, self.n_src)",
           "edge-list rmatvec gathers by the source"),
    Mutant(ELEMENTWISE, "reductions.scatter_add_(out, self.index, (s * operand).T)",
           "reductions.scatter_add_(out, self.index, s.T)", "element-wise rmatvec drops the weights"),
    Mutant(ELEMENTWISE, "return x.index_select(1, self.index) * operand", "return x.index_select(1, self.index)",
           "element-wise matvec drops the weights"),
    Mutant(CONV, "flipped = kernel.transpose(0, 1).flip(dims=tuple(range(2, kernel.dim()))).contiguous()",
           "flipped = kernel.transpose(0, 1).contiguous()", "transposed convolution misses the kernel flip"),
    Mutant(CONV, "padding = tuple(d * (k - 1) - p for", "padding = tuple(d * k - p for",
           "transposed convolution padding off by one"),
    Mutant(CONV, "in_channel = (o // out_per_group) * c_in_group + c", "in_channel = c",
           "grouped convolution edges ignore the group"),
    Mutant(CONV, "return ((position >= 0) & (position < n_in)).sum(1)", "return ((position >= 0) & (position <= n_in)).sum(1)",
           "convolution edge count off by one at the border"),
    Mutant(POOL, "best = torch.maximum(best, candidate)", "best = candidate", "max pooling forgets the running maximum"),
    Mutant(POOL, "s.reshape(len(s), self.in_shape[0], -1) * self._unit_weight(transform)",
           "s.reshape(len(s), self.in_shape[0], -1)", "max pooling rmatvec drops the transformed unit weight"),
    Mutant(POOL, "step = self.stride[d] * math.prod(spatial[d + 1:])", "step = math.prod(spatial[d + 1:])",
           "max pooling window origins ignore the stride"),
]
