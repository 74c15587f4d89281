"""The GPU acceptance check: one command that proves the kernels on a real GPU.

``python -m bench.gpu_check --out DIR [--smoke] [--budget-s S] [--sections a,b]`` runs from a
plain checkout (``PYTHONPATH=.``) with only the machine's own torch / triton / transformers
(no install, no flash-attn, no network) and writes ``DIR/gpu_check.json`` and
``DIR/gpu_check.md``, printing a one-screen summary. Sections, in run order (each guards
itself: a failure is recorded with its traceback tail and the rest still runs; the whole run
keeps to ``--budget-s``, default 480 s):

* ``environment`` — versions, the device, the attention backends, the sanitizer binary;
* ``syncs`` — host syncs per call (``torch.cuda.set_sync_debug_mode``; expect 1, 0 with a
  bound) and a CUDA-graph capture + replay of the bounded path;
* ``parity`` / ``determinism`` — the test suite's own op tests, run by pytest in a subprocess
  on the GPU (``OGKERNELS_TEST_DEVICE=cuda``, hypothesis profile ``gpu``; junit summary),
  and the same large call twice, bit for bit;
* ``sanitizer`` — ``compute-sanitizer`` memcheck and racecheck on one small ``og_tokens`` +
  backward (:mod:`bench.gpu_check.sanitize_target`), when the binary exists;
* ``timings`` — medians at the benchmark configurations against the reference on the same
  GPU, the PyTorch path, ``torch.compile`` of it; GB/s of the minimum bytes against a
  device-to-device copy; the cost model's prediction; a packed vs padded LLaVA training step;
* ``tuning`` — a short sweep of the Φ and gather launch settings (through
  ``ogkernels.ops.launch``), checked bit for bit against the default, with the best setting.

``--smoke`` runs the same code on the CPU under the Triton interpreter at tiny sizes (the test
suite runs it: ``tests/test_gpu_check.py``).
"""
