"""Evaluating a bundle: statistics (bootstrap, GEE, DeLong, calibration, DCA, GDI), plots and the model card."""
