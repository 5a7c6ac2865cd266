"""Importers of public training collections into the node's feature and label tables."""
