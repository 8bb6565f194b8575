"""The frozen-encoder fast path (``ssl.finetune=frozen``): encode every image once, then every round
trains, scores and evaluates the head on cached features in seconds.

:mod:`~hssal_ray.frozen.store` encodes (Ray Data actor pool) and stores the views;
:mod:`~hssal_ray.frozen.head` is the pure-torch FixMatch head training;
:mod:`~hssal_ray.frozen.split_cache` and :mod:`~hssal_ray.frozen.scores` hold what the frozen
learner (:class:`hssal_ray.learners.frozen.FrozenLearner`, whose methods the loop's stages call)
derives once per run and writes each round.
"""
