"""The TCIA BCBM-RadioGenomics collection: layout, clinical workbook, mask names, T1CE features, training."""
