"""Search and learned-threshold tools built on TEMPO candidate sets (docs/search.md).

:mod:`tempo_jax.search.mcts`: a tree search whose expansions are TEMPO sets, counted in forward
tokens. :mod:`tempo_jax.search.threshold_policy`: tau_s = sigmoid(w . f_s + b), fitted by REINFORCE.
"""
