"""ComfyUI's comfy_extras.nodes_hooks: our hooks node classes, also under the class names ComfyUI's
module gives some of them besides their node ids, and its display-name mapping."""
import sys

from comfy_extras import fill
from nodes.hooks import NODES
from nodes.hooks import CombineHooks2 as CombineHooks
from nodes.hooks import CombineHooks4 as CombineHooksFour
from nodes.hooks import CombineHooks8 as CombineHooksEight
from nodes.hooks import ConditioningSetDefaultCombine as ConditioningSetDefaultAndCombine
from nodes.hooks import PairConditioningSetDefaultCombine as PairConditioningSetDefaultAndCombine

fill(sys.modules[__name__])
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.display_name for cls in NODES}
node_list = list(NODES)

__all__ = ["NODE_DISPLAY_NAME_MAPPINGS", "CombineHooks", "CombineHooksEight", "CombineHooksFour",
           "ConditioningSetDefaultAndCombine", "PairConditioningSetDefaultAndCombine", "node_list"]
