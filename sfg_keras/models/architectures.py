"""The paper's SFG networks (supplementary section 2) and a small CNN for demos, for any number of tasks.

Every builder takes the task list, a width multiplier and a `grouping` (SFG or a baseline, see
`sfg_keras.models.grouping_modes`), and returns an `SFGNetwork`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from sfg_keras.layers.cross_stitch import CrossStitch
from sfg_keras.layers.per_stream import PerStream
from sfg_keras.layers.residual_block import ResidualBlock
from sfg_keras.layers.sfg_conv import SFGConv
from sfg_keras.layers.temperature_schedule import TemperatureSchedule
from sfg_keras.models.grouping_modes import check_grouping, sfg_conv_options, single_task_assignment
from sfg_keras.models.sfg_network import SFGNetwork
from sfg_keras.models.task_head import TaskHead, as_task_heads, make_head

VGG11_WIDTHS = (64, 128, 256, 256, 512, 512, 512, 512)
VGG11_POOL_AFTER = (0, 1, 3, 5)


class _TrunkBuilder:
    """Appends SFG layers (with the grouping's options) and stream transforms to a trunk list."""

    def __init__(
        self,
        num_tasks: int,
        grouping: str,
        rank: int,
        p0,
        init_mode: str,
        hard: bool,
        sampling: str,
        merge: str,
        activation: str,
        inference_statistics: str,
        lambda1: float,
        lambda2: float,
        tau0: float,
        seed: int | None,
        grouping_lr_multiplier: float = 1.0,
    ):
        check_grouping(grouping, num_tasks)
        self.num_tasks, self.grouping, self.rank = num_tasks, grouping, rank
        self.common = {
            "num_tasks": num_tasks,
            "rank": rank,
            "init_mode": init_mode,
            "hard": hard,
            "sampling": sampling,
            "merge": merge,
            "activation": activation,
            "inference_statistics": inference_statistics,
            "kernel_l2": lambda1,
            "entropy_weight": lambda2,
            "temperature": tau0,
            "grouping_lr_multiplier": grouping_lr_multiplier,
        }
        self.p0 = p0
        self.seed = seed
        self.trunk: list[keras.layers.Layer] = []
        self.count = 0

    def sfg(self, filters: int, kernel_size: int = 3, p0=None, **kwargs) -> None:
        self.count += 1
        seed = None if self.seed is None else self.seed + self.count
        options = sfg_conv_options(self.grouping, filters, self.num_tasks, self.p0 if p0 is None else p0)
        layer_kwargs = {**self.common, **options, **kwargs}
        if "fixed_assignment" in options:
            layer_kwargs.pop("init_mode")
            layer_kwargs.pop("grouping_lr_multiplier")
        self.trunk.append(SFGConv(filters, kernel_size, seed=seed, name=f"sfg_conv_{self.count}", **layer_kwargs))
        if self.grouping == "cross_stitch":
            blocks = single_task_assignment(filters, self.num_tasks)
            groups = [[int(i) for i, g in enumerate(blocks) if g == t] for t in range(self.num_tasks)]
            self.trunk.append(CrossStitch(self.num_tasks, channel_groups=groups, name=f"cross_stitch_{self.count}"))

    def per_stream(self, layer: keras.layers.Layer, name: str) -> None:
        self.trunk.append(PerStream(layer, name=name))


def _network(builder, tasks, dense, temperature_schedule, merge, name) -> SFGNetwork:
    head_layers = [make_head(task, dense=dense, rank=builder.rank) for task in tasks]
    return SFGNetwork(
        trunk=builder.trunk,
        heads=tasks,
        head_layers=head_layers,
        merge=merge,
        temperature_schedule=temperature_schedule,
        name=name,
    )


def _builder_args(locals_: dict, num_tasks: int) -> dict:
    keys = (
        "grouping",
        "rank",
        "p0",
        "init_mode",
        "hard",
        "sampling",
        "merge",
        "activation",
        "inference_statistics",
        "lambda1",
        "lambda2",
        "seed",
        "grouping_lr_multiplier",
    )
    args = {k: locals_[k] for k in keys}
    schedule = locals_["temperature_schedule"] or TemperatureSchedule()
    return {"num_tasks": num_tasks, "tau0": schedule.tau0, **args}


def _width(base: int, multiplier: float) -> int:
    return max(1, int(round(base * multiplier)))


def sfg_vgg11(
    tasks: Sequence[TaskHead],
    width_multiplier: float = 1.0,
    grouping: str = "learned",
    p0: Sequence[float] | None = None,
    init_mode: str = "constant",
    hard: bool = True,
    sampling: str = "per_example",
    merge: str = "sum",
    activation: str = "prelu",
    inference_statistics: str = "batch",
    lambda1: float = 1e-6,
    lambda2: float = 1e-5,
    temperature_schedule: TemperatureSchedule | None = None,
    seed: int | None = None,
    grouping_lr_multiplier: float = 1.0,
    rank: int = 2,
    name: str = "sfg_vgg11",
) -> SFGNetwork:
    """SFG-VGG11 for images: 8 SFG convs (64, 128, 256, 256, 512, 512, 512, 512 kernels of 3x3, times
    `width_multiplier`), 2x2 max pooling per stream after layers 1, 2, 4 and 6, global average pooling per stream,
    one dense head per task on `merge(F_t, F_s)`.

    Args:
        tasks: list of `TaskHead` (regression or classification).
        width_multiplier: float. Multiplies every width. Defaults to 1.0.
        grouping: str. `learned` (SFG) or a baseline: `constant_p`, `constant_mask`, `hard_sharing`,
            `single_task`, `cross_stitch`. Defaults to `"learned"`.
        p0: initial probabilities `(task_1, ..., task_T, shared)` for `learned`. Defaults to shared 0.6.
        init_mode, hard, sampling, merge, activation, inference_statistics: see `SFGConv`.
        lambda1: float. L2 weight on the kernels. Defaults to 1e-6.
        lambda2: float. Entropy weight. Defaults to 1e-5.
        temperature_schedule: `TemperatureSchedule`. Defaults to `TemperatureSchedule()` (1.0, 1e-5, 0.1).
        seed: int or None. Base seed of the SFG layers' sampling.
        grouping_lr_multiplier: float. Step-size multiplier of the grouping logits (see `SFGConv`). Defaults to 1.
        rank: int. 2 (images) or 3 (volumes).
        name: str. Model name.

    Example:

    ```python
    model = sfg_vgg11([TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)],
                      width_multiplier=0.25, grouping="learned")
    ```
    """
    tasks = as_task_heads(tasks)
    builder = _TrunkBuilder(**_builder_args(locals(), len(tasks)))
    pool = keras.layers.MaxPooling2D if rank == 2 else keras.layers.MaxPooling3D
    gap = keras.layers.GlobalAveragePooling2D if rank == 2 else keras.layers.GlobalAveragePooling3D
    for i, width in enumerate(VGG11_WIDTHS):
        builder.sfg(_width(width, width_multiplier), 3)
        if i in VGG11_POOL_AFTER:
            builder.per_stream(pool(2), name=f"pool_{i + 1}")
    builder.per_stream(gap(), name="global_pool")
    return _network(builder, tasks, False, temperature_schedule, merge, name)


def sfg_highresnet(
    tasks: Sequence[TaskHead],
    width_multiplier: float = 1.0,
    grouping: str = "learned",
    p0: Sequence[float] | None = None,
    init_mode: str = "constant",
    hard: bool = True,
    sampling: str = "per_example",
    merge: str = "sum",
    activation: str = "prelu",
    inference_statistics: str = "batch",
    lambda1: float = 1e-6,
    lambda2: float = 1e-5,
    temperature_schedule: TemperatureSchedule | None = None,
    seed: int | None = None,
    grouping_lr_multiplier: float = 1.0,
    rank: int = 2,
    name: str = "sfg_highresnet",
) -> SFGNetwork:
    """SFG-HighResNet: SFG conv 16, two residual blocks (dilation 1) per stream, SFG conv 32, two blocks
    (dilation 2), SFG conv 64, two blocks (dilation 4), SFG conv 64, SFG conv 64, 1x1 conv heads (widths times
    `width_multiplier`). Residual blocks are pre-activation (BN, PReLU, conv) with separate weights per stream.

    Dense heads: regression tasks predict a map of `units` channels, segmentation `units` class logits per pixel.
    Arguments as in `sfg_vgg11`.

    Example:

    ```python
    model = sfg_highresnet([TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 5)],
                           width_multiplier=0.5)
    ```
    """
    tasks = as_task_heads(tasks)
    builder = _TrunkBuilder(**_builder_args(locals(), len(tasks)))
    for stage, (width, dilation) in enumerate(((16, 1), (32, 2), (64, 4))):
        filters = _width(width, width_multiplier)
        builder.sfg(filters, 3)
        for block in range(2):
            builder.per_stream(
                ResidualBlock(
                    filters,
                    dilation_rate=dilation,
                    rank=rank,
                    activation=activation,
                    inference_statistics=inference_statistics,
                    kernel_l2=lambda1,
                ),
                name=f"res_{stage + 1}_{block + 1}",
            )
    builder.sfg(_width(64, width_multiplier), 3)
    builder.sfg(_width(64, width_multiplier), 3)
    return _network(builder, tasks, True, temperature_schedule, merge, name)


def sfg_small_cnn(
    tasks: Sequence[TaskHead],
    widths: Sequence[int] = (16, 32, 32),
    dense: bool = False,
    width_multiplier: float = 1.0,
    grouping: str = "learned",
    p0: Sequence[float] | None = None,
    init_mode: str = "constant",
    hard: bool = True,
    sampling: str = "per_example",
    merge: str = "sum",
    activation: str = "prelu",
    inference_statistics: str = "batch",
    lambda1: float = 1e-6,
    lambda2: float = 1e-5,
    temperature_schedule: TemperatureSchedule | None = None,
    seed: int | None = None,
    grouping_lr_multiplier: float = 1.0,
    rank: int = 2,
    name: str = "sfg_small_cnn",
) -> SFGNetwork:
    """A small SFG network for demos and tests: 3x3 SFG convs of `widths`, then either 2x2 pooling between them
    and global pooling with dense heads (`dense=False`), or no pooling and 1x1 conv heads (`dense=True`).

    Example:

    ```python
    model = sfg_small_cnn([TaskHead("digit", "classification", 10), TaskHead("slant", "regression", 1)])
    ```
    """
    tasks = as_task_heads(tasks)
    builder = _TrunkBuilder(**_builder_args(locals(), len(tasks)))
    pool = keras.layers.MaxPooling2D if rank == 2 else keras.layers.MaxPooling3D
    gap = keras.layers.GlobalAveragePooling2D if rank == 2 else keras.layers.GlobalAveragePooling3D
    for i, width in enumerate(widths):
        builder.sfg(_width(width, width_multiplier), 3)
        if not dense and i < len(widths) - 1:
            builder.per_stream(pool(2), name=f"pool_{i + 1}")
    if not dense:
        builder.per_stream(gap(), name="global_pool")
    return _network(builder, tasks, dense, temperature_schedule, merge, name)


ARCHITECTURES = {"sfg_vgg11": sfg_vgg11, "sfg_highresnet": sfg_highresnet, "sfg_small_cnn": sfg_small_cnn}
