"""The drift monitor's reference profile as a pipeline step; build_reference in executor.py."""
