"""Demo tooling: the offline datasets the quickstart trains and evaluates on.

Nothing in the library depends on this package. Its modules register their dataset
builders in ``mmcontrast.registry.DATASETS`` (``mmcontrast data NAME``), which imports
them when a dataset is first looked up.
"""
