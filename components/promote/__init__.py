"""Promotion: the gate's decision, infra validation, the TF Serving model store and the MLflow registry."""
