"""Snapshots rendered for people and programs: JSON, dot, tree, Cytoscape elements."""
