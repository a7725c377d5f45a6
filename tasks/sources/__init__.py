"""Example sources: embedded datasets, generated data and loaders for public formats."""
