"""Integrations with other libraries (imported on demand; each needs its own extra).

- :mod:`ogkernels.integrations.hf_llava`: Hugging Face transformers LLaVA with OG-Fusion and
  padding-free packed batches (``pip install ogkernels[hf]``).
- :mod:`ogkernels.integrations.llava_collator`: samples (image, masks, text) → packed batches.
- :mod:`ogkernels.integrations.hf_attention`: ``varlen_attention`` as a transformers
  attention implementation (``"ogkernels_varlen"``).
- :mod:`ogkernels.integrations.og_llava`: OG-Fusion inside the reference OG-LLaVA code base.
"""
