"""BCBM AI node: breast-cancer brain-metastasis molecular subtype from MRI + DICOM-SEG.

Research use only, not for diagnosis.
"""

__version__ = "0.1.0"
