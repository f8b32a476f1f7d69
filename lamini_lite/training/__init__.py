"""Training: teaching a causal LM facts, and the layer surgery that makes it cheap.

* :mod:`lamini_lite.training.qa` -- :func:`finetune_qa`, the book's one QA
  fine-tuning loop (all weights, the top layers, or LoRA adapters);
* :mod:`lamini_lite.training.pretrain` -- pretraining the synthetic track's
  tiny backbone on its world's corpus;
* :mod:`lamini_lite.training.layers` -- running part of a decoder stack
  (frozen-prefix caches, hidden states at a layer);
* :mod:`lamini_lite.training.mitigations` -- filtering or relabelling the facts
  a model does not know, and early stopping (Gekhman et al. 2024).
"""

from .layers import (
                     FrozenBottomDecoder,
                     FrozenPrefix,
                     decoder_layers,
                     first_trained_layer,
                     layer_inputs,
                     layer_output,
                     run_from,
)
from .mitigations import (
                     IDK,
                     KNOWN,
                     EarlyStopping,
                     category_list,
                     filter_unknowns,
                     relabel_unknowns,
)
from .pretrain import PretrainConfig, load_backbone, recall_by_exposure
from .qa import (
                     FinetuneHistory,
                     finetune_qa,
                     frozen_prefix_for,
                     has_lora,
                     merge_lora,
                     qa_loss,
                     select_trainable,
                     unload_lora,
)

__all__ = ["FrozenBottomDecoder", "FrozenPrefix", "decoder_layers",
           "first_trained_layer", "layer_inputs", "layer_output", "run_from",
           "PretrainConfig", "load_backbone", "recall_by_exposure", "FinetuneConfig",
           "FinetuneHistory", "finetune_qa", "frozen_prefix_for", "has_lora",
           "merge_lora", "qa_loss", "select_trainable", "unload_lora", "IDK", "KNOWN",
           "EarlyStopping", "category_list", "filter_unknowns", "relabel_unknowns"]
