"""Concrete environments. Importing this package registers them (lazily) under ``agentrl/``."""
