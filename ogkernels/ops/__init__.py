"""The ops: each a ``torch.library`` custom op in the namespace ``ogkernels`` (a fake for
``torch.compile``, autograd where it is differentiable), its Triton launcher and its PyTorch
path. Importing this package registers them all.

    torch.ops.ogkernels.phi                    Phi_alpha bitmaps of a batch's masks (phi.py)
    torch.ops.ogkernels.token_plan             cleaning, gate, caps, lengths, offsets (token_plan.py)
    torch.ops.ogkernels.place_tokens           which table/row each output row copies (place_tokens.py)
    torch.ops.ogkernels.gather_rows            row placement from up to four tables (gather_rows.py)
    torch.ops.ogkernels.gather_rows_backward   its deterministic segment-sum backward
"""

from . import gather_rows, phi, place_tokens, token_plan  # noqa: F401  (registers the ops)
