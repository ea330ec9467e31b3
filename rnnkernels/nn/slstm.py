"""``SLSTM`` and ``SLSTMCell``: the sLSTM of xLSTM (Beck et al. 2024) in torch.nn.LSTM's form.

The math and the scan are ``rnnkernels/slstm.py``'s; this file is the modules: torch.nn's
constructors (``SLSTM`` is a ``torch.nn.RNNBase``, ``SLSTMCell`` a ``torch.nn.RNNCellBase``, so
the parameters, their names, torch.nn's constructor checks and ``reset_parameters`` are torch's
own), torch.nn.LSTM's handling of every input form with four states instead of two, and the
head-wise layout of ``weight_hh`` (``variants.parse`` / ``variants.install``, the layout of the
other modules' ``num_heads``). They are not subclasses of torch.nn.LSTM: an sLSTM is not an LSTM,
and ``rnnkernels.convert`` / ``revert`` have no twin to swap it with.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .. import backends
from .. import variants as V
from ..cells import SLSTM as SPEC
from ..slstm import slstm, slstm_cell
from .modules import HiddenStateError, _describe, check_cell_sizes

State = tuple[Tensor, Tensor, Tensor, Tensor]

_EQUATIONS = """\
For each element of the input sequence each layer computes, from the pre-activations
ĩ, f̃, z̃, õ = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh (gate order i, f, z, o)::

    m_t = ĩ if n_{t-1} = 0 else max(ĩ, m_{t-1} + log σ(f̃))     (the stabilizer)
    i_t = min(exp(ĩ - m_t), 1)        f_t = min(exp(m_{t-1} + log σ(f̃) - m_t), 1)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ tanh(z̃)
    n_t = f_t ⊙ n_{t-1} + i_t                                      (the normalizer)
    h_t = σ(õ) ⊙ c_t / n_t

exactly as xlstm's vanilla sLSTM, gradients too, except that the first-step rule
(n_{t-1} = 0) is decided per element, as its CUDA kernel does, and that the gradient stays
finite where exp overflows inside the clips (docs/VARIANTS.md, "sLSTM").
With ``num_heads = k`` the recurrence is head-wise: W_hh is block diagonal in k [d, d] blocks
per gate, d = H / k, stored as ``weight_hh`` [4H, d] (docs/VARIANTS.md).

Backends with an sLSTM: "triton" (GPU; the fused Triton scan), "cpu" (the fused C++ scan), both
with a hand-written reverse scan and fp32 state for half inputs, and "reference" (plain
PyTorch, autograd, any device and dtype, float32 state for half inputs). ``backend="auto"``
runs "triton" on a CUDA device, "cpu" where it can (the extension built), else the reference,
and says so once in a ``RuntimeWarning``; naming a backend without an sLSTM ("cuda" or
"torch") raises ``RuntimeError``. Double backward, forward-mode AD and torch.func run the
reference loop on the fused backends too. ``RNNKERNELS_BACKEND`` replaces "auto"
(docs/BACKENDS.md).

Initialisation: torch.nn.LSTM's, U(-1/√H, 1/√H) for every parameter, so that with the same seed
an ``SLSTM(I, H)`` starts with a torch.nn.LSTM(I, H)'s parameters (head-wise: the block diagonal
of that W_hh). xlstm starts W_hh at zero and spreads the forget gate's biases over each head
(+5 down to -7); set them after construction to start as it does.
"""


class _SLSTMBase:
    """What the layer and the cell share: ``num_heads``, ``backend``, repr."""

    def _setup(self, num_heads: int, backend: str, suffixes: list[str]) -> None:
        spec = V.parse(SPEC, self.hidden_size, 0, {"num_heads": num_heads})
        if spec is not None:
            V.install(self, SPEC, spec, suffixes)
        self.num_heads = num_heads
        self.backend = backends.check_name(backend)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.num_heads != 1:
            s += f", num_heads={self.num_heads}"
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"


class SLSTM(_SLSTMBase, torch.nn.RNNBase):
    __doc__ = """Applies a multi-layer sLSTM (xLSTM; Beck et al., 2024) to an input sequence.

