"""XLNet: two-stream attention for permutation language modeling."""

from pretrain.models.xlnet.configs import SIZES, XLNetConfig, xlnet_config
from pretrain.models.xlnet.model import XLNetBlock, XLNetLM

__all__ = ["SIZES", "XLNetBlock", "XLNetConfig", "XLNetLM", "xlnet_config"]
