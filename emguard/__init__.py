"""emguard: in-training defenses against emergent misalignment, as a Snakemake pipeline.

All logic lives in this package; the Snakemake rules under ``workflow/`` only call into it.
"""

__version__ = "0.1.0"
