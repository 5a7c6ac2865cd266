"""Synthetic, deterministic DICOM studies (MR + DICOM-SEG) for tests and demonstrations. No patient data."""
