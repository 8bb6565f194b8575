"""The frozen-encoder fast path (``ssl.finetune=frozen``): encode every image once, then every round
trains, scores and evaluates the head on cached features in seconds.

:mod:`~hssal_ray.frozen.store` encodes (Ray Data actor pool) and stores the views;
:mod:`~hssal_ray.frozen.head` is the pure-torch FixMatch head training;
:mod:`~hssal_ray.frozen.rounds` holds the round's stages that the loop runner calls.
"""
