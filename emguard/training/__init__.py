"""Training: the parts of a fine-tuning run, one module each.

* :mod:`.sft`: rs-LoRA supervised fine-tuning on trl's ``SFTTrainer`` with the in-training regularisers
  (KL, LDIFS, persona steering) and inoculation: :func:`train`, :class:`TrainSettings`;
* :mod:`.grpo`: the RL setting on trl's ``GRPOTrainer`` with the same defenses as interventions;
* :mod:`.monitor`: the judge-free EM monitor, a callback that measures and can stop a run;
* :mod:`.callbacks`: the adapter saving and checkpoint callback both trainers share.

The SFT API is re-exported here (``from emguard.training import train``); GRPO and the monitor are imported from
their modules (``emguard.training.grpo``, ``emguard.training.monitor``).
"""

from emguard.training.sft import (LOG_COLUMNS, PadCollator, TrainSettings, build_dataset, build_trainer,
                                  encode_examples, head_loss, optimizer_settings, train, train_model, trainer_class)

__all__ = ["LOG_COLUMNS", "PadCollator", "TrainSettings", "build_dataset", "build_trainer", "encode_examples",
           "head_loss", "optimizer_settings", "train", "train_model", "trainer_class"]
