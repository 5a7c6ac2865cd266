"""Training the tree models: feature/label tables, the search grid, patient-grouped CV, fitting, bundle export."""
