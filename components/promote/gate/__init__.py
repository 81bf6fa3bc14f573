"""The gate: the decision rule (policy.py), infra validation, and run_gate (executor.py), as TFX's Evaluator blessing and InfraValidator."""
