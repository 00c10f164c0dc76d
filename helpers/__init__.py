"""Shared foundation of the toolkit: paths, device choice, seeding, logging, configuration files, experiment
folders and records, the one JSON results writer, the one plot style, the one image loader, the dataset registry
(with the ground-truth identity convention) and the feature store.

Every other package builds on these modules; they never import the root scripts.
"""
