"""Subtype classifiers: training (patient-grouped CV grid search), evaluation, model cards, safe bundles, inference.

Modules: :mod:`~node.learn.dataset` (feature/label tables and tasks), :mod:`~node.learn.pipeline_grid` (the
search space), :mod:`~node.learn.cv` (grouped CV search and nested CV), :mod:`~node.learn.train`,
:mod:`~node.learn.stats` (bootstrap, GEE, DeLong, Brier, net benefit, GDI), :mod:`~node.learn.evaluate`,
:mod:`~node.learn.card` (model card), :mod:`~node.learn.trees` (tree ensembles as JSON),
:mod:`~node.learn.bundle` (pickle-free bundles), :mod:`~node.learn.predict`, :mod:`~node.learn.ood` and
:mod:`~node.learn.command` (``ainode train|evaluate|predict``), plus :mod:`~node.learn.synthetic`
(feature/label tables with planted signal for tests, benchmarks and demo models). Research use only, not for diagnosis.
"""
