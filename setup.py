"""Packaging for ogkernels (see README.md)."""

from setuptools import find_packages, setup

setup(
    name="ogkernels",
    version="0.1.0",
    description=(
        "Fused Triton kernels and a drop-in OG-Fusion connector for object-guided visual "
        "tokens (OG-LLaVA): mask downsampling, row selection and varlen packing."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # Verified stacks (the whole test suite on CPU, kernels compiled ahead of time for sm_80 /
    # sm_90): Python 3.11 + torch 2.14.1 / triton 3.8.0 / transformers 5.23.0 / numpy 2.4, and
    # Python 3.12 + torch 2.11.0 / triton 3.6.0 / transformers 5.17.0 / numpy 2.5 (the stack of
    # the lent H100/H200 machines). torch pins its own triton (2.11 -> 3.6, 2.14 -> 3.8).
    python_requires=">=3.11",
    packages=find_packages(include=["ogkernels", "ogkernels.*"]),
    install_requires=[
        "torch>=2.11,<2.15",
        "numpy>=1.24",
    ],
    extras_require={
        # Triton ships with the CUDA builds of torch; name it for CPU-only torch installs.
        "triton": ["triton>=3.6,<3.9"],
        "hf": ["transformers>=5.17,<6", "accelerate>=1.0", "peft>=0.13"],  # verified: 5.23.0, 1.16.0, 0.21.2
        "masks": ["pycocotools>=2.0", "safetensors>=0.4", "tqdm>=4.60", "pillow>=9", "filelock>=3.12"],
        # SAM 2 itself: `SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0`
        "sam2": ["sam2>=1.1", "pycocotools>=2.0", "safetensors>=0.4", "tqdm>=4.60", "pillow>=9", "filelock>=3.12"],
        "gpu": ["flash-attn>=2.7"],
        "bench": ["pytest-benchmark>=5", "matplotlib>=3.7"],
        # the main job (ogkernels-train): the model, LoRA, its plot and progress bar
        "train": ["transformers>=5.0", "accelerate>=1.0", "peft>=0.13", "matplotlib>=3.7", "tqdm>=4.60"],
        "test": [
            "pytest>=8",
            "pytest-benchmark>=5",
            "hypothesis>=6.100",
            "pycocotools>=2.0",
            "safetensors>=0.4",
            "tqdm>=4.60",
        ],
    },
    entry_points={
        "console_scripts": [
            "ogkernels-budget=ogkernels.tools.budget_cli:main",
            "ogkernels-masks=ogkernels.masks.__main__:main",
            "ogkernels-sam2-masks=ogkernels.jobs.sam2_masks:main",
            "ogkernels-train=ogkernels.jobs.train_llava:cli",
        ],
    },
)
