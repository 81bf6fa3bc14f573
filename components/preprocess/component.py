"""KFP component: RGB, resize with the serving graph's ops, TFRecord shards."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def preprocess_op(
    kept: Input[Dataset],
    shards: Output[Dataset],
    profile: str = "quick",
    brightness: str = "none",
) -> int:
    """Write dedup's kept images as TFRecord shards at the profile's source size, in settings.NUM_SHARDS shards."""
    import os

    from components import settings as s
    from components.preprocess.executor import run_preprocess

    size = s.profile(profile).source_size
    result = run_preprocess(
        os.path.join(kept.path, "kept.csv"),
        shards.path,
        image_size=size,
        num_shards=s.NUM_SHARDS,
        brightness=brightness,
    )
    shards.metadata.update({"image_size": size, "count": result["count"], "brightness": brightness})
    return int(result["count"])
