"""Imaging pipeline: DICOM study -> preprocessed volumes -> 200 radiomic features per lesion."""
