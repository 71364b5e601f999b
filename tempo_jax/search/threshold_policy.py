"""A learned threshold policy: tau_s = sigmoid(w . f_s + b), fitted with REINFORCE (docs/search.md).

Features f_s [3] are computed in the graph from the state before step s: the entropy of d_s (nats),
the top-1 probability of d_s, and the mean set size of the steps so far divided by W (0 at step 0).
Generation drives the TEMPO step (:func:`tempo_jax.engine.core.step`) from the host: before each
step the policy's tau is written into ``inputs.thresholds[s]`` (data, so nothing recompiles).
Training samples z_s ~ N(w . f_s + b, sigma^2), tau_s = sigmoid(z_s), and follows the REINFORCE
gradient of the mean reward (baseline: the batch's mean reward) with an optax optimizer.
Shapes: S steps, F = 3 features, N rollouts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.pytree import Struct
from tempo_jax.config import ModelConfig
from tempo_jax.engine import core
from tempo_jax.engine.config import GenerationConfig
from tempo_jax.engine.run import check_request, pad_prompt
from tempo_jax.engine.selection import entropy
from tempo_jax.trace import Trace

FEATURES = ("entropy", "top1_prob", "mean_set_size_over_W")


class ThresholdPolicy(Struct):
    """w [F] float32 feature weights, b [] float32 bias: tau = sigmoid(w . f + b)."""

    w: jax.Array
    b: jax.Array

    @classmethod
    def constant(cls, tau: float) -> "ThresholdPolicy":
        """w = 0 and b = logit(tau): the constant threshold tau."""
        if not 0.0 < tau < 1.0:
            raise ValueError(f"a constant policy needs tau in (0, 1), got {tau}")
        return cls(w=jnp.zeros(len(FEATURES), jnp.float32), b=jnp.float32(math.log(tau / (1 - tau))))


@dataclasses.dataclass(frozen=True)
class PolicyRollout:
    """One generation under the policy: its trace, features [S,F], pre-sigmoid z [S] (the sampled
    or mean value), and n_steps actually run (rows beyond are zero)."""

    trace: Trace
    features: np.ndarray
    z: np.ndarray
    n_steps: int


def features(st: core.TempoState, width: int) -> jax.Array:
    """f_s [F] from the state before step s (entropy of d_s, top-1 of d_s, mean set size / W)."""
    s = st.step
    done = jnp.arange(st.set_n.shape[0]) < s
    mean_n = jnp.where(s > 0, jnp.sum(jnp.where(done, st.set_n, 0)) / jnp.maximum(s, 1), 0.0)
    return jnp.stack([entropy(st.dist), jnp.max(st.dist), mean_n / width]).astype(jnp.float32)


def _decide(policy: ThresholdPolicy, st, width: int, noise, sigma):
    """-> (tau, f [F], z, members the step will select)."""
    f = features(st, width)
    z = jnp.dot(policy.w, f) + policy.b + sigma * noise
    tau = jax.nn.sigmoid(z)
    n = jnp.clip(jnp.sum(st.dist >= tau), 1, width).astype(jnp.int32)
    return tau, f, z, n


_decide_jit = jax.jit(_decide, static_argnames=("width",))
_init_jit = jax.jit(core.init_state, static_argnames=("mcfg", "spec", "capacity"))
_step_jit = jax.jit(core.step, static_argnames=("mcfg", "spec", "capture", "feed_width", "view"),
                    donate_argnames=("st",))


def _check_config(gcfg: GenerationConfig) -> None:
    if gcfg.method != "tempo":
        raise ValueError(f"a threshold policy drives TEMPO sets: method must be 'tempo', got {gcfg.method!r}")
    if gcfg.compat != "none":
        raise ValueError("a threshold policy drives the TEMPO step: compat must be 'none'")


def rollout(params, mcfg: ModelConfig, prompt_ids: Sequence[int], gcfg: GenerationConfig,
            policy: ThresholdPolicy, sigma: float = 0.0, key: jax.Array | None = None,
            model_id: str = "") -> PolicyRollout:
    """Generate with tau_s from ``policy`` (sigma = 0: the policy's mean; else z_s sampled with
    ``key``). Every other setting (width, steps, rules, pruning) comes from ``gcfg``."""
    _check_config(gcfg)
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    if sigma > 0 and key is None:
        raise ValueError("a sampled rollout (sigma > 0) needs a PRNG key")
    capacity = check_request(mcfg, gcfg, prompt_ids)
    spec = gcfg.static()
    inputs = gcfg.inputs(mcfg)
    W, S = spec.width, spec.steps
    noise = jax.random.normal(key, (S,)) if sigma > 0 and key is not None else jnp.zeros(S)
    prompt = pad_prompt(gcfg, prompt_ids)
    st = _init_jit(params, mcfg, spec, inputs, prompt, jnp.int32(len(prompt_ids)), capacity)
    widths = core.feed_widths(spec)
    feats, zs = np.zeros((S, len(FEATURES)), np.float32), np.zeros(S, np.float32)
    taus = inputs.thresholds
    n_steps = 0
    for s in range(S):
        tau, f, z, n = _decide_jit(policy, st, W, noise[s], jnp.float32(sigma))
        taus = taus.at[s].set(tau)
        inp = inputs.replace(thresholds=taus)
        n, n_written = int(n), int(st.n_written)
        width = next(w for w in widths if w >= n)
        st, _ = _step_jit(params, mcfg, spec, inp, st, feed_width=width,
                          view=core.view_for(n_written + width, capacity))
        feats[s], zs[s] = np.asarray(f), float(z)
        n_steps = s + 1
        if bool(st.done):
            break
    trace = Trace.from_state(st, gcfg, list(map(int, prompt_ids)), model_id)
    return PolicyRollout(trace=trace, features=feats, z=zs, n_steps=n_steps)


def generate(params, mcfg: ModelConfig, prompt_ids: Sequence[int], gcfg: GenerationConfig,
             policy: ThresholdPolicy, model_id: str = "") -> Trace:
    """Generate with a fitted policy (its mean threshold at every step) and return the Trace."""
    return rollout(params, mcfg, prompt_ids, gcfg, policy, model_id=model_id).trace


def reinforce_loss(policy: ThresholdPolicy, feats, z, valid, rewards, sigma: float) -> jax.Array:
    """Negative REINFORCE surrogate: -mean_n (R_n - mean R) * sum_s log N(z_ns; w . f_ns + b, sigma^2).

    feats [N,S,F], z [N,S], valid [N,S] bool (steps run), rewards [N]. Its gradient is the
    REINFORCE estimate of -grad E[R]."""
    mu = feats @ policy.w + policy.b
    logp = -0.5 * ((z - mu) / sigma) ** 2  # constants dropped: they do not change the gradient
    adv = rewards - jnp.mean(rewards)
    return -jnp.mean(adv * jnp.sum(jnp.where(valid, logp, 0.0), axis=1))


@dataclasses.dataclass(frozen=True)
class FitResult:
    """policy: the fitted policy; mean_reward [iterations]: the batch's mean reward per update."""

    policy: ThresholdPolicy
    mean_reward: list[float]


