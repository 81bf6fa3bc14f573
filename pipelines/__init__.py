"""The Kubeflow pipeline that composes the components, its local runner, and the `leukoflow` CLI."""