""" + _EQUATIONS + """
Args:
    input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device,
    dtype: as torch.nn.LSTM's (no ``proj_size``).
    num_heads: the heads of the head-wise recurrence (1: dense W_hh). Default: 1
    backend: "auto" (default), "triton", "cpu", "reference", or "cuda" / "torch", which raise
        (no sLSTM kernel there yet).

Inputs: input, (h_0, c_0, n_0, m_0)
    * **input**: [T, B, I] ([B, T, I] with batch_first), [T, I] unbatched, or a PackedSequence.
    * **h_0, c_0, n_0, m_0**: [D*num_layers, B, H] ([D*num_layers, H] unbatched): hidden state,
      cell state, normalizer and stabilizer; all zeros if not given (then the first step takes
      m_1 = ĩ).

Outputs: output, (h_n, c_n, n_n, m_n)
    * **output**: [T, B, D*H] (a PackedSequence for packed input): h_t of the last layer.
    * **h_n, c_n, n_n, m_n**: [D*num_layers, B, H], the final states of every layer.

Attributes:
    weight_ih_l[k]: [4H, I] (layer 0) or [4H, D*H], rows i, f, z, o.
    weight_hh_l[k]: [4H, H / num_heads]; row g·H + j·d + u: unit j·d+u of gate g, from the d
        units of its head j.
    bias_ih_l[k], bias_hh_l[k]: [4H]. Names of the reverse direction end in ``_reverse``.

