"""Pipeline steps. Each step is a plain typed function (its executor) with a small CLI,
and a thin Kubeflow Pipelines component beside it that calls the same function."""
