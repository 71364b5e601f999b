"""Monte Carlo tree search over TEMPO candidate sets (docs/search.md).

A node is a continuation of the prompt. Expanding a node creates one child per token of its TEMPO
set (every token with probability >= tau under the node's next-token distribution, most probable
first, capped at W, the argmax if none reaches tau) and feeds ALL children in ONE forward: they sit
at the same position and each attends to the prompt, its own ancestors and itself (tree attention
in a single KV cache, sibling-isolated, so every child gets exactly its own branch's distribution).
A leaf's value is the mean log-probability of its path from the root plus a short greedy rollout,
or ``check(continuation ids)`` when a task check is given. Selection is UCT1 (mean value +
c * sqrt(ln N_parent / n_child)); a node's unvisited children are tried first, most probable first.

Cost is counted in forward tokens (queries fed to the model): an expansion costs its fed children
(EOS children and children at the depth limit are not fed), a rollout of r tokens costs r - 1. The
budget bounds the search; the prompt prefill and the final greedy completion are reported apart.
There is no randomness: the same inputs give the same tree (so any seed gives the same result).
Shapes: P prompt tokens, K cache slots, W max width, V vocab, T fed queries.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.config import ModelConfig
from tempo_jax.engine.run import check_prompt
from tempo_jax.engine.selection import top_k
from tempo_jax.model import forward, init_cache

PROMPT_BUCKET = 32  # the prompt is padded to a multiple of this (fewer compiled prefill shapes)


@dataclasses.dataclass(frozen=True)
class MCTSConfig:
    """budget: forward tokens the search may spend; threshold, max_width: the TEMPO set of an
    expansion; max_steps: tokens in the returned continuation (also the tree's depth limit);
    rollout_len: greedy tokens scored after a leaf (0: the path alone); c_uct: exploration weight;
    max_iterations: cap on select-evaluate-backup rounds (None: 4 * budget + 16)."""

    budget: int = 64
    threshold: float = 0.1
    max_width: int = 4
    max_steps: int = 16
    rollout_len: int = 4
    c_uct: float = 1.0
    max_iterations: int | None = None

    def validate(self) -> None:
        """One-line ValueError for a bad setting (before any compute)."""
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1 forward token, got {self.budget}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.max_width < 1:
            raise ValueError(f"max_width must be >= 1, got {self.max_width}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.rollout_len < 0:
            raise ValueError(f"rollout_len must be >= 0, got {self.rollout_len}")
        if not (self.c_uct >= 0 and math.isfinite(self.c_uct)):
            raise ValueError(f"c_uct must be a finite number >= 0, got {self.c_uct}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")


@dataclasses.dataclass
class Node:
    """One node of the tree. token: the last token of its continuation (-1 at the root); prior: its
    probability under the parent's distribution; logp: log of prior; depth: continuation length;
    slot: cache slot of its token (-1: root, or never fed); visits, value_sum: UCT statistics;
    top_ids, top_logp [W]: the W most probable next tokens (None until fed); terminal: EOS or at
    the depth limit."""

    token: int
    prior: float
    logp: float
    parent: int
    depth: int
    slot: int = -1
    children: list[int] = dataclasses.field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    top_ids: np.ndarray | None = None
    top_logp: np.ndarray | None = None
    terminal: bool = False

    @property
    def value(self) -> float:
        """Mean backed-up value (NaN when never visited)."""
        return self.value_sum / self.visits if self.visits else float("nan")


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """tokens: the returned continuation (most-visited path, then greedy completion to max_steps
    tokens or EOS); path_len: how many of them come from the tree; nodes: the tree (node 0 is the
    root); forward_tokens: tokens fed by the search (<= budget); completion_tokens: tokens fed by the
    final completion; prompt_tokens: the prefill; iterations: completed select-evaluate-backup
    rounds."""

    tokens: list[int]
    path_len: int
    nodes: list[Node]
    forward_tokens: int
    completion_tokens: int
    prompt_tokens: int
    iterations: int

    @property
    def total_forward_tokens(self) -> int:
        """Search plus completion (the prompt prefill excluded)."""
        return self.forward_tokens + self.completion_tokens


def _feed(params, mcfg: ModelConfig, cache, tokens, pos, slots, mask, top: int, key_pos=None):
    """ONE forward of T queries (tokens[T] at pos[T], written at slots[T], mask[T,K]; ``key_pos[K]``
    every slot's position, for sliding-window models) -> (top log-probs [T,top], their ids [T,top],
    new cache)."""
    logits, cache, _ = forward(params, mcfg, tokens[None], pos[None], slots[None], mask[None], cache,
                               key_pos=None if key_pos is None else key_pos[None])
    lp, ids = top_k(jax.nn.log_softmax(logits[0], axis=-1), top)
    return lp, ids.astype(jnp.int32), cache


_feed_jit = jax.jit(_feed, static_argnames=("mcfg", "top"), donate_argnames=("cache",))


class _Tree:
    """The search state: nodes, one KV cache holding every fed node, and the forward-token count.

    Cache layout: [0, Pb) prompt (padded), [Pb, Pb + budget) tree nodes, then a scratch region for
    rollouts and the completion (reused), and one junk slot (K - 1) for padding queries; K is
    rounded up to a multiple of 32."""

    def __init__(self, params, mcfg: ModelConfig, prompt: Sequence[int], cfg: MCTSConfig,
                 eos_ids: set[int]):
        self.params, self.mcfg, self.cfg, self.eos = params, mcfg, cfg, eos_ids
        self.P = len(prompt)
        pb = -(-self.P // PROMPT_BUCKET) * PROMPT_BUCKET
        self.tree0, self.scratch0 = pb, pb + cfg.budget
        need = self.scratch0 + max(cfg.rollout_len, cfg.max_steps) + 1
        self.K = -(-need // PROMPT_BUCKET) * PROMPT_BUCKET  # rounded up: fewer compiled shapes
        self.junk = self.K - 1
        self.W = min(cfg.max_width, mcfg.vocab_size)
        self.next_slot, self.spent = self.tree0, 0
        self.slot_pos = np.zeros(self.K, np.float32)  # every slot's position (sliding windows read it)
        cache = init_cache(mcfg, 1, self.K, params["embed"].dtype)
        ids = np.zeros(pb, np.int32)
        ids[:self.P] = prompt
        ar = np.arange(pb)
        self.slot_pos[:pb] = ar
        mask = np.arange(self.K)[None, :] <= ar[:, None]  # causal over the padded prompt
        lp, top, self.cache = _feed_jit(params, mcfg, cache, jnp.asarray(ids), jnp.asarray(ar, jnp.float32),
                                        jnp.asarray(ar, jnp.int32), jnp.asarray(mask), self.W,
                                        self._key_pos())
        lp, top = np.asarray(lp[self.P - 1]), np.asarray(top[self.P - 1])
        self.nodes = [Node(token=-1, prior=1.0, logp=0.0, parent=-1, depth=0, top_ids=top, top_logp=lp)]

    # --- helpers ----------------------------------------------------------------------------------
    def _key_pos(self):
        return jnp.asarray(self.slot_pos) if self.mcfg.has_window else None

    def path(self, i: int) -> list[int]:
        """Node indices from the root's first child down to node i."""
        out = []
        while i > 0:
            out.append(i)
            i = self.nodes[i].parent
        return out[::-1]

    def visible(self, i: int) -> np.ndarray:
        """[K] bool: the prompt and the slots of node i's ancestors and itself."""
        m = np.zeros(self.K, bool)
        m[:self.P] = True
        for j in self.path(i):
            m[self.nodes[j].slot] = True
        return m

    def candidates(self, i: int) -> list[tuple[int, float]]:
        """Node i's TEMPO set: (token, log-prob), most probable first; argmax when none reaches tau."""
        n = self.nodes[i]
        assert n.top_ids is not None and n.top_logp is not None, "node not fed yet"
        keep = [(int(t), float(l)) for t, l in zip(n.top_ids, n.top_logp)
                if math.exp(l) >= self.cfg.threshold]
        return keep or [(int(n.top_ids[0]), float(n.top_logp[0]))]

    def is_terminal(self, token: int, depth: int) -> bool:
        return token in self.eos or depth >= self.cfg.max_steps

    def expansion_cost(self, i: int) -> int:
        d = self.nodes[i].depth + 1
        return sum(not self.is_terminal(t, d) for t, _ in self.candidates(i))

    # --- the three moves --------------------------------------------------------------------------
    def expand(self, i: int) -> None:
        """Create node i's children and feed the non-terminal ones in ONE forward (W queries)."""
        parent, d = self.nodes[i], self.nodes[i].depth + 1
        base = self.visible(i)
        fed = []
        for t, l in self.candidates(i):
            child = Node(token=t, prior=math.exp(l), logp=l, parent=i, depth=d,
                         terminal=self.is_terminal(t, d))
            parent.children.append(len(self.nodes))
            if not child.terminal:
                child.slot = self.next_slot
                self.next_slot += 1
                fed.append(len(self.nodes))
            self.nodes.append(child)
        if not fed:
            return
        W = self.W
        toks = np.zeros(W, np.int32)
        slots = np.full(W, self.junk, np.int32)
        mask = np.zeros((W, self.K), bool)
        for q, j in enumerate(fed):
            toks[q], slots[q] = self.nodes[j].token, self.nodes[j].slot
            mask[q] = base
            mask[q, slots[q]] = True
        mask[len(fed):, self.junk] = True
        pos = np.full(W, self.P + d - 1, np.float32)
        self.slot_pos[slots] = pos
        lp, top, self.cache = _feed_jit(self.params, self.mcfg, self.cache, jnp.asarray(toks),
                                        jnp.asarray(pos), jnp.asarray(slots), jnp.asarray(mask), W,
                                        self._key_pos())
        lp, top = np.asarray(lp), np.asarray(top)
        for q, j in enumerate(fed):
            self.nodes[j].top_ids, self.nodes[j].top_logp = top[q], lp[q]
        self.spent += len(fed)

    def greedy_tail(self, i: int, n: int) -> tuple[list[int], list[float], int]:
        """Up to n greedy tokens after node i (stops after EOS), their log-probs, and the forward
        tokens fed (n - 1 at most: the last token's log-prob needs no forward after it)."""
        node = self.nodes[i]
        if node.terminal or n <= 0:
            return [], [], 0
        vis = self.visible(i)
        top, lp = node.top_ids, node.top_logp
        assert top is not None and lp is not None, "node not fed yet"
        toks, lps, cost = [], [], 0
        for j in range(n):
            t = int(top[0])
            toks.append(t)
            lps.append(float(lp[0]))
            if t in self.eos or j == n - 1:
                break
            slot = self.scratch0 + j
            vis[slot] = True
            self.slot_pos[slot] = self.P + node.depth + j
            lpa, topa, self.cache = _feed_jit(
                self.params, self.mcfg, self.cache, jnp.asarray([t], jnp.int32),
                jnp.asarray([self.P + node.depth + j], jnp.float32), jnp.asarray([slot], jnp.int32),
                jnp.asarray(vis[None]), self.W, self._key_pos())
            top, lp = np.asarray(topa[0]), np.asarray(lpa[0])
            cost += 1
        return toks, lps, cost

    def rollout_cost(self, i: int) -> int:
        n = self.nodes[i]
        r = min(self.cfg.rollout_len, self.cfg.max_steps - n.depth)
        return 0 if n.terminal else max(r - 1, 0)


def _uct_child(tree: _Tree, i: int) -> int:
    """UCT1 over node i's children; unvisited ones first (most probable first)."""
    node = tree.nodes[i]
    best, best_score = -1, -math.inf
    for j in node.children:  # children are stored most probable first: ties keep the earlier
        c = tree.nodes[j]
        if c.visits == 0:
            return j
        score = c.value + tree.cfg.c_uct * math.sqrt(math.log(max(node.visits, 1)) / c.visits)
        if score > best_score:
            best, best_score = j, score
    return best


def search(params, mcfg: ModelConfig, prompt_ids: Sequence[int], cfg: MCTSConfig,
           check: Callable[[list[int]], float] | None = None) -> SearchResult:
    """Run the tree search from ``prompt_ids`` and return the most-visited continuation.

    ``check(continuation_ids) -> float`` (higher is better) replaces the mean log-prob value.
    """
    cfg.validate()
    check_prompt(mcfg, prompt_ids, cfg.max_steps + 1)
    p = len(prompt_ids)
    if check is not None and not callable(check):
        raise ValueError(f"check must be callable (continuation ids -> float), got {type(check).__name__}")
    tree = _Tree(params, mcfg, list(map(int, prompt_ids)), cfg, set(mcfg.eos_token_ids or ()))
    max_it = cfg.max_iterations if cfg.max_iterations is not None else 4 * cfg.budget + 16
    iterations = 0
    while iterations < max_it:
        i, trail = 0, [0]
        while tree.nodes[i].children:
            i = _uct_child(tree, i)
            trail.append(i)
        node = tree.nodes[i]
        if not node.terminal and (i == 0 or node.visits > 0):
            cost = tree.expansion_cost(i)
            if tree.spent + cost > cfg.budget:
                break
            tree.expand(i)
            i = node.children[0]
            trail.append(i)
        cost = tree.rollout_cost(i)
        if tree.spent + cost > cfg.budget:
            break
        r = min(cfg.rollout_len, cfg.max_steps - tree.nodes[i].depth)
        tail, tail_lp, fed = tree.greedy_tail(i, r)
        tree.spent += fed
        path = tree.path(i)
        cont = [tree.nodes[j].token for j in path] + tail
        if check is not None:
            value = float(check(cont))
        else:
            lps = [tree.nodes[j].logp for j in path] + tail_lp
            value = float(np.mean(lps))
        for j in trail:
            tree.nodes[j].visits += 1
            tree.nodes[j].value_sum += value
        iterations += 1
    # the answer: most visited child (ties: most probable) from the root down, then greedy
    i = 0
    while tree.nodes[i].children:
        i = max(tree.nodes[i].children, key=lambda j: (tree.nodes[j].visits, tree.nodes[j].prior))
    path = tree.path(i)
    tail, _, fed = tree.greedy_tail(i, cfg.max_steps - tree.nodes[i].depth)
    tokens = [tree.nodes[j].token for j in path] + tail
    return SearchResult(tokens=tokens, path_len=len(path), nodes=tree.nodes, forward_tokens=tree.spent,
                        completion_tokens=fed, prompt_tokens=p, iterations=iterations)
