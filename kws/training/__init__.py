"""Training: Lightning does the loop; these modules say what to train and what to keep.

* ``config``: YAML configs (``kws/configs/``), checked key by key, ``--set`` overrides;
* ``datamodule``: ``SpeechCommandsDataModule``, data order and augmentation that
  depend only on (seed, epoch, index), so a resumed run sees the same batches;
* ``module``: ``KWSLightningModule``, the spotter, loss, metrics, AdamW and schedule;
* ``checkpoint``: self-describing ``.pt`` files, ``save_spotter`` / ``load_spotter``
  (imports torch only, so every stage can read checkpoints cheaply);
* ``train``: one run, ``kws train``; ``pipeline``: the main job, ``kws pipeline``.

Nothing is imported here, so ``import kws.training.checkpoint`` stays light.
"""
