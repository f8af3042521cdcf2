"""Demo tooling: the offline datasets the quickstart trains and evaluates on.

Training, models and losses do not depend on this package; the built-in evaluation data
(``mmcontrast eval --data emoji``) builds the emoji set through it when no build is there.
Its modules register their dataset builders in ``mmcontrast.registry.DATASETS``
(``mmcontrast data NAME``), which imports them when a dataset is first looked up.
"""
