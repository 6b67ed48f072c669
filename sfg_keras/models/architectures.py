"""The paper's SFG networks (supplementary section 2) and a small CNN for demos, for any number of tasks.

Every builder takes the task list and one `NetworkOptions` (width multiplier, `grouping` - SFG or a baseline, see
`sfg_keras.groups.sfg_conv_options` - and the SFG layers' arguments) and returns an `SFGNetwork`. `build_network`
builds one by name (`ARCHITECTURES`) or from any builder with the same signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras

from sfg_keras.config.errors import closest_match
from sfg_keras.groups import NETWORK_NAMES, check_grouping, single_task_assignment
from sfg_keras.layers.cross_stitch import CrossStitch
from sfg_keras.layers.per_stream import PerStream
from sfg_keras.layers.residual_block import ResidualBlock
from sfg_keras.layers.sfg_conv import SFGConv
from sfg_keras.models.options import NetworkOptions
from sfg_keras.models.sfg_network import SFGNetwork
from sfg_keras.models.task_head import TaskHead, as_task_heads, make_head

VGG11_WIDTHS = (64, 128, 256, 256, 512, 512, 512, 512)
VGG11_POOL_AFTER = (0, 1, 3, 5)


class _TrunkBuilder:
    """Appends SFG layers (with the grouping's options) and stream transforms to a trunk list."""

    def __init__(self, num_tasks: int, options: NetworkOptions):
        check_grouping(options.grouping, num_tasks)
        self.num_tasks, self.options = num_tasks, options
        self.trunk: list[keras.layers.Layer] = []
        self.count = 0

    def sfg(self, filters: int, kernel_size: int = 3) -> None:
        self.count += 1
        seed = None if self.options.seed is None else self.options.seed + self.count
        kwargs = self.options.sfg_conv_kwargs(filters, self.num_tasks)
        self.trunk.append(SFGConv(filters, kernel_size, seed=seed, name=f"sfg_conv_{self.count}", **kwargs))
        if self.options.grouping == "cross_stitch":
            blocks = single_task_assignment(filters, self.num_tasks)
            groups = [[int(i) for i, g in enumerate(blocks) if g == t] for t in range(self.num_tasks)]
            self.trunk.append(CrossStitch(self.num_tasks, channel_groups=groups, name=f"cross_stitch_{self.count}"))

    def per_stream(self, layer: keras.layers.Layer, name: str) -> None:
        self.trunk.append(PerStream(layer, name=name))

    def network(self, tasks: list[TaskHead], dense: bool, name: str) -> SFGNetwork:
        head_layers = [make_head(task, dense=dense, rank=self.options.rank) for task in tasks]
        return SFGNetwork(
            trunk=self.trunk,
            heads=tasks,
            head_layers=head_layers,
            merge=self.options.merge,
            temperature_schedule=self.options.temperature_schedule,
            name=name,
        )


def _width(base: int, multiplier: float) -> int:
    return max(1, int(round(base * multiplier)))


def _pooling(rank: int) -> tuple[type[keras.layers.Layer], type[keras.layers.Layer]]:
    if rank == 2:
        return keras.layers.MaxPooling2D, keras.layers.GlobalAveragePooling2D
    return keras.layers.MaxPooling3D, keras.layers.GlobalAveragePooling3D


def sfg_vgg11(
    tasks: Sequence[TaskHead], options: NetworkOptions | None = None, *, name: str = "sfg_vgg11"
) -> SFGNetwork:
    """SFG-VGG11 for images: 8 SFG convs (64, 128, 256, 256, 512, 512, 512, 512 kernels of 3x3, times
    `options.width_multiplier`), 2x2 max pooling per stream after layers 1, 2, 4 and 6, global average pooling per
    stream, one dense head per task on `merge(F_t, F_s)`.

    Args:
        tasks: list of `TaskHead` (regression or classification).
        options: `NetworkOptions` (grouping, widths, SFG layer arguments, rank). Defaults to `NetworkOptions()`.
        name: str. Model name.

    Returns:
        The `SFGNetwork`, not yet built.

    Example:

    ```python
    model = sfg_vgg11([TaskHead("age", "regression", 1), TaskHead("gender", "classification", 2)],
                      NetworkOptions(width_multiplier=0.25, grouping="learned"))
    ```
    """
    tasks, options = as_task_heads(tasks), options or NetworkOptions()
    builder = _TrunkBuilder(len(tasks), options)
    pool, gap = _pooling(options.rank)
    for i, width in enumerate(VGG11_WIDTHS):
        builder.sfg(_width(width, options.width_multiplier), 3)
        if i in VGG11_POOL_AFTER:
            builder.per_stream(pool(2), name=f"pool_{i + 1}")
    builder.per_stream(gap(), name="global_pool")
    return builder.network(tasks, dense=False, name=name)


def sfg_highresnet(
    tasks: Sequence[TaskHead], options: NetworkOptions | None = None, *, name: str = "sfg_highresnet"
) -> SFGNetwork:
    """SFG-HighResNet: SFG conv 16, two residual blocks (dilation 1) per stream, SFG conv 32, two blocks
    (dilation 2), SFG conv 64, two blocks (dilation 4), SFG conv 64, SFG conv 64, 1x1 conv heads (widths times
    `options.width_multiplier`). Residual blocks are pre-activation (BN, PReLU, conv) with separate weights per
    stream.

    Dense heads: regression tasks predict a map of `units` channels, segmentation `units` class logits per pixel.

    Args:
        tasks: list of `TaskHead`.
        options: `NetworkOptions`. Defaults to `NetworkOptions()`.
        name: str. Model name.

    Returns:
        The `SFGNetwork`, not yet built.

    Example:

    ```python
    model = sfg_highresnet([TaskHead("ct", "regression", 1), TaskHead("organs", "segmentation", 5)],
                           NetworkOptions(width_multiplier=0.5))
    ```
    """
    tasks, options = as_task_heads(tasks), options or NetworkOptions()
    builder = _TrunkBuilder(len(tasks), options)
    for stage, (width, dilation) in enumerate(((16, 1), (32, 2), (64, 4))):
        filters = _width(width, options.width_multiplier)
        builder.sfg(filters, 3)
        for block in range(2):
            builder.per_stream(
                ResidualBlock(filters, dilation_rate=dilation, **options.residual_block_kwargs()),
                name=f"res_{stage + 1}_{block + 1}",
            )
    builder.sfg(_width(64, options.width_multiplier), 3)
    builder.sfg(_width(64, options.width_multiplier), 3)
    return builder.network(tasks, dense=True, name=name)


def sfg_small_cnn(
    tasks: Sequence[TaskHead],
    options: NetworkOptions | None = None,
    *,
    widths: Sequence[int] = (16, 32, 32),
    dense: bool = False,
    name: str = "sfg_small_cnn",
) -> SFGNetwork:
    """A small SFG network for demos and tests: 3x3 SFG convs of `widths` (times `options.width_multiplier`), then
    either 2x2 pooling between them and global pooling with dense heads (`dense=False`), or no pooling and 1x1 conv
    heads (`dense=True`).

    Args:
        tasks: list of `TaskHead`.
        options: `NetworkOptions`. Defaults to `NetworkOptions()`.
        widths: kernels of each SFG conv. Defaults to `(16, 32, 32)`.
        dense: bool. Fully convolutional (per-pixel heads) instead of pooled. Defaults to False.
        name: str. Model name.

    Returns:
        The `SFGNetwork`, not yet built.

    Example:

    ```python
    model = sfg_small_cnn([TaskHead("digit", "classification", 10), TaskHead("slant", "regression", 1)],
                          NetworkOptions(seed=0), widths=(8, 8))
    ```
    """
    tasks, options = as_task_heads(tasks), options or NetworkOptions()
    builder = _TrunkBuilder(len(tasks), options)
    pool, gap = _pooling(options.rank)
    for i, width in enumerate(widths):
        builder.sfg(_width(width, options.width_multiplier), 3)
        if not dense and i < len(widths) - 1:
            builder.per_stream(pool(2), name=f"pool_{i + 1}")
    if not dense:
        builder.per_stream(gap(), name="global_pool")
    return builder.network(tasks, dense=dense, name=name)


# Keyed by the names the config accepts (`sfg_keras.groups.NETWORK_NAMES`), in their order.
ARCHITECTURES: dict[str, Callable[..., SFGNetwork]] = dict(
    zip(NETWORK_NAMES, (sfg_vgg11, sfg_highresnet, sfg_small_cnn), strict=True)
)


def build_network(
    architecture: str | Callable[..., SFGNetwork],
    tasks: Sequence[TaskHead],
    options: NetworkOptions | None,
    input_shape: Sequence[int | None],
) -> SFGNetwork:
    """Builds an SFG network for inputs of `input_shape`: the architecture `builder(tasks, options)`, then
    `model.build((None, *input_shape))`.

    Args:
        architecture: a name in `ARCHITECTURES` (`"sfg_vgg11"`, `"sfg_highresnet"`, `"sfg_small_cnn"`) or a
            builder callable `builder(tasks, options) -> SFGNetwork`.
        tasks: list of `TaskHead`.
        options: `NetworkOptions`, or None for the defaults. Its `rank` must match `input_shape`.
        input_shape: one input without the batch axis, channels last, e.g. `(64, 64, 3)`.

    Returns:
        The built `SFGNetwork`.

    Raises:
        ValueError: an unknown name, a builder that returns something else than an `SFGNetwork`, or an
            `input_shape` whose spatial rank is not `options.rank`.

    Example:

    ```python
    settings = load_settings("configs/demo_age_gender.ini")
    model = build_network(settings.network.name, tasks, NetworkOptions.from_settings(settings), (64, 64, 3))
    ```
    """
    options = options or NetworkOptions()
    if isinstance(architecture, str):
        if architecture not in ARCHITECTURES:
            suggestion = closest_match(architecture, ARCHITECTURES)
            hint = f" Did you mean {suggestion!r}?" if suggestion else ""
            raise ValueError(
                f"Unknown architecture.{hint} Choose one of {sorted(ARCHITECTURES)} or pass a builder callable. "
                f"Received: architecture={architecture!r}"
            )
        builder = ARCHITECTURES[architecture]
    elif callable(architecture):
        builder = architecture
    else:
        raise ValueError(
            f"`architecture` must be a name or a builder callable. Received: architecture={architecture!r}"
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != options.rank + 1:
        raise ValueError(
            f"`input_shape` must have {options.rank} spatial axes and a channel axis for options.rank={options.rank} "
            f"(use `options.replace(rank=...)` for other inputs). Received: input_shape={input_shape}"
        )
    model = builder(as_task_heads(tasks), options)
    if not isinstance(model, SFGNetwork):
        raise ValueError(f"The builder {builder!r} must return an `SFGNetwork`. Received: {type(model).__name__}")
    model.build((None, *input_shape))
    return model
