"""KFP component: RGB, resize with the serving graph's ops, TFRecord shards."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def preprocess_op(
    kept: Input[Dataset],
    shards: Output[Dataset],
    profile: str = "quick",
    image_size: int = 0,
    num_shards: int = -1,
    brightness: str = "none",
) -> int:
    """Write dedup's kept images as TFRecord shards at the profile's image size (or `image_size` when > 0; -1: settings default shards)."""
    import os

    from components import settings as s
    from components.preprocess.executor import run_preprocess

    size = image_size if image_size > 0 else s.profile(profile).image_size
    result = run_preprocess(os.path.join(kept.path, "kept.csv"), shards.path, image_size=size,
                            num_shards=num_shards if num_shards > 0 else s.NUM_SHARDS, brightness=brightness)
    shards.metadata.update({"image_size": size, "count": result["count"], "brightness": brightness})
    return int(result["count"])
