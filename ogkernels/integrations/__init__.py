"""Integrations with other libraries (imported on demand; each needs its own extra).

- :mod:`ogkernels.integrations.hf_llava`: ``OGLlavaForConditionalGeneration`` (Hugging Face
  LLaVA with OG-Fusion: its own config, Auto-class registration, save/reload, packed batches,
  generation) and ``apply_ogfusion_to_llava`` (``pip install ogkernels[hf]``).
- :mod:`ogkernels.integrations.hf_processor`: ``OGLlavaProcessor`` (image processor +
  tokenizer + the OG options: image tokens expanded to each image's OG token count).
- :mod:`ogkernels.integrations.llava_collator`: samples (image, masks, text) → packed batches.
- :mod:`ogkernels.integrations.hf_trainer`: ``OGLlavaTrainer`` (``Trainer`` with token-budget
  batches from ``TokenBudgetSampler``).
- :mod:`ogkernels.integrations.hf_attention`: ``varlen_attention`` as a transformers
  attention implementation (``"ogkernels_varlen"``).
- :mod:`ogkernels.integrations.og_llava`: OG-Fusion inside the reference OG-LLaVA code base.
"""
