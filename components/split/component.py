"""KFP component: stratified, seeded, group-aware train/val/test split with routed shards."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components import settings


@dsl.component(base_image=settings.COMPONENT_IMAGE, install_kfp_package=False)
def split_op(
    kept: Input[Dataset],
    preprocessed: Input[Dataset],
    split: Output[Dataset],
    counts: Output[Markdown],
    metrics: Output[Metrics],
    seed: int = -1,
) -> int:
    """Split 70/15/15 per class; `split` holds split.csv, counts.csv/.md, split.json, {train,val,test}/shard-*.tfrecord and preprocess.json (seed -1: settings default)."""
    import os

    from components import settings as s
    from components.split.executor import run_split

    result = run_split(
        os.path.join(kept.path, "kept.csv"), preprocessed.path, split.path, seed=seed if seed >= 0 else s.SEED
    )
    with open(counts.path, "w") as handle:
        handle.write("# Split counts\n\n" + result["table"] + "\n" + result["leakage_check"] + "\n")
    for name, value in result["counts"].items():
        metrics.log_metric(f"{name}_images", value)
    return int(result["images"])
