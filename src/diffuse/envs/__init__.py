"""Environments for robot policies (below training and models: they import neither)."""
