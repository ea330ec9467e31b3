"""The docstring parts of the recurrent variants' options (``_docs.py`` builds the classes'
docstrings; rnnkernels/variants.py, rnnkernels/dropout.py and docs/VARIANTS.md hold the
semantics)."""
from __future__ import annotations

from ..cells import CELLS

_VARIANT_ARGS = {
    "peephole": """\
    peephole: keyword only; if True, peephole connections (Gers & Schmidhuber 2000): i and f
        also see c_{{t-1}} and o sees c_t, through the diagonal weights ``weight_ch{sfx}``:
        i = σ(... + w_ci ⊙ c_{{t-1}}), f = σ(... + w_cf ⊙ c_{{t-1}}), o = σ(... + w_co ⊙ c_t).
        Default: False""",
    "num_heads": """\
    num_heads: keyword only; head-wise (block-diagonal) recurrence: the hidden state is
        num_heads heads of d = hidden_size / num_heads units, and each gate unit sees only its
        own head's previous state; ``weight_hh{sfx}`` is then ({g}, d).
        Default: 1 (dense, torch.nn's)""",
    "zoneout": """\
    zoneout: keyword only; zoneout (Krueger et al. 2017): in training, each unit of {states}
        keeps its previous value with this probability at each step (masks from torch's
        generator, so ``torch.manual_seed`` reproduces them); in eval, the expectation
        p·previous + (1-p)·new.{pair} Default: 0""",
    "layer_norm": """\
    layer_norm: keyword only; if True, layer normalization (Ba et al. 2016) as haste's
        LayerNorm{kind}: of x·W_ihᵀ and of h·W_hhᵀ over their {g} gate pre-activations, each
        with its gain ``weight_ln_ih{sfx}`` / ``weight_ln_hh{sfx}``, the biases added after
        the norms{c_norm}. Default: False""",
}
_DROPOUT_ARGS = """    locked_dropout: keyword only; if True, the inter-layer ``dropout`` draws one mask per
        sequence, used at every step (variational dropout, Gal & Ghahramani 2016), instead of
        one per element. Default: False
    input_dropout: keyword only; in training, a locked dropout mask (one per sequence) of this
        probability on the input. Default: 0
    output_dropout: keyword only; in training, a locked dropout mask of this probability on the
        last layer's output. Default: 0"""
_VARIANT_NOTE = """
    Peephole, head-wise recurrence and zoneout run fused on the "cpu" (and "triton") backend;
    layer norm on the "reference" backend (plain PyTorch) for now, which "auto" says once; a
    backend without a variant raises ``RuntimeError``. The locked dropouts act between the
    layers, on every backend. Every option at its default: exactly torch.nn's module.
    docs/VARIANTS.md."""


def variant_docs(kind: str, g: str, sfx: str, layer: bool = False) -> tuple[str, str]:
    """(Args lines, Attributes lines) of the variant options class ``kind`` takes (``g``: its
    gate count as the docs write it, e.g. "4*hidden_size"; ``layer``: a layer, which also takes
    the locked dropouts)."""
    cell = CELLS[kind.lower()]
    lstm = len(cell.states) > 1
    args = [_VARIANT_ARGS[o].format(
        sfx=sfx, g=g, states="h and c" if lstm else "h",
        pair=" A float, or a pair (p_h, p_c) for h and c." if lstm else "", kind=kind,
        c_norm="; and of c_t before the output tanh, with ``weight_ln_c{sfx}`` and "
        "``bias_ln_c{sfx}``".format(sfx=sfx) if lstm else "")
        for o in cell.variants]
    attrs = ""
    if cell.peephole_gates:
        attrs = (f"\n    weight_ch{sfx}: (``peephole=True``) the peephole weights "
                 f"(w_ci|w_cf|w_co), shape\n        (3, hidden_size), drawn from U(-√k, √k) "
                 "like every other weight.")
    if layer:
        args.append(_DROPOUT_ARGS)
    return "\n" + "\n".join(args) + _VARIANT_NOTE, attrs