def fit(params, mcfg: ModelConfig, prompts: Sequence[Sequence[int]], gcfg: GenerationConfig,
        reward: Callable[[Trace], float], *, init: ThresholdPolicy | None = None, iterations: int = 20,
        rollouts_per_prompt: int = 4, sigma: float = 0.5, learning_rate: float = 0.05,
        seed: int = 0) -> FitResult:
    """Fit the policy by REINFORCE with Adam (optax): each iteration samples
    ``rollouts_per_prompt`` generations per prompt, scores each Trace with ``reward`` (higher is
    better), and takes one step. Deterministic given ``seed``."""
    import optax

    _check_config(gcfg)
    if not prompts:
        raise ValueError("fit needs at least one prompt")
    if iterations < 1 or rollouts_per_prompt < 2:
        raise ValueError(f"fit needs iterations >= 1 and rollouts_per_prompt >= 2 (a baseline), got "
                         f"{iterations} and {rollouts_per_prompt}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    if not callable(reward):
        raise ValueError(f"reward must be callable (Trace -> float), got {type(reward).__name__}")
    for p in prompts:
        check_request(mcfg, gcfg, p)
    policy = init if init is not None else ThresholdPolicy.constant(gcfg.threshold)
    opt = optax.adam(learning_rate)
    state = opt.init(policy)
    grad_fn = jax.jit(jax.grad(reinforce_loss), static_argnames=("sigma",))
    key = jax.random.key(seed)
    history = []
    for _ in range(iterations):
        outs, rewards = [], []
        for p in prompts:
            for _ in range(rollouts_per_prompt):
                key, sub = jax.random.split(key)
                r = rollout(params, mcfg, p, gcfg, policy, sigma, sub)
                outs.append(r)
                rewards.append(float(reward(r.trace)))
        S = gcfg.max_steps
        feats = np.stack([o.features for o in outs])
        z = np.stack([o.z for o in outs])
        valid = np.arange(S)[None, :] < np.asarray([o.n_steps for o in outs])[:, None]
        g = grad_fn(policy, feats, z, valid, jnp.asarray(rewards, jnp.float32), sigma=sigma)
        upd, state = opt.update(g, state, policy)
        policy = optax.apply_updates(policy, upd)
        history.append(float(np.mean(rewards)))
    return FitResult(policy=policy, mean_reward=history)
