"""Serving a trained model: pickle-free bundles, per-lesion prediction, SHAP, out-of-distribution checks.

No training imports (scikit-learn's selectors, the grid, CV): the worker needs only this package to predict.
"""
