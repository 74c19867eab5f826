"""The real LISA backend: published LISA checkpoints (LLaVA + SAM + ``[SEG]``) run on keyframes.

LISA (Lai et al., CVPR 2024) is the frozen 2D reasoning-segmentation model of MLLM-For3D §3.1. Its
public checkpoints (LISA-7B-v1, LISA-13B-llama2-v1 and the explanatory variants) are HF-format folders
holding the LLaMA language model, LLaVA's image projector (``model.mm_projector``), the ``[SEG]``
projection MLP (``model.text_hidden_fcs``) and a SAM ViT-H (``model.visual_model``); the CLIP vision
tower is loaded from its own folder (LISA's merge script leaves it out of the shards).

Modules, one per stage:

- :mod:`.checkpoint` reads a checkpoint folder: config, weight shards, tensor shapes, strict key checks;
- :mod:`.sam` maps SAM's weights onto ``transformers``' ``SamModel`` and runs LISA's prompting of it;
- :mod:`.prompt` builds LISA's conversation prompt and finds the ``[SEG]`` token;
- :mod:`.model` holds the module tree (LLaMA + CLIP + projector + SAM) and runs one batched forward;
- :mod:`.segmenter` is the :class:`~reasoning_seg.segmenter.Segmenter` the pipeline calls;
- :mod:`.random_checkpoint` writes random checkpoints in the published layout (tests and benchmarks).

``torch`` and ``transformers`` are imported only here, so the rest of the package runs without them.
"""
