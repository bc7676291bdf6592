"""ST/ST++ inside the trainers people already use; each integration is an optional extra.

* ``stimulative.integrations.lightning``: ``StimulativeModule``, a LightningModule
  (``pip install "stimulative[lightning]"``).
* Accelerate needs no module: ``StimulativeStep(..., backward=accelerator.backward,
  no_sync=lambda: accelerator.no_sync(model))``; see ``examples/accelerate_st.py``.

The submodules import their framework, so import them explicitly (this package imports nothing).
"""
