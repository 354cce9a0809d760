"""Per-family adapters: prompt, image-token positions, grid and geometry of each LVLM family.

Importing this package registers every adapter below by ``config.model_type``.

Book: ``book/06_your_model.ipynb``.
"""

from .base import (
    Adapter,
    Prepared,
    get_adapter,
    normalize_expression,
    register_adapter,
    registered_model_types,
)
from .deepseek_vl import DEEPSEEK_VL_TEMPLATE, DeepseekVLAdapter
from .gemma3 import GEMMA3_TEMPLATE, Gemma3Adapter
from .internvl import INTERNVL_TEMPLATE, InternVLAdapter
from .llava import LLAVA_TEMPLATE, LlavaAdapter
from .llava_next import (
    LLAVA_NEXT_MISTRAL_TEMPLATE,
    LLAVA_NEXT_TEMPLATE,
    LLAVA_ONEVISION_TEMPLATE,
    LlavaNextAdapter,
)
from .qwen import QWEN_TEMPLATE, QwenVLAdapter
from .smolvlm import SMOLVLM_TEMPLATE, SmolVLMAdapter

__all__ = [
    "DEEPSEEK_VL_TEMPLATE",
    "GEMMA3_TEMPLATE",
    "INTERNVL_TEMPLATE",
    "LLAVA_NEXT_MISTRAL_TEMPLATE",
    "LLAVA_NEXT_TEMPLATE",
    "LLAVA_ONEVISION_TEMPLATE",
    "LLAVA_TEMPLATE",
    "QWEN_TEMPLATE",
    "SMOLVLM_TEMPLATE",
    "Adapter",
    "DeepseekVLAdapter",
    "Gemma3Adapter",
    "InternVLAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "Prepared",
    "QwenVLAdapter",
    "SmolVLMAdapter",
    "get_adapter",
    "normalize_expression",
    "register_adapter",
    "registered_model_types",
]
