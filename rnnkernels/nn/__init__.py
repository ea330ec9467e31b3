"""Drop-in modules, ``convert`` and ``revert``."""
import torch

from .convert import convert, revert
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .slstm import SLSTM, SLSTMCell

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "revert",
           "SLSTM", "SLSTMCell"]

# A whole model saved with torch.save(model) names these classes in its pickle; torch.load's
# default weights_only=True refuses any class not allow-listed. Ours hold nothing but what their
# torch.nn bases hold (Parameters, plain attributes) plus the backend name, so they are listed
# here, on import, and a model of ours loads wherever the same model with torch.nn's classes
# would (the containers around them, torch.nn.Sequential etc., are torch's to list or not).
torch.serialization.add_safe_globals([LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell, SLSTM,
                                      SLSTMCell])
