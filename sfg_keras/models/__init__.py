"""SFG networks: the routed `SFGNetwork` model, the paper's architectures and the baselines."""

from sfg_keras.groups import GROUPINGS, sfg_conv_options
from sfg_keras.models.architectures import ARCHITECTURES, build_network, sfg_highresnet, sfg_small_cnn, sfg_vgg11
from sfg_keras.models.execution_plan import ExecutionPlan
from sfg_keras.models.grouping_commit import GroupingCommit
from sfg_keras.models.options import NetworkOptions
from sfg_keras.models.sfg_network import SFGNetwork
from sfg_keras.models.task_head import TASK_TYPES, TaskHead, make_head

__all__ = [
    "ARCHITECTURES",
    "ExecutionPlan",
    "GROUPINGS",
    "GroupingCommit",
    "NetworkOptions",
    "SFGNetwork",
    "TASK_TYPES",
    "TaskHead",
    "build_network",
    "make_head",
    "sfg_conv_options",
    "sfg_highresnet",
    "sfg_small_cnn",
    "sfg_vgg11",
]
