"""KFP component: the training split's image features, the drift monitor's reference."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def reference_op(split: Input[Dataset], reference: Output[Dataset]) -> int:
    """Compute per-image features of the training split (components/host_features.py)."""
    import os

    from components.reference.executor import build_reference

    os.makedirs(reference.path, exist_ok=True)
    result = build_reference(split.path, os.path.join(reference.path, "reference.parquet"))
    return int(result["images"])