Examples::

    >>> slstm = rnnkernels.SLSTM(10, 20, num_layers=2, num_heads=4, backend="reference")
    >>> out, (h, c, n, m) = slstm(torch.randn(5, 3, 10))
    >>> out.shape, h.shape
    (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
"""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 *, num_heads: int = 1, backend: str = "auto",
                 device: torch.device | str | int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype)   # "LSTM": 4 gates, torch's checks
        self.mode = "SLSTM"
        dirs = ("", "_reverse") if bidirectional else ("",)
        self._setup(num_heads, backend, [f"_l{k}{d}" for k in range(num_layers) for d in dirs])
        self._init_flat_weights()

    def flatten_parameters(self) -> None:
        """Nothing to flatten: cuDNN has no sLSTM, so its weight buffer would serve nothing."""

    def _hidden(self, input: Tensor, hx, batch: int, packed: bool, is_batched: bool) -> State:
        """The four initial states in [D*L, B, H] (zeros when ``hx`` is None), torch.nn.LSTM's
        checks of their container and dimensions made (its sizes: ``forward``)."""
        if hx is None:
            dirs = 2 if self.bidirectional else 1
            zeros = torch.zeros(self.num_layers * dirs, batch, self.hidden_size,
                                dtype=input.dtype, device=input.device)
            return (zeros,) * 4
        if not (isinstance(hx, (tuple, list)) and len(hx) == 4
                and all(isinstance(h, Tensor) for h in hx)):
            raise HiddenStateError(f"{type(self).__name__}: hx must be a tuple (h_0, c_0, n_0, "
                                   f"m_0) of four tensors, got {_describe(hx)}")
        if packed:
            return tuple(hx)
        want = 3 if is_batched else 2
        if any(h.dim() != want for h in hx):
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            dims = ", ".join(f"{h.dim()}-D" for h in hx)
            raise RuntimeError(f"For {kind} input, h_0, c_0, n_0 and m_0 should also be {want}-D "
                               f"but got ({dims}) tensors")
        return tuple(hx) if is_batched else tuple(h.unsqueeze(1) for h in hx)

    def forward(self, input: Tensor | PackedSequence, hx: State | None = None
                ) -> tuple[Tensor | PackedSequence, State]:
        packed = isinstance(input, PackedSequence)
        batch_sizes = sorted_indices = unsorted_indices = None
        is_batched = True
        if packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got "
                                 f"{input.dim()}D instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            batch = input.size(0 if self.batch_first else 1)
        hx = self._hidden(input, hx, batch, packed, is_batched)
        self.check_input(input, batch_sizes)            # torch's own checks and messages
        expected = self.get_expected_hidden_size(input, batch_sizes)
        for i, h in enumerate(hx):
            self.check_hidden_size(h, expected, f"Expected hidden[{i}] size {{}}, got {{}}")
        if sorted_indices is not None:
            hx = tuple(h.index_select(1, sorted_indices) for h in hx)
        weights = [getattr(self, name) for name in self._flat_weights_names]
        output, *finals = slstm(input, hx, weights, self.bias, self.num_layers,
                                float(self.dropout), self.training, self.bidirectional,
                                self.batch_first, num_heads=self.num_heads,
                                batch_sizes=batch_sizes, backend=self.backend,
                                name=type(self).__name__)
        if unsorted_indices is not None:
            finals = [f.index_select(1, unsorted_indices) for f in finals]
        if packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        elif not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            finals = [f.squeeze(1) for f in finals]
        return output, tuple(finals)


class SLSTMCell(_SLSTMBase, torch.nn.RNNCellBase):
    __doc__ = """An sLSTM cell (xLSTM; Beck et al., 2024): one step of ``SLSTM``.

""" + _EQUATIONS + """
Args:
    input_size, hidden_size, bias, device, dtype: as torch.nn.LSTMCell's.
    num_heads: the heads of the head-wise recurrence (1: dense W_hh). Default: 1
    backend: "auto" (default), "triton", "cpu", "reference", or "cuda" / "torch", which raise
        (no sLSTM kernel there yet).

Inputs: input, (h_0, c_0, n_0, m_0)
    * **input**: [B, I] or [I] (unbatched).
    * **h_0, c_0, n_0, m_0**: [B, H] or [H]; all zeros if not given.

Outputs: (h_1, c_1, n_1, m_1)
    * each [B, H] ([H] unbatched): the next hidden state, cell state, normalizer, stabilizer.

Attributes:
    weight_ih: [4H, I], rows i, f, z, o.
    weight_hh: [4H, H / num_heads] (layout: ``SLSTM``'s).
    bias_ih, bias_hh: [4H].

Examples::

    >>> cell = rnnkernels.SLSTMCell(10, 20, backend="reference")
    >>> state = None
    >>> for x in torch.randn(6, 3, 10):
    ...     state = cell(x, state)
    >>> state[0].shape
    torch.Size([3, 20])
"""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 num_heads: int = 1, backend: str = "auto",
                 device: torch.device | str | int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)
        self._setup(num_heads, backend, [""])

    def _states(self, input: Tensor, hx, batched: bool) -> list[Tensor]:
        """The four states [B, H] for ``input`` (made [B, I]), with torch.nn.LSTMCell's checks."""
        name = type(self).__name__
        if hx is None:
            return [input.new_zeros((input.size(0), self.hidden_size))] * 4
        if not (isinstance(hx, (tuple, list)) and len(hx) == 4
                and all(isinstance(h, Tensor) for h in hx)):
            raise HiddenStateError(f"{name}: hx must be a tuple (h_0, c_0, n_0, m_0) of four "
                                   f"tensors, got {_describe(hx)}")
        want = 2 if batched else 1
        for i, h in enumerate(hx):
            if h.dim() not in (1, 2):
                raise ValueError(f"{name}: Expected hx[{i}] to be 1D or 2D, got {h.dim()}D "
                                 "instead")
            if h.dim() != want:
                raise RuntimeError(f"{name}: for {want}-D input hx[{i}] must be {want}-D, got "
                                   f"{h.dim()}-D")
        return [h if batched else h.unsqueeze(0) for h in hx]

    def forward(self, input: Tensor, hx: State | None = None) -> State:
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        states = self._states(input, hx, batched)
        check_cell_sizes(self, input, states)
        new = slstm_cell(input, states, self.weight_ih, self.weight_hh, self.bias_ih,
                         self.bias_hh, num_heads=self.num_heads, backend=self.backend, name=name)
        h, c, n, m = new if batched else (s.squeeze(0) for s in new)
        return h, c, n, m
