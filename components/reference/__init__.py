"""The drift monitor's reference profile as a pipeline step; the logic lives in monitoring/reference.py."""
