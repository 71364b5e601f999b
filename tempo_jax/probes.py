"""Learning with optax where it is the natural tool.

- :func:`train_linear_probe`: logistic-regression probe on residual streams (e.g. does a member
  survive pruning?), full-batch Adam with L2, returns the probe and held-out accuracy.
- :func:`fit_slot_bias`: optimise a per-layer additive attention-logit bias on chosen key slots
  (e.g. the parallel tokens) so that the attention they receive per token matches a reference group
  (e.g. non-parallel tokens), by gradient descent through the model.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tempo_jax.interventions import Interventions
from tempo_jax.model import TapsSpec, forward


@dataclasses.dataclass
class Probe:
    w: np.ndarray  # [E]
    b: float
    train_acc: float = float("nan")
    test_acc: float = float("nan")

    def score(self, x) -> np.ndarray:
        """Logit ``x @ w + b`` per row ``[N]``."""
        return np.asarray(x, np.float64) @ self.w + self.b

    def predict(self, x) -> np.ndarray:
        return self.score(x) > 0


def fit_logistic(x, y, *, steps: int = 300, lr: float = 0.05, l2: float = 1e-3) -> Probe:
    """Fit ``sigmoid(x @ w + b)`` to boolean labels ``y[N]`` from features ``x[N,E]`` on ALL rows
    given (full-batch Adam, L2 on w). Features are standardised with these rows' mean/std, folded
    back into w, b. Use it inside your own (e.g. prompt-grouped) cross-validation."""
    x, y = np.asarray(x, np.float32), np.asarray(y, bool)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need x[N,E] and y[N], got {x.shape} and {y.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError("labels have one class only; a probe needs both")
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = jnp.asarray((x - mu) / sd)
    yt = jnp.asarray(y, jnp.float32)

    def loss(p):
        z = xs @ p["w"] + p["b"]
        return optax.sigmoid_binary_cross_entropy(z, yt).mean() + l2 * jnp.sum(p["w"] ** 2)

    opt = optax.adam(lr)
    p = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
    state = opt.init(p)
    update = jax.jit(lambda p, s: _adam_step(loss, opt, p, s))
    for _ in range(steps):
        p, state = update(p, state)
    w = np.asarray(p["w"], np.float64) / sd
    b = float(p["b"]) - float(mu @ w)
    return Probe(w, b)


def train_linear_probe(x, y, *, steps: int = 300, lr: float = 0.05, l2: float = 1e-3,
                       test_fraction: float = 0.25, seed: int = 0) -> Probe:
    """:func:`fit_logistic` on a random ``1 - test_fraction`` of the rows; accuracy on both parts.
    (Rows are split at random: for rows clustered by prompt use a grouped split instead.)"""
    x, y = np.asarray(x, np.float32), np.asarray(y, bool)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need x[N,E] and y[N], got {x.shape} and {y.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError("labels have one class only; a probe needs both")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = max(1, int(round(test_fraction * len(y))))
    test, train = order[:n_test], order[n_test:]
    probe = fit_logistic(x[train], y[train], steps=steps, lr=lr, l2=l2)
    acc = lambda idx: float((probe.predict(x[idx]) == y[idx]).mean())
    probe.train_acc, probe.test_acc = acc(train), acc(test)
    return probe


def fit_slot_bias(params, cfg, tokens, positions, slots, mask, cache, target_slots, reference_slots,
                  *, steps: int = 100, lr: float = 0.1):
    """Per-layer bias ``[L]`` on ``target_slots[K]`` that equalises per-token attention.

    Loss = sum over layers of (mean attention per target slot - mean attention per reference slot)^2,
    averaged over heads and the forward's queries. Returns (bias[L], gap_before[L], gap_after[L]).
    """
    target = jnp.asarray(target_slots, bool)
    ref = jnp.asarray(reference_slots, bool)
    if not bool(target.any()) or not bool(ref.any()):
        raise ValueError("target_slots and reference_slots must each select at least one slot")

    def gaps(bias):
        ab = jnp.where(target, bias[:, None], 0.0)[None, :, None, :]  # [1,L,1,K]
        _, _, taps = forward(params, cfg, tokens, positions, slots, mask, cache, TapsSpec(attn=True),
                             interventions=Interventions(attn_bias=ab))
        a = taps["attn"].mean(axis=(1, 2, 3))  # [L,K] mean over batch, heads, queries
        return (a * target).sum(-1) / target.sum() - (a * ref).sum(-1) / ref.sum()

    loss = lambda bias: jnp.sum(gaps(bias) ** 2)
    opt = optax.adam(lr)
    bias = jnp.zeros(cfg.num_layers)
    state = opt.init(bias)
    step = jax.jit(lambda b, s: _adam_step(loss, opt, b, s))
    before = gaps(bias)
    for _ in range(steps):
        bias, state = step(bias, state)
    return np.asarray(bias), np.asarray(before), np.asarray(gaps(bias))


def _adam_step(loss, opt, p, state):
    g = jax.grad(loss)(p)
    upd, state = opt.update(g, state, p)
    return optax.apply_updates(p, upd), state
